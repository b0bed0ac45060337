//! The forward's entry points on a model: logits, their argmax, verification with greedy or
//! sampled acceptance, one sequence with its own cache; the checks on a batch before it runs,
//! and the dispatch to the device's backend.

use candle_core::Tensor;

use super::{
    DeviceWeights, ForwardOut, HiddenRows, Logits, Model, OutputMode, SampleInput, SeqInput, Top,
    Wanted,
};
use crate::error::{Error, Result};
use crate::kv::{KvPool, SequenceCache};
use crate::model::cpu_forward;

impl Model {
    /// Appends each sequence's tokens to its cache in `kv` and returns its logits: `[n_i, vocab]`
    /// for [`Logits::All`], `[1, vocab]` for [`Logits::Last`], `[0, vocab]` for [`Logits::None`].
    /// New tokens attend causally to each other and to everything cached before them. Slots
    /// for the new tokens are reserved first ([`Error::KvExhausted`] when the pool is full).
    /// On error no sequence's committed length changes (reserved blocks stay with their
    /// tables).
    pub fn forward(&self, kv: &mut KvPool, batch: &mut [SeqInput<'_>]) -> Result<Vec<Tensor>> {
        match self.run(kv, batch, OutputMode::Logits, &[], false)?.0 {
            ForwardOut::Logits(l) => Ok(l),
            _ => unreachable!("logits asked for"),
        }
    }

    /// [`Model::forward`], also returning each sequence's final normed hidden rows (after the
    /// target's last norm, one per row of logits: what a GLIDE drafter with a feature reads;
    /// on a GPU as its head read them, in bf16).
    pub fn forward_keeping_hidden(
        &self,
        kv: &mut KvPool,
        batch: &mut [SeqInput<'_>],
    ) -> Result<(Vec<Tensor>, HiddenRows)> {
        match self.run(kv, batch, OutputMode::Logits, &[], true)? {
            (ForwardOut::Logits(l), Some(h)) => Ok((l, h)),
            _ => unreachable!("logits and hidden rows asked for"),
        }
    }

    /// [`Model::forward`], returning only the argmax of each wanted row and its probability
    /// (computed on the device: on a GPU, a few bytes per row cross to the host instead of the
    /// vocabulary's logits).
    pub fn forward_top(
        &self,
        kv: &mut KvPool,
        batch: &mut [SeqInput<'_>],
    ) -> Result<Vec<Vec<Top>>> {
        match self.run(kv, batch, OutputMode::Top, &[], false)?.0 {
            ForwardOut::Top(t) => Ok(t),
            _ => unreachable!("argmax asked for"),
        }
    }

    /// Verification with greedy acceptance on the device: each sequence feeds its last
    /// committed token then its drafts, and gets back how many drafts the target's own greedy
    /// choices keep and the target's token after them. Every sequence must want
    /// [`Logits::All`].
    pub fn verify_greedy(
        &self,
        kv: &mut KvPool,
        batch: &mut [SeqInput<'_>],
    ) -> Result<Vec<(usize, u32)>> {
        check_verdict_inputs(batch, OutputMode::GreedyVerdict, &[])?;
        match self
            .run(kv, batch, OutputMode::GreedyVerdict, &[], false)?
            .0
        {
            ForwardOut::Verdicts(v) => Ok(v),
            _ => unreachable!("verdicts asked for"),
        }
    }

    /// Verification with speculative rejection sampling in the forward (on a GPU: softmax and
    /// acceptance on the device, so only the counts and tokens cross to the host; on the CPU
    /// the kernels' references): each sequence feeds its last committed token then its drafts
    /// and gets back how many drafts it keeps and the token drawn after them, distributed
    /// exactly as the target's softmax at its temperature. `sample[i]` goes with `batch[i]`,
    /// which must want [`Logits::All`]; sequences past the inputs ride along (prompt chunks
    /// wanting [`Logits::None`]) and get no verdict.
    pub fn verify_sampled(
        &self,
        kv: &mut KvPool,
        batch: &mut [SeqInput<'_>],
        sample: &[SampleInput<'_>],
    ) -> Result<Vec<(usize, u32)>> {
        check_verdict_inputs(batch, OutputMode::SampledVerdict, sample)?;
        match self
            .run(kv, batch, OutputMode::SampledVerdict, sample, false)?
            .0
        {
            ForwardOut::Verdicts(v) => Ok(v.into_iter().take(sample.len()).collect()),
            _ => unreachable!("verdicts asked for"),
        }
    }

    /// [`Model::forward`] for one sequence with its own cache; returns its logits.
    pub fn forward_cache(
        &self,
        cache: &mut SequenceCache,
        tokens: &[u32],
        logits: Logits,
    ) -> Result<Tensor> {
        let (pool, table) = cache.parts();
        let mut out = self.forward(
            pool,
            &mut [SeqInput {
                table,
                tokens,
                logits,
            }],
        )?;
        Ok(out.pop().expect("one sequence in, one out"))
    }

    /// The forward in `mode` (the checks of [`Model::verify_greedy`] and
    /// [`Model::verify_sampled`] are the caller's), keeping each sequence's final normed rows
    /// (one per row of logits) when `keep_hidden`: what a GLIDE drafter with a feature reads.
    pub(crate) fn run(
        &self,
        kv: &mut KvPool,
        batch: &mut [SeqInput<'_>],
        mode: OutputMode,
        sample: &[SampleInput<'_>],
        keep_hidden: bool,
    ) -> Result<(ForwardOut, Option<HiddenRows>)> {
        self.check_batch(kv, batch)?;
        for s in batch.iter_mut() {
            kv.reserve(s.table, s.tokens.len())?;
        }
        let wanted = Wanted {
            mode,
            sample,
            keep_hidden,
        };
        let out = match &self.weights {
            DeviceWeights::Cpu(w) => {
                cpu_forward::forward(&self.config, &self.inv_freq, w, kv, batch, wanted)?
            }
            DeviceWeights::Cuda(m) => m.forward(kv, batch, wanted, self.head_rows, None)?,
        };
        for s in batch.iter_mut() {
            kv.commit(s.table, s.tokens.len());
        }
        Ok(out)
    }

    fn check_batch(&self, kv: &KvPool, batch: &[SeqInput<'_>]) -> Result<()> {
        let c = &self.config;
        if kv.device() != self.device() {
            return Err(Error::InvalidRequest(format!(
                "the KV pool lives on {} but the model on {}",
                kv.device(),
                self.device()
            )));
        }
        let shape = (c.num_layers, c.num_kv_heads * c.head_dim);
        if kv.row_shape() != shape {
            return Err(Error::InvalidRequest(format!(
                "the KV pool holds (layers, row) {:?} but the model needs {shape:?}: a pool of another model",
                kv.row_shape()
            )));
        }
        for (i, s) in batch.iter().enumerate() {
            if s.tokens.is_empty() {
                return Err(Error::InvalidRequest(format!(
                    "sequence {i} of the batch has no new tokens"
                )));
            }
            let len = s.table.len() + s.tokens.len();
            if len > c.max_position_embeddings {
                return Err(Error::ContextLength {
                    len,
                    limit: c.max_position_embeddings,
                });
            }
            if let Some(&t) = s.tokens.iter().find(|&&t| t as usize >= c.vocab_size) {
                return Err(Error::InvalidRequest(format!(
                    "token id {t} is outside the vocabulary of {} tokens",
                    c.vocab_size
                )));
            }
        }
        Ok(())
    }
}

/// What a forward that decides acceptance itself needs, checked before it runs: every
/// sequence's rows of logits ([`Logits::All`]) and, for sampled verification, one sampling
/// input per sequence with one uniform per token and one draft distribution per draft; there,
/// sequences past the inputs may ride along (prompt chunks that want no rows, [`Logits::None`]),
/// and decide nothing.
/// ([`Model::verify_greedy`], [`Model::verify_sampled`] and the engine's verification step.)
pub(crate) fn check_verdict_inputs(
    batch: &[SeqInput<'_>],
    mode: OutputMode,
    sample: &[SampleInput<'_>],
) -> Result<()> {
    match mode {
        OutputMode::GreedyVerdict => {
            if batch.iter().any(|s| s.logits != Logits::All) {
                return Err(Error::InvalidRequest(
                    "greedy verification needs every row's logits (Logits::All)".into(),
                ));
            }
        }
        OutputMode::SampledVerdict => {
            let riders = &batch[sample.len().min(batch.len())..];
            if sample.len() > batch.len() || riders.iter().any(|s| s.logits != Logits::None) {
                return Err(Error::InvalidRequest(format!(
                    "{} sampling inputs for {} sequences (sequences past the inputs must want \
                     no rows)",
                    sample.len(),
                    batch.len()
                )));
            }
            for (i, (s, x)) in batch.iter().zip(sample).enumerate() {
                let drafts = s.tokens.len().saturating_sub(1);
                let q_rows = x.q.map_or(drafts, <[_]>::len);
                if s.logits != Logits::All || x.u.len() != drafts + 1 || q_rows != drafts {
                    return Err(Error::InvalidRequest(format!(
                        "sampled verification of sequence {i}: every row's logits, one uniform \
                         per token ({} given for {}) and one draft distribution per draft \
                         ({q_rows} for {drafts})",
                        x.u.len(),
                        drafts + 1
                    )));
                }
            }
        }
        OutputMode::Logits | OutputMode::Top | OutputMode::Argmax => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kv::BlockTable;

    #[test]
    fn verdict_forwards_refuse_inputs_they_cannot_decide_by_name() {
        let (mut a, mut b) = (BlockTable::new(), BlockTable::new());
        let tokens = [1u32, 2, 3];
        let batch = [
            SeqInput {
                table: &mut a,
                tokens: &tokens,
                logits: Logits::All,
            },
            SeqInput {
                table: &mut b,
                tokens: &tokens,
                logits: Logits::Last,
            },
        ];
        let e = check_verdict_inputs(&batch, OutputMode::GreedyVerdict, &[]).unwrap_err();
        assert!(e.to_string().contains("Logits::All"), "{e}");
        assert!(check_verdict_inputs(&batch[..1], OutputMode::GreedyVerdict, &[]).is_ok());
        assert!(check_verdict_inputs(&batch, OutputMode::Logits, &[]).is_ok());
        let input = |u: usize| SampleInput {
            inv_temp: 1.0,
            q: None,
            u: vec![0.5; u],
        };
        let e = check_verdict_inputs(&batch[..1], OutputMode::SampledVerdict, &[]).unwrap_err();
        assert!(
            e.to_string().contains("0 sampling inputs for 1 sequences"),
            "{e}"
        );
        let e =
            check_verdict_inputs(&batch[..1], OutputMode::SampledVerdict, &[input(2)]).unwrap_err();
        assert!(e.to_string().contains("(2 given for 3)"), "{e}");
        assert!(check_verdict_inputs(&batch[..1], OutputMode::SampledVerdict, &[input(3)]).is_ok());
        // Past the inputs only riders (no rows wanted) may follow.
        let e = check_verdict_inputs(&batch, OutputMode::SampledVerdict, &[input(3)]).unwrap_err();
        assert!(e.to_string().contains("must want no rows"), "{e}");
        let mut c = BlockTable::new();
        let riding = [
            SeqInput {
                table: &mut a,
                tokens: &tokens,
                logits: Logits::All,
            },
            SeqInput {
                table: &mut c,
                tokens: &tokens,
                logits: Logits::None,
            },
        ];
        assert!(check_verdict_inputs(&riding, OutputMode::SampledVerdict, &[input(3)]).is_ok());
    }
}
