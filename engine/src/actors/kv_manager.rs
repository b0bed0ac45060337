//! The KvCacheManager: owns the block pools of the target and the draft model. It reserves
//! every step's slots before any model work (preempting the newest sequences when blocks run
//! out), lends the pools to the drafter and verifier for the step, rolls rejected slots back
//! afterwards, and frees the blocks of sequences that leave.

use std::time::Instant;

use actix::{Actor, Addr, Context, Handler, MessageResult};

use super::drafter::Drafter;
use super::messages::{Commit, Free, GetKvUsage, KvReport, Propose, Reserve, Rollback};
use super::request::RequestError;
use super::scheduler::Scheduler;
use super::step::{Pools, Slot};
use super::EngineModels;
use crate::error::Error;
use crate::kv::KvUsage;
use crate::metrics::{self as m, Phase};

pub(crate) struct KvCacheManager {
    pub models: EngineModels,
    /// Home of the pools between steps (`None` while lent).
    pub pools: Option<Pools>,
    /// Usage when the pools were last home.
    pub usage: (KvUsage, KvUsage),
    /// Steps at whose start the pools' used blocks differed from what the sequences hold.
    pub accounting_errors: u64,
    /// Sequences preempted so far.
    pub preemptions: u64,
    pub scheduler: Addr<Scheduler>,
    pub drafter: Addr<Drafter>,
}

impl Actor for KvCacheManager {
    type Context = Context<Self>;
}

impl KvCacheManager {
    fn release(&self, pools: &mut Pools, slot: &mut Slot) {
        let proposer = self
            .models
            .proposer(slot.method)
            .map(|p| (p, &mut pools.draft));
        slot.seq.release(&mut pools.target, proposer);
    }

    /// Blocks the slot needs for its step in the target's and the drafter's pool.
    fn needs(&self, pools: &Pools, slot: &Slot) -> (usize, usize) {
        let t = slot.seq.target_blocks_needed(slot.budget);
        let d = self.models.proposer(slot.method).map_or(0, |p| {
            p.blocks_needed(
                &pools.draft,
                slot.seq.proposer_state(),
                slot.seq.tokens().len(),
                slot.budget,
            )
        });
        (t, d)
    }

    fn publish(&mut self, pools: &Pools) {
        self.usage = (pools.target.usage(), pools.draft.usage());
        for (model, u) in [("target", self.usage.0), ("draft", self.usage.1)] {
            metrics::gauge!(m::KV_BLOCKS_USED, "model" => model).set(u.blocks_used as f64);
            metrics::gauge!(m::KV_BLOCKS_TOTAL, "model" => model).set(u.blocks_total as f64);
            metrics::gauge!(m::KV_UTILIZATION, "model" => model).set(u.utilization());
        }
    }

    /// Checks that the pools hold exactly the blocks of the step's sequences (everything that
    /// is not in the step holds none).
    fn check_accounting(&mut self, pools: &Pools, slots: &[Slot]) {
        let target: usize = slots.iter().map(|s| s.seq.table().blocks().len()).sum();
        let draft: usize = slots
            .iter()
            .filter_map(|s| s.seq.proposer_state().table())
            .map(|t| t.blocks().len())
            .sum();
        let (ut, ud) = (
            pools.target.usage().blocks_used,
            pools.draft.usage().blocks_used,
        );
        if target != ut || draft != ud {
            self.accounting_errors += 1;
            eprintln!(
                "specd: KV accounting error: sequences hold {target}/{draft} blocks, pools count {ut}/{ud}"
            );
        }
    }
}

impl Handler<Reserve> for KvCacheManager {
    type Result = ();

    fn handle(&mut self, Reserve(mut batch): Reserve, _: &mut Context<Self>) {
        let t = Instant::now();
        let mut pools = self.pools.take().expect("pools are home between steps");
        self.check_accounting(&pools, &batch.slots);
        // Oldest first: preemption takes from the end.
        batch.slots.sort_by_key(|s| s.id);
        loop {
            let (mut nt, mut nd) = (0, 0);
            for s in &batch.slots {
                let (a, b) = self.needs(&pools, s);
                nt += a;
                nd += b;
            }
            let target_fits = nt <= pools.target.blocks_free();
            if target_fits && nd <= pools.draft.blocks_free() {
                break;
            }
            if target_fits {
                // Only the drafter's pool is short: the newest drafting sequence skips drafting
                // this step rather than anyone being preempted.
                if let Some(s) = batch.slots.iter_mut().rev().find(|s| {
                    s.budget > 0
                        && self.models.proposer(s.method).is_some_and(|p| {
                            p.blocks_needed(
                                &pools.draft,
                                s.seq.proposer_state(),
                                s.seq.tokens().len(),
                                s.budget,
                            ) > 0
                        })
                }) {
                    s.budget = 0;
                    continue;
                }
            }
            if batch.slots.len() == 1 {
                // Alone and still too big: first give up drafting, then give up.
                if batch.slots[0].budget > 0 {
                    batch.slots[0].budget = 0;
                    continue;
                }
                let mut slot = batch.slots.pop().expect("one slot");
                self.release(&mut pools, &mut slot);
                if slot.seq.generated().is_empty() {
                    let e = Error::KvExhausted {
                        needed: nt,
                        free: pools.target.blocks_free(),
                        total: pools.target.usage().blocks_total,
                    };
                    batch.failed.push((slot, (&e).into()));
                } else {
                    batch.outgrown.push(slot);
                }
                break;
            }
            let mut slot = batch.slots.pop().expect("more than one slot");
            if !slot.seq.table().blocks().is_empty() {
                slot.preemptions += 1;
                self.preemptions += 1;
                metrics::counter!(m::PREEMPTIONS).increment(1);
            }
            self.release(&mut pools, &mut slot);
            batch.requeue.push(slot);
        }
        for slot in batch.slots.iter_mut() {
            let k = slot.budget;
            let r = slot
                .seq
                .reserve_target(&mut pools.target, k)
                .and_then(|()| match self.models.proposer(slot.method) {
                    Some(p) => {
                        let n = slot.seq.tokens().len();
                        slot.seq.reserve_proposer(p, &mut pools.draft, n, k)
                    }
                    None => Ok(()),
                });
            if let Err(e) = r {
                // Cannot happen after the fit check; fail the step rather than the engine.
                batch.error = Some(RequestError::from(&e));
            }
        }
        self.publish(&pools);
        batch.pools = Some(pools);
        batch.clock.add(Phase::Kv, t.elapsed());
        self.drafter.do_send(Propose(batch));
    }
}

impl Handler<Rollback> for KvCacheManager {
    type Result = ();

    fn handle(&mut self, Rollback(mut batch): Rollback, _: &mut Context<Self>) {
        let t = Instant::now();
        let mut pools = batch.pools.take().expect("pools come back with the step");
        if batch.error.is_some() {
            // The caches may hold half a step: drop them with the sequences, which fail.
            for slot in batch.slots.iter_mut() {
                self.release(&mut pools, slot);
            }
        } else {
            for (slot, d) in batch.slots.iter_mut().zip(&batch.decisions) {
                let proposer = self
                    .models
                    .proposer(slot.method)
                    .map(|p| (p, &mut pools.draft));
                slot.seq.rollback(&mut pools.target, proposer, d);
            }
        }
        self.publish(&pools);
        self.pools = Some(pools);
        batch.clock.add(Phase::Kv, t.elapsed());
        self.scheduler.do_send(Commit(batch));
    }
}

impl Handler<Free> for KvCacheManager {
    type Result = ();

    fn handle(&mut self, Free(slots): Free, _: &mut Context<Self>) {
        let mut pools = self.pools.take().expect("pools are home between steps");
        for mut slot in slots {
            self.release(&mut pools, &mut slot);
        }
        self.publish(&pools);
        self.pools = Some(pools);
    }
}

impl Handler<GetKvUsage> for KvCacheManager {
    type Result = MessageResult<GetKvUsage>;

    fn handle(&mut self, _: GetKvUsage, _: &mut Context<Self>) -> Self::Result {
        MessageResult(KvReport {
            target: self.usage.0,
            draft: self.usage.1,
            accounting_errors: self.accounting_errors,
            preemptions: self.preemptions,
        })
    }
}
