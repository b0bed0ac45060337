//! The working set of one token step, which travels from actor to actor with the messages.

use std::time::{Duration, Instant};

use tokio::sync::mpsc::UnboundedSender;

use super::request::{Event, Method, RequestError, RequestId};
use crate::kv::{KvPool, KvUsage};
use crate::metrics::Phase;
use crate::speculative::{Decision, Draft, PhaseTimes, Sequence, Verified};

/// One request inside the engine: its sequence, how it drafts, and where its events go.
#[derive(Debug)]
pub(crate) struct Slot {
    pub id: RequestId,
    pub seq: Sequence,
    pub method: Method,
    pub reply: UnboundedSender<Event>,
    pub submitted: Instant,
    pub admitted: Option<Instant>,
    pub first_token: Option<Instant>,
    pub last_chunk: Option<Instant>,
    /// Tokens to draft in the current step.
    pub budget: usize,
    /// `Some(n)`: this step only feeds the target `n` more prompt tokens (a chunk of a long
    /// prompt); the sequence neither drafts nor verifies. `None`: it prefills whatever is
    /// pending, then verifies.
    pub chunk: Option<usize>,
    /// Committed tokens the drafter reads this step without drafting (a chunk of its catch-up,
    /// riding along with the others' drafting).
    pub catch_up: usize,
    pub preemptions: u32,
    /// Positions the sequence took from the target's prefix cache when it last started a
    /// prefill (it computed nothing of those: a preemption right after frees nothing it made).
    pub cached_prefix: usize,
}

/// The KV pools, lent by the `KvCacheManager` to the drafter and verifier for one step: the
/// target's, and one for each drafter that keeps a cache of its own, so that sequences of
/// different methods in one batch reserve, roll back and free each in their drafter's pool.
#[derive(Debug)]
pub(crate) struct Pools {
    pub target: KvPool,
    /// The draft model's cache.
    pub draft: KvPool,
    /// The GLIDE drafter's own cache (its cross-attention reads `target`).
    pub glide: KvPool,
}

/// Usage of every pool.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct PoolsUsage {
    pub target: KvUsage,
    pub draft: KvUsage,
    pub glide: KvUsage,
}

impl Pools {
    /// The pools of the drafters with a cache of their own, with the method drafting in each.
    pub const PROPOSER_POOLS: [Method; 2] = [Method::Draft, Method::Glide];

    /// The method whose drafter's own pool `method`'s sequences draft in (`glide+ngram` drafts
    /// in GLIDE's); `None` for methods whose proposer keeps no cache (`none`, `ngram`).
    pub fn pool_of(method: Method) -> Option<Method> {
        match method {
            Method::Draft => Some(Method::Draft),
            Method::Glide | Method::GlideNgram => Some(Method::Glide),
            Method::None | Method::Ngram => None,
        }
    }

    /// The pool of `method`'s drafter's own cache; `None` for methods whose proposer keeps no
    /// cache (`none`, `ngram`).
    pub fn proposer_pool(&mut self, method: Method) -> Option<&mut KvPool> {
        self.split(method).1
    }

    /// The target's pool and [`Pools::proposer_pool`], borrowed together.
    pub fn split(&mut self, method: Method) -> (&mut KvPool, Option<&mut KvPool>) {
        let own = match Self::pool_of(method) {
            Some(Method::Draft) => Some(&mut self.draft),
            Some(_) => Some(&mut self.glide),
            None => None,
        };
        (&mut self.target, own)
    }

    pub fn usage(&self) -> PoolsUsage {
        PoolsUsage {
            target: self.target.usage(),
            draft: self.draft.usage(),
            glide: self.glide.usage(),
        }
    }
}

/// Time spent inside each actor's handler during one step.
#[derive(Debug, Clone, Copy)]
pub(crate) struct StepClock {
    pub started: Instant,
    pub busy: [Duration; 5],
}

impl StepClock {
    pub fn new() -> Self {
        Self {
            started: Instant::now(),
            busy: [Duration::ZERO; 5],
        }
    }

    /// Adds time spent in `phase` (one of the five handler phases).
    pub fn add(&mut self, phase: Phase, d: Duration) {
        let i = match phase {
            Phase::Schedule => 0,
            Phase::Kv => 1,
            Phase::Draft => 2,
            Phase::Verify => 3,
            Phase::Accept => 4,
            Phase::Messaging | Phase::Total => return,
        };
        self.busy[i] += d;
    }
}

/// Tokens fed to a model outside drafting and verification, and the time it took.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Work {
    pub tokens: usize,
    pub time: Duration,
}

impl Work {
    pub fn add(&mut self, tokens: usize, time: Duration) {
        self.tokens += tokens;
        self.time += time;
    }
}

/// A token step in flight.
#[derive(Debug)]
pub(crate) struct StepBatch {
    pub slots: Vec<Slot>,
    pub drafts: Vec<Draft>,
    /// Per slot; `None` for slots that only prefilled a chunk.
    pub verified: Vec<Option<Verified>>,
    /// Per slot; `None` for slots that only prefilled a chunk.
    pub decisions: Vec<Option<Decision>>,
    /// Prompt tokens the target prefilled in forwards of their own in the step (the rest of a
    /// prompt before its first verification), and the time it took.
    pub prefilled: Work,
    /// Prompt tokens that rode along in the verification forward (chunks).
    pub rode: usize,
    /// Tokens drafters caught up on without drafting, and the time it took.
    pub caught_up: Work,
    /// Slots taken out of the step for lack of KV blocks (preempted or deferred), to requeue.
    pub requeue: Vec<Slot>,
    /// Slots that cannot run at all, with why.
    pub failed: Vec<(Slot, RequestError)>,
    /// Slots that outgrew the whole KV pool after generating: they end with `length`.
    pub outgrown: Vec<Slot>,
    /// A failure of the step's model work; every slot of the step fails with it.
    pub error: Option<RequestError>,
    pub pools: Option<Pools>,
    pub clock: StepClock,
    pub times: PhaseTimes,
}

impl StepBatch {
    pub fn new(slots: Vec<Slot>, clock: StepClock) -> Self {
        Self {
            slots,
            drafts: Vec::new(),
            verified: Vec::new(),
            decisions: Vec::new(),
            prefilled: Work::default(),
            rode: 0,
            caught_up: Work::default(),
            requeue: Vec::new(),
            failed: Vec::new(),
            outgrown: Vec::new(),
            error: None,
            pools: None,
            clock,
            times: PhaseTimes::default(),
        }
    }

    /// Mutable references to the sequences of the slots at `idx`.
    pub fn seqs_at(&mut self, idx: &[usize]) -> Vec<&mut Sequence> {
        let mut out = Vec::with_capacity(idx.len());
        let mut it = self.slots.iter_mut().enumerate();
        for &i in idx {
            let (_, s) = it.find(|(j, _)| *j == i).expect("indices ascend");
            out.push(&mut s.seq);
        }
        out
    }
}
