//! The Acceptor: keeps each sequence's accepted draft prefix plus one token from the target
//! (greedy, or speculative rejection sampling with the request's own RNG).

use std::time::Instant;

use actix::{Actor, Addr, Context, Handler};

use super::kv_manager::KvCacheManager;
use super::messages::{Decide, Rollback};
use crate::metrics::Phase;
use crate::speculative::accept_stochastic;

/// Stateless: the sampling RNGs and draft policies live in the sequences it is handed.
pub(crate) struct Acceptor {
    pub kv: Addr<KvCacheManager>,
}

impl Actor for Acceptor {
    type Context = Context<Self>;
}

impl Handler<Decide> for Acceptor {
    type Result = ();

    fn handle(&mut self, Decide(mut batch): Decide, _: &mut Context<Self>) {
        let t = Instant::now();
        if batch.error.is_none() {
            let verified = std::mem::take(&mut batch.verified);
            batch.decisions = batch
                .slots
                .iter_mut()
                .zip(&batch.drafts)
                .zip(&verified)
                .map(|((slot, draft), v)| {
                    v.as_ref()
                        .map(|v| slot.seq.decide(draft, v, accept_stochastic))
                })
                .collect();
        }
        batch.clock.add(Phase::Accept, t.elapsed());
        self.kv.do_send(Rollback(batch));
    }
}
