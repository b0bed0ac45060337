//! The engine: actix actors on one dedicated thread (the model-bound executor), one token step
//! at a time for a continuously changing batch.
//!
//! A step travels as one message through the actors, each owning its part of the state:
//!
//! ```text
//! Scheduler ──Reserve──▶ KvCacheManager ──Propose──▶ Drafter ──Verify──▶ Verifier
//!     ▲                        │  ▲                                          │
//!     └────────Commit──────────┘  └──────Rollback────── Acceptor ◀──Decide───┘
//! ```
//!
//! The Scheduler admits waiting requests (FCFS, under a token budget) and streams results;
//! the KvCacheManager reserves blocks (preempting the newest sequences when they run out),
//! lends the pools for the model work and rolls rejected slots back; the Drafter drafts, the
//! Verifier prefills new sequences and verifies every draft in one target forward, and the
//! Acceptor keeps the accepted prefixes. The maths is in [`crate::speculative`]; actors only own state
//! and route messages. Callers talk to the engine through an [`EngineHandle`].

mod acceptor;
pub mod adapt;
pub mod calibrate;
pub mod config;
mod drafter;
mod kv_manager;
pub mod load;
mod messages;
pub mod prefill;
pub mod request;
mod scheduler;
mod step;
mod verifier;

use std::collections::{HashSet, VecDeque};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

use actix::{Actor, Addr, AsyncContext, Context};
use tokio::sync::mpsc::UnboundedReceiver;

pub use calibrate::{
    measure_draft_costs, measure_glide_costs, measure_row_costs, CatchUpPolicy, DraftCosts,
    RowCosts,
};
pub use config::EngineConfig;
pub use load::{LoadPolicies, LoadPolicy};
pub use request::{
    Chunk, Done, EngineRequest, Event, Method, RequestError, RequestId, Timings, UnknownMethod,
    Usage,
};

use crate::error::{Error, Result};
use crate::kv::KvUsage;
use crate::model::{Model, Tokenizer};
use crate::speculative::{DraftModelProposer, GlideProposer, NgramProposer, Proposer};
use acceptor::Acceptor;
use drafter::Drafter;
use kv_manager::KvCacheManager;
use messages::{Cancel, GetKvUsage, GetStats, Shutdown, Submit};
use scheduler::Scheduler;
use step::Pools;
use verifier::Verifier;

/// The models an engine serves: the target, its tokenizer, and the proposers requests may pick.
#[derive(Debug, Clone)]
pub struct EngineModels {
    pub target: Arc<Model>,
    pub tokenizer: Arc<Tokenizer>,
    pub draft: Option<Arc<DraftModelProposer>>,
    pub ngram: NgramProposer,
    /// A GLIDE drafter made for `target` (it reads the target's cache).
    pub glide: Option<Arc<GlideProposer>>,
}

impl EngineModels {
    /// The proposer of `method`, if the engine has one.
    pub fn proposer(&self, method: Method) -> Option<&dyn Proposer> {
        match method {
            Method::None => None,
            Method::Draft => self.draft.as_deref().map(|d| d as &dyn Proposer),
            Method::Ngram => Some(&self.ngram),
            Method::Glide => self.glide.as_deref().map(|g| g as &dyn Proposer),
            Method::GlideNgram => self
                .glide
                .as_deref()
                .map(|g| g.with_ngram() as &dyn Proposer),
        }
    }

    /// The methods requests may choose: `none`, `ngram`, and those whose drafter is loaded.
    pub fn methods(&self) -> Vec<Method> {
        Method::ALL
            .into_iter()
            .filter(|&m| m == Method::None || self.proposer(m).is_some())
            .collect()
    }
}

/// Counters of an engine since it started.
#[derive(Debug, Clone, Default)]
pub struct EngineStats {
    /// Sequences in the running batch.
    pub running: usize,
    /// Requests waiting for admission (including preempted ones).
    pub waiting: usize,
    /// The largest batch a step has run.
    pub peak_running: usize,
    /// Requests that ended (any way).
    pub finished: u64,
    /// Token steps run.
    pub steps: u64,
    /// Wall time of all steps, from the Scheduler starting one to it receiving the commit.
    pub step_time: Duration,
    /// Of which inside handlers, by phase: schedule, kv, draft, verify, accept.
    pub phase_time: [Duration; 5],
    /// Of which between handlers: the actor messaging overhead.
    pub messaging_time: Duration,
    /// Target pool usage (as of the last time the pools were home).
    pub kv_target: KvUsage,
    /// Draft model pool usage.
    pub kv_draft: KvUsage,
    /// GLIDE drafter pool usage (its own cache; it reads the target's).
    pub kv_glide: KvUsage,
    /// Sequences preempted (blocks freed, requeued, recomputed later).
    pub preemptions: u64,
    /// Steps whose pools' used blocks differed from what the sequences held (must stay 0).
    pub kv_accounting_errors: u64,
    /// Prompt positions sequences took from the target's prefix cache instead of prefilling.
    pub prefix_cache_hit_tokens: u64,
}

impl EngineStats {
    /// Messaging time over step time.
    pub fn messaging_fraction(&self) -> f64 {
        if self.step_time.is_zero() {
            0.0
        } else {
            self.messaging_time.as_secs_f64() / self.step_time.as_secs_f64()
        }
    }
}

/// GPU pools allocate as they fill: checks at start that they can fill, so that a size the card
/// cannot hold is an error now rather than failed requests later.
fn check_device_memory(models: &EngineModels, config: &EngineConfig, pools: &Pools) -> Result<()> {
    let Some(free) = models.target.device_memory_free()? else {
        return Ok(());
    };
    let own = |blocks: usize, kv: &crate::kv::KvPool| {
        blocks.min(kv.usage().blocks_total) * kv.block_bytes()
    };
    let need = config.target_kv_blocks * pools.target.block_bytes()
        + own(config.draft_kv_blocks, &pools.draft)
        + own(config.glide_kv_blocks, &pools.glide);
    if need > free {
        return Err(Error::Device(format!(
            "the KV caches need {need} bytes ({} target, {} draft and {} GLIDE blocks) but {} \
             has {free} bytes free: lower the KV memory (--kv-mib / engine.kv_memory_mib)",
            config.target_kv_blocks,
            config.draft_kv_blocks,
            config.glide_kv_blocks,
            models.target.device()
        )));
    }
    Ok(())
}

/// The pools an engine starts with: the target's and each loaded drafter's own, sized by
/// `config` (empty for drafters not loaded).
fn new_pools(models: &EngineModels, config: &EngineConfig) -> Pools {
    let own = |p: Option<&dyn Proposer>, blocks: usize| {
        p.map_or_else(|| crate::kv::KvPool::new(0, 0, 0), |p| p.new_pool(blocks))
    };
    Pools {
        target: models.target.new_pool(config.target_kv_blocks),
        draft: own(models.proposer(Method::Draft), config.draft_kv_blocks),
        glide: own(models.proposer(Method::Glide), config.glide_kv_blocks),
    }
}

/// The engine: owns the thread its actors run on. Dropping it stops them.
#[derive(Debug)]
pub struct Engine {
    handle: EngineHandle,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Engine {
    /// Starts the actors on a new thread.
    pub fn start(models: EngineModels, config: EngineConfig) -> Result<Self> {
        let pools = new_pools(&models, &config);
        check_device_memory(&models, &config, &pools)?;
        let (tx, rx) = std::sync::mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("specd-engine".into())
            .spawn(move || {
                let system = actix::System::new();
                system.block_on(async move {
                    let sched_ctx = Context::<Scheduler>::new();
                    let kv_ctx = Context::<KvCacheManager>::new();
                    let (sched, kv) = (sched_ctx.address(), kv_ctx.address());
                    let acceptor = Acceptor { kv: kv.clone() }.start();
                    let verifier = Verifier {
                        models: models.clone(),
                        acceptor,
                    }
                    .start();
                    let drafter = Drafter {
                        models: models.clone(),
                        verifier,
                    }
                    .start();
                    let usage = pools.usage();
                    kv_ctx.run(KvCacheManager {
                        models: models.clone(),
                        prefix_cache: config.prefix_cache,
                        pools: Some(pools),
                        usage,
                        accounting_errors: 0,
                        preemptions: 0,
                        prefix_hits: 0,
                        scheduler: sched.clone(),
                        drafter,
                    });
                    let config_calibration = config.calibration;
                    sched_ctx.run(Scheduler {
                        models,
                        config,
                        kv: kv.clone(),
                        waiting: VecDeque::new(),
                        running: Vec::new(),
                        in_step: 0,
                        stepping: false,
                        kick_queued: false,
                        stopping: false,
                        cancels: HashSet::new(),
                        next_id: 0,
                        stats: EngineStats::default(),
                        costs: prefill::StepCosts::default(),
                        adaptive: config_calibration.map(adapt::AdaptivePolicies::new),
                    });
                    let _ = tx.send(EngineHandle {
                        scheduler: sched,
                        kv,
                    });
                });
                let _ = system.run();
            })
            .map_err(|e| Error::InvalidRequest(format!("cannot start the engine thread: {e}")))?;
        let handle = rx.recv().map_err(|_| Error::EngineStopped)?;
        Ok(Self {
            handle,
            thread: Some(thread),
        })
    }

    /// A handle for submitting requests (cheap to clone, usable from any thread).
    pub fn handle(&self) -> EngineHandle {
        self.handle.clone()
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.handle.scheduler.do_send(Shutdown);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Submits and cancels requests; what the gateway holds.
#[derive(Debug, Clone)]
pub struct EngineHandle {
    scheduler: Addr<Scheduler>,
    kv: Addr<KvCacheManager>,
}

impl EngineHandle {
    /// Queues a request. Refused at once with [`Error::Overloaded`] when the waiting queue is
    /// full, or with the field at fault when the request is invalid.
    pub async fn submit(&self, req: EngineRequest) -> Result<RequestStream> {
        let (id, rx) = self
            .scheduler
            .send(Submit(req))
            .await
            .map_err(|_| Error::EngineStopped)??;
        Ok(RequestStream {
            id,
            rx,
            scheduler: self.scheduler.clone(),
            ended: false,
        })
    }

    /// Cancels a request; its blocks are freed before the next step. Unknown or finished ids
    /// are ignored.
    pub fn cancel(&self, id: RequestId) {
        self.scheduler.do_send(Cancel(id));
    }

    /// The engine's counters and pool usage.
    pub async fn stats(&self) -> Result<EngineStats> {
        let mut s = self
            .scheduler
            .send(GetStats)
            .await
            .map_err(|_| Error::EngineStopped)?;
        let r = self
            .kv
            .send(GetKvUsage)
            .await
            .map_err(|_| Error::EngineStopped)?;
        s.kv_target = r.usage.target;
        s.kv_draft = r.usage.draft;
        s.kv_glide = r.usage.glide;
        s.kv_accounting_errors = r.accounting_errors;
        s.prefix_cache_hit_tokens = r.prefix_hits;
        s.preemptions = r.preemptions;
        Ok(s)
    }
}

/// A request's events. Dropping the stream before its `Done`/`Error` cancels the request.
#[derive(Debug)]
pub struct RequestStream {
    id: RequestId,
    rx: UnboundedReceiver<Event>,
    scheduler: Addr<Scheduler>,
    ended: bool,
}

impl RequestStream {
    /// The request's id (for [`EngineHandle::cancel`]).
    pub fn id(&self) -> RequestId {
        self.id
    }

    /// The next event; `None` after `Done`/`Error` (or if the engine stopped).
    pub async fn next_event(&mut self) -> Option<Event> {
        let e = self.rx.recv().await;
        self.observe(&e);
        e
    }

    fn observe(&mut self, e: &Option<Event>) {
        if matches!(e, None | Some(Event::Done(_)) | Some(Event::Error(_))) {
            self.ended = true;
        }
    }
}

impl futures_core::Stream for RequestStream {
    type Item = Event;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Option<Event>> {
        let p = self.rx.poll_recv(cx);
        if let Poll::Ready(e) = &p {
            let e = e.clone();
            self.observe(&e);
        }
        p
    }
}

impl Drop for RequestStream {
    fn drop(&mut self) {
        if !self.ended {
            self.scheduler.do_send(Cancel(self.id));
        }
    }
}
