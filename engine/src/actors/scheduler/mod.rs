//! The Scheduler: owns the waiting queue and the running set, admits requests FCFS under the
//! token budget, starts every step, streams each step's tokens to the requests, and retires
//! finished and cancelled ones.

use std::collections::{HashSet, VecDeque};
use std::time::{Duration, Instant};

use actix::{Actor, Addr, AsyncContext, Context, Handler, MessageResult};
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};

use super::adapt::AdaptivePolicies;
use super::config::EngineConfig;
use super::kv_manager::KvCacheManager;
use super::messages::{Cancel, Commit, Free, GetStats, Reserve, Shutdown, StartStep, Submit};
use super::prefill::StepCosts;
use super::request::{
    Chunk, Done, EngineRequest, Event, Method, RequestError, RequestId, Timings, Usage,
};
use super::step::{Slot, StepBatch, StepClock};
use super::{EngineModels, EngineStats};
use crate::error::{Error, Result};
use crate::generate::FinishReason;
use crate::metrics::{self as m, Phase};
use crate::speculative::{Decision, Draft, DraftPolicyConfig, PhaseTimes, Sequence};

mod plan;

pub(crate) struct Scheduler {
    pub models: EngineModels,
    pub config: EngineConfig,
    pub kv: Addr<KvCacheManager>,
    pub waiting: VecDeque<Slot>,
    /// The running set between steps (empty while a step is out: its slots travel with it).
    pub running: Vec<Slot>,
    /// Sequences in the step in flight.
    pub in_step: usize,
    pub stepping: bool,
    /// A `StartStep` is queued behind the requests already in the mailbox.
    pub kick_queued: bool,
    /// Shutdown was asked while a step was in flight: end at its commit.
    pub stopping: bool,
    /// Requests cancelled while their step was in flight.
    pub cancels: HashSet<RequestId>,
    pub next_id: RequestId,
    pub stats: EngineStats,
    /// Prefill, catch-up and decode costs measured so far (they size prefill chunks).
    pub costs: StepCosts,
    /// The policies following measured acceptance, when the config has a calibration.
    pub adaptive: Option<AdaptivePolicies>,
}

impl Actor for Scheduler {
    type Context = Context<Self>;
}

impl Scheduler {
    /// Checks what only the engine knows (drafters present, pool size); the request's own
    /// fields are checked by [`Sequence::new`] first.
    fn validate(&self, req: &EngineRequest, k: usize) -> Result<()> {
        if let Some(model) = req.method.needs_model() {
            if self.models.proposer(req.method).is_none() {
                let served: Vec<&str> = self
                    .models
                    .methods()
                    .into_iter()
                    .map(Method::as_str)
                    .collect();
                return Err(Error::InvalidRequest(format!(
                    "`speculation.method` `{}` needs {model}, and this engine has none (it serves {})",
                    req.method,
                    served.join(", ")
                )));
            }
        }
        // The prompt and one step (`prompt + k` positions) must fit the target's pool alone.
        let capacity = self.config.target_kv_blocks * crate::kv::BLOCK_SIZE;
        if req.generate.prompt.len() + k > capacity {
            return Err(Error::ContextLength {
                len: req.generate.prompt.len(),
                limit: capacity.saturating_sub(k),
            });
        }
        Ok(())
    }

    fn submit(&mut self, req: EngineRequest) -> Result<(RequestId, UnboundedReceiver<Event>)> {
        let policy = match req.method {
            Method::None => DraftPolicyConfig {
                max_draft: 0,
                ..req.policy
            },
            _ => req.policy,
        };
        let proposer = self.models.proposer(req.method);
        let checked = Sequence::new(
            &self.models.target,
            &self.models.tokenizer,
            proposer,
            req.generate.clone(),
            policy,
        )
        .and_then(|seq| self.validate(&req, policy.max_draft).map(|()| seq));
        let seq = match checked {
            Ok(seq) => seq,
            Err(e) => {
                metrics::counter!(m::REQUESTS, "finish_reason" => "error", "error_code" => e.code())
                    .increment(1);
                return Err(e);
            }
        };
        // Requests the batch can take at once do not count against the queue.
        let free_slots = self
            .config
            .max_running
            .saturating_sub(self.running.len() + self.in_step);
        if self.waiting.len() >= self.config.max_waiting + free_slots {
            let e = Error::Overloaded {
                waiting: self.waiting.len(),
                limit: self.config.max_waiting,
            };
            metrics::counter!(m::REQUESTS, "finish_reason" => "error", "error_code" => e.code())
                .increment(1);
            return Err(e);
        }
        let (tx, rx) = unbounded_channel();
        self.next_id += 1;
        let id = self.next_id;
        self.waiting.push_back(Slot {
            id,
            seq,
            method: req.method,
            reply: tx,
            submitted: Instant::now(),
            admitted: None,
            first_token: None,
            last_chunk: None,
            budget: 0,
            chunk: None,
            catch_up: 0,
            preemptions: 0,
            cached_prefix: 0,
        });
        metrics::gauge!(m::WAITING_SEQUENCES).set(self.waiting.len() as f64);
        Ok((id, rx))
    }

    /// Moves waiting requests into the running set, first come first served, while the batch
    /// has room under `max_running` and its verification rows under `max_batch_tokens`
    /// (prompts are prefilled in chunks under the same budget, [`Scheduler::plan_step`]).
    fn admit(&mut self) {
        let rows = |s: &Slot| 1 + s.seq.request_draft_len();
        let mut tokens: usize = self.running.iter().map(rows).sum();
        while let Some(front) = self.waiting.front() {
            if self.running.len() >= self.config.max_running {
                break;
            }
            let cost = rows(front);
            if tokens + cost > self.config.max_batch_tokens && !self.running.is_empty() {
                break;
            }
            let mut slot = self.waiting.pop_front().expect("front exists");
            if slot.admitted.is_none() {
                slot.admitted = Some(Instant::now());
                metrics::counter!(m::PROMPT_TOKENS)
                    .increment(slot.seq.request().prompt.len() as u64);
            }
            tokens += cost;
            self.running.push(slot);
        }
    }

    /// Starts a step if there is work and none is in flight.
    fn start_step(&mut self) {
        if self.stepping {
            return;
        }
        let t = Instant::now();
        let clock = StepClock::new();
        self.admit();
        metrics::gauge!(m::WAITING_SEQUENCES).set(self.waiting.len() as f64);
        metrics::gauge!(m::RUNNING_SEQUENCES).set(self.running.len() as f64);
        if self.running.is_empty() {
            return;
        }
        let ctx = self.models.target.config().max_position_embeddings;
        // Load counts the queue too: a burst of requests should not start with drafting for
        // the first one alone.
        self.plan_step(ctx, self.running.len() + self.waiting.len());
        let mut batch = StepBatch::new(std::mem::take(&mut self.running), clock);
        batch.clock.add(Phase::Schedule, t.elapsed());
        self.in_step = batch.slots.len();
        self.stats.peak_running = self.stats.peak_running.max(self.in_step);
        self.stepping = true;
        self.kv.do_send(Reserve(batch));
    }

    /// Commits one slot's verified step: its tokens streamed, its speculation recorded; the
    /// slot goes back to the running set, or is returned to leave (finished, cancelled, failed).
    fn commit_slot(
        &mut self,
        mut slot: Slot,
        draft: &Draft,
        decision: Option<&Decision>,
        ctx: usize,
        times: PhaseTimes,
    ) -> Option<Slot> {
        if self.cancels.remove(&slot.id) {
            return Some(self.finish(slot, Some(FinishReason::Cancelled)));
        }
        // A prompt chunk: nothing to commit yet.
        let Some(d) = decision else {
            self.running.push(slot);
            return None;
        };
        record_speculation(slot.method, d.drafted, d.accepted, draft.lookup);
        if let Some(a) = self.adaptive.as_mut() {
            a.measured.record(slot.method, d.drafted, d.accepted);
        }
        let committed = match slot.seq.commit(draft, d, ctx, times) {
            Ok(n) => n,
            Err(e) => return Some(self.fail(slot, (&e).into())),
        };
        let open = self.stream(&mut slot, committed, d.drafted, d.accepted);
        if slot.seq.is_finished() {
            Some(self.finish(slot, None))
        } else if !open {
            // The stream was dropped: the request is cancelled.
            Some(self.finish(slot, Some(FinishReason::Cancelled)))
        } else {
            self.running.push(slot);
            None
        }
    }

    /// The slots the step took out before its model work: those that cannot run fail, those
    /// that outgrew the pool end, and those short of KV blocks go back to the front of the
    /// queue in their arrival order (unless cancelled meanwhile).
    fn settle_taken_out(&mut self, batch: &mut StepBatch) {
        for (slot, e) in std::mem::take(&mut batch.failed) {
            self.fail(slot, e);
        }
        for slot in std::mem::take(&mut batch.outgrown) {
            // Its blocks are already back; like reaching the context length.
            self.finish(slot, None);
        }
        let mut requeue = std::mem::take(&mut batch.requeue);
        requeue.sort_by_key(|s| std::cmp::Reverse(s.id));
        for slot in requeue {
            if self.cancels.remove(&slot.id) {
                self.finish(slot, Some(FinishReason::Cancelled));
            } else {
                self.waiting.push_front(slot);
            }
        }
    }

    /// Ends a request: its last text, then `Done`.
    fn finish(&mut self, mut slot: Slot, reason: Option<FinishReason>) -> Slot {
        if reason == Some(FinishReason::Cancelled) {
            slot.seq.cancel();
        }
        let out = slot.seq.output();
        let rest = slot.seq.take_text();
        if !rest.is_empty() {
            let _ = slot.reply.send(Event::Chunk(Chunk {
                tokens: Vec::new(),
                text: rest,
                drafted: 0,
                accepted: 0,
                draft_chars: 0,
                step: 0,
            }));
        }
        let now = Instant::now();
        let timings = Timings {
            queued: slot
                .admitted
                .map_or(Duration::ZERO, |a| a.duration_since(slot.submitted)),
            time_to_first_token: slot.first_token.map(|f| f.duration_since(slot.submitted)),
            total: now.duration_since(slot.submitted),
            preemptions: slot.preemptions,
        };
        metrics::counter!(m::REQUESTS, "finish_reason" => out.finish_reason.as_str(), "error_code" => m::NO_ERROR)
            .increment(1);
        metrics::histogram!(m::REQUEST_DURATION).record(timings.total.as_secs_f64());
        self.stats.finished += 1;
        let _ = slot.reply.send(Event::Done(Box::new(Done {
            finish_reason: out.finish_reason,
            usage: Usage {
                prompt_tokens: out.prompt_tokens,
                completion_tokens: out.tokens.len(),
            },
            speculation: out.speculation,
            timings,
        })));
        slot
    }

    /// Fails every request still here with `EngineStopped` and stops the engine's thread.
    fn stop(&mut self) {
        let e = RequestError::from(&Error::EngineStopped);
        let left: Vec<Slot> = self
            .waiting
            .drain(..)
            .chain(self.running.drain(..))
            .collect();
        for slot in left {
            self.fail(slot, e.clone());
        }
        actix::System::current().stop();
    }

    fn fail(&mut self, slot: Slot, e: RequestError) -> Slot {
        metrics::counter!(m::REQUESTS, "finish_reason" => "error", "error_code" => e.code)
            .increment(1);
        self.stats.finished += 1;
        let _ = slot.reply.send(Event::Error(e));
        slot
    }

    /// Streams one sequence's step; returns whether it goes on.
    fn stream(
        &mut self,
        slot: &mut Slot,
        committed: usize,
        drafted: usize,
        accepted: usize,
    ) -> bool {
        let now = Instant::now();
        let tokens = slot.seq.generated()[slot.seq.generated().len() - committed..].to_vec();
        let (text, draft_chars) = slot.seq.take_text_split();
        if committed > 0 {
            if slot.first_token.is_none() {
                slot.first_token = Some(now);
                metrics::histogram!(m::TIME_TO_FIRST_TOKEN)
                    .record(now.duration_since(slot.submitted).as_secs_f64());
            } else if let Some(last) = slot.last_chunk {
                let per = now.duration_since(last).as_secs_f64() / committed as f64;
                for _ in 0..committed {
                    metrics::histogram!(m::INTER_TOKEN_LATENCY).record(per);
                }
            }
            slot.last_chunk = Some(now);
            metrics::counter!(m::GENERATED_TOKENS).increment(committed as u64);
        }
        // A step that ended at an end-of-text token may commit nothing and still have drafted:
        // its chunk carries the counts, so that the chunks add up to the final statistics.
        if tokens.is_empty() && text.is_empty() && drafted == 0 {
            return true;
        }
        slot.reply
            .send(Event::Chunk(Chunk {
                tokens,
                text,
                drafted,
                accepted,
                draft_chars,
                step: self.stats.steps + 1,
            }))
            .is_ok()
    }

    fn record_step(&mut self, batch: &StepBatch) {
        let total = batch.clock.started.elapsed();
        let busy: Duration = batch.clock.busy.iter().sum();
        let messaging = total.saturating_sub(busy);
        self.stats.steps += 1;
        self.stats.step_time += total;
        self.stats.messaging_time += messaging;
        for (i, phase) in [
            Phase::Schedule,
            Phase::Kv,
            Phase::Draft,
            Phase::Verify,
            Phase::Accept,
        ]
        .into_iter()
        .enumerate()
        {
            self.stats.phase_time[i] += batch.clock.busy[i];
            metrics::histogram!(m::STEP_DURATION, "phase" => phase.as_str())
                .record(batch.clock.busy[i].as_secs_f64());
        }
        metrics::histogram!(m::STEP_DURATION, "phase" => Phase::Messaging.as_str())
            .record(messaging.as_secs_f64());
        metrics::histogram!(m::STEP_DURATION, "phase" => Phase::Total.as_str())
            .record(total.as_secs_f64());
    }
}

fn record_speculation(method: Method, drafted: usize, accepted: usize, lookup: bool) {
    let method = method.as_str();
    if drafted > 0 {
        metrics::counter!(m::SPEC_DRAFTS, "method" => method).increment(1);
        metrics::counter!(m::SPEC_DRAFT_TOKENS, "method" => method).increment(drafted as u64);
        metrics::counter!(m::SPEC_ACCEPTED_TOKENS, "method" => method).increment(accepted as u64);
        if lookup {
            metrics::counter!(m::SPEC_LOOKUP_DRAFTS, "method" => method).increment(1);
            metrics::counter!(m::SPEC_LOOKUP_DRAFT_TOKENS, "method" => method)
                .increment(drafted as u64);
            metrics::counter!(m::SPEC_LOOKUP_ACCEPTED_TOKENS, "method" => method)
                .increment(accepted as u64);
        }
        for pos in 1..=drafted {
            let position = m::position_label(pos);
            metrics::counter!(m::SPEC_DRAFTED_PER_POSITION, "method" => method, "position" => position.clone())
                .increment(1);
            if pos <= accepted {
                metrics::counter!(m::SPEC_ACCEPTED_PER_POSITION, "method" => method, "position" => position)
                    .increment(1);
            }
        }
    }
    metrics::histogram!(m::ACCEPTED_LENGTH, "method" => method).record((accepted + 1) as f64);
}

impl Handler<Submit> for Scheduler {
    type Result = Result<(RequestId, UnboundedReceiver<Event>)>;

    fn handle(&mut self, Submit(req): Submit, ctx: &mut Context<Self>) -> Self::Result {
        let r = self.submit(req);
        // An idle engine waits a moment (`admission_window`, a small fraction of a step) for
        // the rest of a burst, so that it is admitted, and sized by the load policy, as one
        // batch rather than as a lone request that drafts followed by the others.
        if r.is_ok() && !self.stepping && !self.kick_queued {
            self.kick_queued = true;
            ctx.notify_later(StartStep, self.config.admission_window);
        }
        r
    }
}

impl Handler<StartStep> for Scheduler {
    type Result = ();

    fn handle(&mut self, _: StartStep, _: &mut Context<Self>) {
        self.kick_queued = false;
        self.start_step();
    }
}

impl Handler<Cancel> for Scheduler {
    type Result = ();

    fn handle(&mut self, Cancel(id): Cancel, _: &mut Context<Self>) {
        if let Some(i) = self.waiting.iter().position(|s| s.id == id) {
            let slot = self.waiting.remove(i).expect("position found");
            // Waiting sequences hold no blocks; nothing to free.
            self.finish(slot, Some(FinishReason::Cancelled));
            metrics::gauge!(m::WAITING_SEQUENCES).set(self.waiting.len() as f64);
        } else if self.stepping {
            self.cancels.insert(id);
        }
    }
}

impl Handler<Commit> for Scheduler {
    type Result = ();

    fn handle(&mut self, Commit(mut batch): Commit, _: &mut Context<Self>) {
        let t = Instant::now();
        self.stepping = false;
        self.measure(&batch);
        let ctx = self.models.target.config().max_position_embeddings;
        let mut leaving = Vec::new();
        let slots = std::mem::take(&mut batch.slots);
        if let Some(e) = batch.error.clone() {
            for slot in slots {
                leaving.push(self.fail(slot, e.clone()));
            }
        } else {
            let drafts = std::mem::take(&mut batch.drafts);
            let decisions = std::mem::take(&mut batch.decisions);
            for ((slot, draft), d) in slots.into_iter().zip(&drafts).zip(&decisions) {
                leaving.extend(self.commit_slot(slot, draft, d.as_ref(), ctx, batch.times));
            }
        }
        // Acceptance measured this step may move the policies (adapt.rs).
        if let Some((load, catch_up)) = self.adaptive.as_mut().and_then(|a| a.rederive()) {
            self.config.load = load;
            self.config.catch_up = catch_up;
        }
        self.settle_taken_out(&mut batch);
        // Cancels of requests that finished in this very step are moot.
        self.cancels.clear();
        batch.clock.add(Phase::Schedule, t.elapsed());
        self.record_step(&batch);
        self.in_step = 0;
        if !leaving.is_empty() {
            self.kv.do_send(Free(leaving));
        }
        if self.stopping {
            self.stop();
            return;
        }
        self.start_step();
    }
}

impl Handler<GetStats> for Scheduler {
    type Result = MessageResult<GetStats>;

    fn handle(&mut self, _: GetStats, _: &mut Context<Self>) -> Self::Result {
        MessageResult(EngineStats {
            running: self.running.len() + self.in_step,
            waiting: self.waiting.len(),
            ..self.stats.clone()
        })
    }
}

impl Handler<Shutdown> for Scheduler {
    type Result = ();

    fn handle(&mut self, _: Shutdown, _: &mut Context<Self>) {
        self.stopping = true;
        if !self.stepping {
            self.stop();
        }
    }
}
