//! The Drafter: runs every sequence's proposer (draft model, n-gram or GLIDE) for the step,
//! each method's sequences together, with their drafter's own pool and a read-only view of the
//! target's.

use std::time::Instant;

use actix::{Actor, Addr, Context, Handler};

use super::messages::{Propose, Verify};
use super::request::Method;
use super::step::StepBatch;
use super::verifier::Verifier;
use super::EngineModels;
use crate::kv::KvPool;
use crate::metrics::Phase;
use crate::speculative::{propose_drafts, Draft, TargetView};

/// Owns the drafters (through [`EngineModels`]); the drafter's KV arrives lent with the step.
pub(crate) struct Drafter {
    pub models: EngineModels,
    pub verifier: Addr<Verifier>,
}

impl Actor for Drafter {
    type Context = Context<Self>;
}

impl Drafter {
    /// Feeds each slot with a catch-up chunk (and no draft) its drafter's missed tokens.
    fn catch_up(&self, batch: &mut StepBatch) {
        let mut pools = batch.pools.take().expect("pools lent with the step");
        for slot in batch.slots.iter_mut().filter(|s| s.catch_up > 0) {
            let (Some(p), Some(kv)) = (
                self.models.proposer(slot.method),
                pools.proposer_pool(slot.method),
            ) else {
                continue;
            };
            let t = Instant::now();
            match slot.seq.catch_up_proposer(p, kv, slot.catch_up) {
                Ok(n) => batch.caught_up.add(n, t.elapsed()),
                Err(e) => {
                    batch.error = Some((&e).into());
                    break;
                }
            }
        }
        batch.pools = Some(pools);
    }
}

impl Handler<Propose> for Drafter {
    type Result = ();

    fn handle(&mut self, Propose(mut batch): Propose, _: &mut Context<Self>) {
        let t = Instant::now();
        batch.drafts = vec![Draft::default(); batch.slots.len()];
        if batch.error.is_none() && !batch.slots.is_empty() {
            self.catch_up(&mut batch);
        }
        if batch.error.is_none() && !batch.slots.is_empty() {
            for method in Method::ALL {
                let Some(proposer) = self.models.proposer(method) else {
                    continue;
                };
                let idx: Vec<usize> = (0..batch.slots.len())
                    .filter(|&i| batch.slots[i].method == method && batch.slots[i].budget > 0)
                    .collect();
                if idx.is_empty() {
                    continue;
                }
                let budgets: Vec<usize> = idx.iter().map(|&i| batch.slots[i].budget).collect();
                let mut pools = batch.pools.take().expect("pools lent with the step");
                let result = {
                    let mut seqs = batch.seqs_at(&idx);
                    let (target_kv, own) = pools.split(method);
                    // Proposers without a cache of their own (n-gram) are lent an empty pool.
                    let mut cacheless = KvPool::new(0, 0, 0);
                    let target = TargetView {
                        model: &self.models.target,
                        kv: target_kv,
                    };
                    let kv = own.unwrap_or(&mut cacheless);
                    propose_drafts(proposer, target, kv, &mut seqs, &budgets)
                };
                batch.pools = Some(pools);
                match result {
                    Ok(drafts) => {
                        for (i, d) in idx.into_iter().zip(drafts) {
                            batch.drafts[i] = d;
                        }
                    }
                    Err(e) => {
                        batch.error = Some((&e).into());
                        break;
                    }
                }
            }
        }
        batch.times.draft = t.elapsed();
        batch.clock.add(Phase::Draft, t.elapsed());
        self.verifier.do_send(Verify(batch));
    }
}
