//! The Verifier: prefills newly admitted (or recomputed) sequences, a long prompt in chunks
//! over several steps, then runs ONE target forward over `[last, drafts..]` of every sequence
//! of the step whose prefill is complete.

use std::borrow::Cow;
use std::time::Instant;

use actix::{Actor, Addr, Context, Handler};

use super::acceptor::Acceptor;
use super::messages::{Decide, Verify};
use super::EngineModels;
use crate::error::Result;
use crate::metrics::Phase;
use crate::speculative::{verify, Acceptance, Draft, Verified};

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
            let (prefilled, rode) = (&mut batch.prefilled, &mut batch.rode);
            let result: Result<Vec<Option<Verified>>> = (|| {
                // The rest of a prompt whose sequence verifies in this step goes first, in a
                // forward of its own (its last token is the verification's first).
                for slot in batch.slots.iter_mut().filter(|s| s.chunk.is_none()) {
                    if slot.seq.pending_prefill() > 0 {
                        let t = Instant::now();
                        let n =
                            slot.seq
                                .prefill_target_chunk(target, &mut pools.target, usize::MAX)?;
                        prefilled.add(n, t.elapsed());
                    }
                }
                // Slots that only prefill a chunk sit verification out: their chunks ride
                // along in the verification forward.
                let verifying: Vec<bool> = batch.slots.iter().map(|s| s.chunk.is_none()).collect();
                // The drafts of the verifying slots (all of them, most steps: no copy then).
                let drafts: Cow<'_, [Draft]> = if verifying.iter().all(|&v| v) {
                    Cow::Borrowed(&batch.drafts)
                } else {
                    batch
                        .drafts
                        .iter()
                        .zip(&verifying)
                        .filter(|(_, &v)| v)
                        .map(|(d, _)| d.clone())
                        .collect()
                };
                let mut seqs = Vec::new();
                let mut riders = Vec::new();
                for slot in batch.slots.iter_mut() {
                    match slot.chunk {
                        None => seqs.push(&mut slot.seq),
                        Some(n) => riders.extend(slot.seq.chunk_input(n)),
                    }
                }
                *rode = riders.iter().map(|r| r.tokens.len()).sum();
                let mut verified = if seqs.is_empty() && riders.is_empty() {
                    Vec::new()
                } else {
                    verify(
                        target,
                        &mut pools.target,
                        &mut seqs,
                        &drafts,
                        riders,
                        Acceptance::InForward,
                    )?
                }
                .into_iter();
                Ok(verifying
                    .into_iter()
                    .map(|v| if v { verified.next() } else { None })
                    .collect())
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
