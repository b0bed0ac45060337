//! The KvCacheManager: owns the block pools of the target and of the drafters that keep a cache
//! of their own (the draft model, GLIDE), each sequence drafting in its method's. It reserves
//! every step's slots before any model work (preempting the newest sequences when blocks run
//! out), lends the pools to the drafter and verifier for the step, rolls rejected slots back
//! afterwards, and frees the blocks of sequences that leave.

use std::time::Instant;

use actix::{Actor, Addr, Context, Handler, MessageResult};

use super::drafter::Drafter;
use super::messages::{Commit, Free, GetKvUsage, KvReport, Propose, Reserve, Rollback};
use super::request::{Method, RequestError};
use super::scheduler::Scheduler;
use super::step::{Pools, PoolsUsage, Slot, StepBatch};
use super::EngineModels;
use crate::error::Error;
use crate::metrics::{self as m, Phase};

pub(crate) struct KvCacheManager {
    pub models: EngineModels,
    /// Whether new sequences take cached prefixes in the target's pool, and finished blocks
    /// are cached ([`crate::kv::KvPool::attach_prefix`]).
    pub prefix_cache: bool,
    /// Home of the pools between steps (`None` while lent).
    pub pools: Option<Pools>,
    /// Usage when the pools were last home.
    pub usage: PoolsUsage,
    /// Steps at whose start the pools' used blocks differed from what the sequences hold.
    pub accounting_errors: u64,
    /// Sequences preempted so far.
    pub preemptions: u64,
    /// Prompt positions taken from the target's prefix cache so far.
    pub prefix_hits: u64,
    pub scheduler: Addr<Scheduler>,
    pub drafter: Addr<Drafter>,
}

impl Actor for KvCacheManager {
    type Context = Context<Self>;
}

impl KvCacheManager {
    fn release(&self, pools: &mut Pools, slot: &mut Slot) {
        let (target, own) = pools.split(slot.method);
        let proposer = self.models.proposer(slot.method).zip(own);
        slot.seq.release(target, proposer);
    }

    /// Blocks the slot needs for its step in the target's pool and in its drafter's own pool.
    fn needs(&self, pools: &mut Pools, slot: &Slot) -> (usize, usize) {
        if let Some(n) = slot.chunk {
            return (slot.seq.target_blocks_for_chunk(n), 0);
        }
        let t = slot.seq.target_blocks_needed(slot.budget);
        let proposer = self.models.proposer(slot.method);
        let (committed, k) = drafter_feed(slot);
        let d = match (proposer, pools.proposer_pool(slot.method)) {
            (Some(p), Some(kv)) => p.blocks_needed(kv, slot.seq.proposer_state(), committed, k),
            _ => 0,
        };
        (t, d)
    }

    fn publish(&mut self, pools: &Pools) {
        self.usage = pools.usage();
        let u = self.usage;
        for (model, u) in [("target", u.target), ("draft", u.draft), ("glide", u.glide)] {
            metrics::gauge!(m::KV_BLOCKS_USED, "model" => model).set(u.blocks_used as f64);
            metrics::gauge!(m::KV_BLOCKS_PARKED, "model" => model).set(u.blocks_parked as f64);
            metrics::gauge!(m::KV_BLOCKS_TOTAL, "model" => model).set(u.blocks_total as f64);
            metrics::gauge!(m::KV_UTILIZATION, "model" => model).set(u.utilization());
        }
    }

    /// Checks that the pools hold exactly the blocks of the step's sequences (everything that
    /// is not in the step holds none), each drafter's pool those of its method's sequences.
    fn check_accounting(&mut self, pools: &Pools, slots: &[Slot]) {
        let own = |m: Method| -> usize {
            slots
                .iter()
                .filter(|s| Pools::pool_of(s.method) == Some(m))
                .filter_map(|s| s.seq.proposer_state().table())
                .map(|t| t.blocks().len())
                .sum()
        };
        // Target blocks of a cached prefix are shared: each counts once.
        let mut target: Vec<u32> = (slots.iter())
            .flat_map(|s| s.seq.table().blocks().iter().copied())
            .collect();
        target.sort_unstable();
        target.dedup();
        let held = [target.len(), own(Method::Draft), own(Method::Glide)];
        let u = pools.usage();
        let counted = [u.target, u.draft, u.glide].map(|u| u.blocks_used);
        if held != counted {
            self.accounting_errors += 1;
            eprintln!(
                "specd: KV accounting error: sequences hold {held:?} blocks, pools count \
                 {counted:?} (target, draft, glide)"
            );
        }
    }

    /// Takes sequences out of the step, or their drafting, until what the rest need fits the
    /// pools. When only a drafter's pool is short, the newest sequence drafting into it skips
    /// drafting this step rather than anyone being preempted; otherwise the newest sequence is
    /// preempted (requeued with its blocks freed), and one alone that still does not fit gives
    /// up drafting, then fails (or ends with `length` if it has generated).
    fn fit(&mut self, pools: &mut Pools, batch: &mut StepBatch) {
        loop {
            // Each slot's (target, own pool) blocks, computed once per round.
            let needs: Vec<(usize, usize)> =
                batch.slots.iter().map(|s| self.needs(pools, s)).collect();
            let nt: usize = needs.iter().map(|n| n.0).sum();
            let short: Vec<Method> = Pools::PROPOSER_POOLS
                .into_iter()
                .filter(|&m| {
                    let need: usize = batch
                        .slots
                        .iter()
                        .zip(&needs)
                        .filter(|(s, _)| Pools::pool_of(s.method) == Some(m))
                        .map(|(_, n)| n.1)
                        .sum();
                    need > pools.proposer_pool(m).map_or(0, |kv| kv.blocks_free())
                })
                .collect();
            let target_fits = nt <= pools.target.blocks_free();
            if target_fits && short.is_empty() {
                return;
            }
            if target_fits {
                if let Some((s, _)) = batch.slots.iter_mut().zip(&needs).rev().find(|(s, n)| {
                    (s.budget > 0 || s.catch_up > 0)
                        && Pools::pool_of(s.method).is_some_and(|m| short.contains(&m))
                        && n.1 > 0
                }) {
                    s.budget = 0;
                    s.catch_up = 0;
                    continue;
                }
            }
            if batch.slots.len() == 1 {
                // Alone and still too big: first give up drafting, then give up.
                if batch.slots[0].budget > 0 || batch.slots[0].catch_up > 0 {
                    batch.slots[0].budget = 0;
                    batch.slots[0].catch_up = 0;
                    continue;
                }
                let mut slot = batch.slots.pop().expect("one slot");
                self.release(pools, &mut slot);
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
                return;
            }
            let mut slot = batch.slots.pop().expect("more than one slot");
            // Preempted: the sequence loses positions it computed (not only cached ones).
            if slot.seq.table().len() > slot.cached_prefix {
                slot.preemptions += 1;
                self.preemptions += 1;
                metrics::counter!(m::PREEMPTIONS).increment(1);
            }
            self.release(pools, &mut slot);
            batch.requeue.push(slot);
        }
    }
}

/// What the slot's drafter feeds this step, as (committed tokens, drafts) for the proposer's
/// block count: drafting `budget` tokens after every committed token, or (a catch-up chunk,
/// no drafting) the cached tokens plus the chunk, counted as one "draft" past them.
fn drafter_feed(slot: &Slot) -> (usize, usize) {
    if slot.catch_up > 0 {
        let cached = slot.seq.proposer_state().cached_len().unwrap_or(0);
        (cached + slot.catch_up, 1)
    } else {
        (slot.seq.tokens().len(), slot.budget)
    }
}

/// A sequence about to start its prefill (nothing in the target's cache yet, a new one or one
/// preempted) takes the cached blocks of its tokens' longest cached prefix. A chunk planned
/// for it that now reaches the end of its prompt becomes the step that completes its prefill
/// and gives its first token (no drafting in that step, as for any first token).
/// Returns the positions taken.
fn take_cached_prefix(pools: &mut Pools, slot: &mut Slot) -> usize {
    if !slot.seq.table().blocks().is_empty() || slot.seq.pending_prefill() == 0 {
        return 0;
    }
    let hit = slot.seq.take_cached_prefix(&mut pools.target);
    slot.cached_prefix = hit;
    if hit > 0 {
        metrics::counter!(m::PREFIX_CACHE_HIT_TOKENS).increment(hit as u64);
        if slot.chunk.is_some_and(|n| n >= slot.seq.pending_prefill()) {
            (slot.chunk, slot.budget, slot.catch_up) = (None, 0, 0);
        }
    }
    hit
}

impl Handler<Reserve> for KvCacheManager {
    type Result = ();

    fn handle(&mut self, Reserve(mut batch): Reserve, _: &mut Context<Self>) {
        let t = Instant::now();
        let mut pools = self.pools.take().expect("pools are home between steps");
        self.check_accounting(&pools, &batch.slots);
        if self.prefix_cache {
            // What every sequence has committed so far (now that the last step's tokens are
            // part of it), whole blocks of prompt or answer; then the new ones take theirs.
            for slot in &batch.slots {
                pools
                    .target
                    .cache_prefix(slot.seq.table(), slot.seq.tokens());
            }
            for slot in batch.slots.iter_mut() {
                self.prefix_hits += take_cached_prefix(&mut pools, slot) as u64;
            }
        }
        // Oldest first: preemption takes from the end.
        batch.slots.sort_by_key(|s| s.id);
        self.fit(&mut pools, &mut batch);
        for slot in batch.slots.iter_mut() {
            let proposer = self.models.proposer(slot.method);
            let (target, own) = pools.split(slot.method);
            let r = if let Some(n) = slot.chunk {
                slot.seq.reserve_target_chunk(target, n)
            } else {
                let (committed, k) = drafter_feed(slot);
                slot.seq
                    .reserve_target(target, slot.budget)
                    .and_then(|()| match (proposer, own) {
                        (Some(p), Some(kv)) => slot.seq.reserve_proposer(p, kv, committed, k),
                        _ => Ok(()),
                    })
            };
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
                // A slot that only prefilled keeps what it fed.
                let Some(d) = d else { continue };
                let (target, own) = pools.split(slot.method);
                let proposer = self.models.proposer(slot.method).zip(own);
                slot.seq.rollback(target, proposer, d);
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
            if self.prefix_cache {
                pools
                    .target
                    .cache_prefix(slot.seq.table(), slot.seq.tokens());
            }
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
            usage: self.usage,
            accounting_errors: self.accounting_errors,
            preemptions: self.preemptions,
            prefix_hits: self.prefix_hits,
        })
    }
}
