//! The Verifier: prefills newly admitted (or recomputed) sequences, then runs ONE target
//! forward over `[last, drafts..]` of every sequence of the step.

use std::time::Instant;

use actix::{Actor, Addr, Context, Handler};

use super::acceptor::Acceptor;
use super::messages::{Decide, Verify};
use super::EngineModels;
use crate::error::Result;
use crate::metrics::Phase;
use crate::spec::{verify, Acceptance, Verified};

/// Owns the target model (through [`EngineModels`]); its KV arrives lent with the step.
pub(crate) struct Verifier {
    pub models: EngineModels,
    pub acceptor: Addr<Acceptor>,
}

impl Actor for Verifier {
    type Context = Context<Self>;
}

impl Handler<Verify> for Verifier {
    type Result = ();

    fn handle(&mut self, Verify(mut batch): Verify, _: &mut Context<Self>) {
        let t = Instant::now();
        if batch.error.is_none() && !batch.slots.is_empty() {
            let mut pools = batch.pools.take().expect("pools lent with the step");
            let target = &self.models.target;
            let result: Result<Vec<Verified>> = (|| {
                for slot in batch.slots.iter_mut() {
                    if slot.seq.pending_prefill() > 0 {
                        slot.seq.prefill_target(target, &mut pools.target)?;
                    }
                }
                let mut seqs: Vec<_> = batch.slots.iter_mut().map(|s| &mut s.seq).collect();
                verify(
                    target,
                    &mut pools.target,
                    &mut seqs,
                    &batch.drafts,
                    Acceptance::InForward,
                )
            })();
            batch.pools = Some(pools);
            match result {
                Ok(v) => batch.verified = v,
                Err(e) => batch.error = Some((&e).into()),
            }
        }
        batch.times.verify = t.elapsed();
        batch.clock.add(Phase::Verify, t.elapsed());
        self.acceptor.do_send(Decide(batch));
    }
}
