//! The working set of one token step, which travels from actor to actor with the messages.

use std::time::{Duration, Instant};

use tokio::sync::mpsc::UnboundedSender;

use super::request::{Event, Method, RequestError, RequestId};
use crate::kv::KvPool;
use crate::metrics::Phase;
use crate::spec::{Decision, Draft, PhaseTimes, Sequence, Verified};

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
    pub preemptions: u32,
}

/// The KV pools, lent by the `KvCacheManager` to the drafter and verifier for one step.
#[derive(Debug)]
pub(crate) struct Pools {
    pub target: KvPool,
    pub draft: KvPool,
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

/// A token step in flight.
#[derive(Debug)]
pub(crate) struct StepBatch {
    pub slots: Vec<Slot>,
    pub drafts: Vec<Draft>,
    pub verified: Vec<Verified>,
    pub decisions: Vec<Decision>,
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
