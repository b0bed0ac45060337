//! The typed messages between the engine's actors, in step order, and the handle's requests.

use actix::Message;
use tokio::sync::mpsc::UnboundedReceiver;

use super::request::{EngineRequest, Event, RequestId};
use super::step::{PoolsUsage, Slot, StepBatch};
use super::EngineStats;
use crate::error::Result;

/// Handle → Scheduler: a new request. Answers its id and event stream, or why it was refused
/// (`overloaded`, an invalid field).
#[derive(Message)]
#[rtype(result = "Result<(RequestId, UnboundedReceiver<Event>)>")]
pub(crate) struct Submit(pub EngineRequest);

/// Scheduler → itself: start a step if idle (queued after the submissions already waiting).
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct StartStep;

/// Handle → Scheduler: stop a request (its stream was dropped, or the client asked).
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct Cancel(pub RequestId);

/// Scheduler → KvCacheManager: reserve slots for the step (preempting the newest sequences
/// when blocks run out).
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct Reserve(pub StepBatch);

/// KvCacheManager → Drafter: draft for every sequence of the step.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct Propose(pub StepBatch);

/// Drafter → Verifier: prefill new sequences, then one target forward over all drafts.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct Verify(pub StepBatch);

/// Verifier → Acceptor: keep the accepted prefix plus one target token per sequence.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct Decide(pub StepBatch);

/// Acceptor → KvCacheManager: roll the target's and the drafters' caches back to what
/// acceptance kept.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct Rollback(pub StepBatch);

/// KvCacheManager → Scheduler: the step is done; stream its tokens and plan the next.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct Commit(pub StepBatch);

/// Scheduler → KvCacheManager: these sequences left (finished, cancelled, failed); return
/// their blocks. Sent before the next step's `Reserve`, so it is handled first.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct Free(pub Vec<Slot>);

/// Handle → Scheduler: queue and step statistics.
#[derive(Message)]
#[rtype(result = "EngineStats")]
pub(crate) struct GetStats;

/// Handle → KvCacheManager: pool usage and counters.
#[derive(Message)]
#[rtype(result = "KvReport")]
pub(crate) struct GetKvUsage;

/// What [`GetKvUsage`] answers.
#[derive(Debug, Clone, Copy)]
pub(crate) struct KvReport {
    pub usage: PoolsUsage,
    pub accounting_errors: u64,
    pub preemptions: u64,
    pub prefix_hits: u64,
}

/// Engine → Scheduler: fail what is left and stop the engine's thread.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct Shutdown;
