//! The drafter's forward: the feature rows it takes, the checks on its inputs, and one step
//! over a batch on its device (the CPU backend, or the CUDA model).

use candle_core::Tensor;

use super::{glide_layers, GlideDevice, GlideModel};
use crate::error::{Error, Result};
use crate::kv::{BlockTable, KvPool};
use crate::model::cpu_forward::CpuStep;
#[cfg(doc)]
use crate::model::glide_config::GlideFeature;
use crate::model::llama::{
    CrossInput, ForwardOps, ForwardOut, GlideInput, HiddenRows, OutputMode, SeqInput, Wanted,
};
use crate::model::RopeLayout;

/// Whose final hidden state a feature row carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FeatureSource {
    /// The target's, computed by verification: a round's first row.
    Target,
    /// The drafter's own at the row before: a chained row ([`GlideFeature::LastHiddenChain`]).
    Drafter,
}

/// A final hidden state (after the last norm: what a head read) whose projection the drafter's
/// row at `position` adds to its embedding: the target's row at `position - 1` for a round's
/// first row ([`GlideFeature::LastHidden`]), the drafter's own row at `position - 1` for its
/// later rows ([`GlideFeature::LastHiddenChain`]).
#[derive(Debug, Clone, Copy)]
pub struct FeatureRow<'a> {
    pub position: usize,
    pub hidden: &'a [f32],
    pub source: FeatureSource,
}

/// What the drafter's cross-attention reads of its target: the target's KV pool, and each
/// sequence's block table in it (`tables[i]` is sequence `i`'s; only its verified positions are
/// read).
#[derive(Debug, Clone, Copy)]
pub struct TargetKv<'a> {
    pub kv: &'a KvPool,
    pub tables: &'a [&'a BlockTable],
}

impl GlideModel {
    /// Appends each sequence's tokens to its cache in `kv` (the drafter's pool) and returns
    /// the logits over the reduced vocabulary of the rows each wants. The cross-attention reads
    /// `target`: the target's pool, and each sequence's table in it.
    pub fn forward(
        &self,
        kv: &mut KvPool,
        batch: &mut [SeqInput<'_>],
        target: TargetKv<'_>,
    ) -> Result<Vec<Tensor>> {
        self.forward_with_features(kv, batch, target, &[])
    }

    /// [`GlideModel::forward_with_features`], also handing back the final normed row (what
    /// the head read) of each row whose logits are wanted, by sequence, when the drafter
    /// chains its own hidden state ([`GlideFeature::LastHiddenChain`]): the feature of the
    /// row after it in a round of drafts (on a GPU as its head read them, bf16).
    pub fn forward_drafting(
        &self,
        kv: &mut KvPool,
        batch: &mut [SeqInput<'_>],
        target: TargetKv<'_>,
        features: &[Option<FeatureRow<'_>>],
    ) -> Result<(Vec<Tensor>, Option<HiddenRows>)> {
        self.run(kv, batch, target, features, self.config.feature.chains())
    }

    /// [`GlideModel::forward`], where `features[i]` (if given) is the target's hidden state
    /// that sequence `i`'s row at its position takes ([`GlideFeature::LastHidden`]; ignored
    /// when that row is not among its new tokens, or the drafter has no feature). Fewer
    /// entries than sequences: the rest take none.
    pub fn forward_with_features(
        &self,
        kv: &mut KvPool,
        batch: &mut [SeqInput<'_>],
        target: TargetKv<'_>,
        features: &[Option<FeatureRow<'_>>],
    ) -> Result<Vec<Tensor>> {
        Ok(self.run(kv, batch, target, features, false)?.0)
    }

    /// Refuses a forward whose inputs do not fit: one target table a sequence, both KV pools
    /// on the drafter's device, token ids inside the vocabulary, features of the hidden size.
    fn check_inputs(
        &self,
        kv: &KvPool,
        batch: &[SeqInput<'_>],
        target: TargetKv<'_>,
        features: &[Option<FeatureRow<'_>>],
    ) -> Result<()> {
        if target.tables.len() != batch.len() {
            return Err(Error::InvalidRequest(format!(
                "{} target tables for {} sequences",
                target.tables.len(),
                batch.len()
            )));
        }
        let device = self.device();
        for (what, pool) in [("its own", kv), ("the target's", target.kv)] {
            if pool.device() != device || pool.row_shape().0 == 0 {
                return Err(Error::InvalidRequest(format!(
                    "the GLIDE drafter runs on {device}, but {what} KV pool lives on {} or is \
                     empty",
                    pool.device()
                )));
            }
        }
        let vocab = self.base.vocab_size;
        for s in batch.iter() {
            if let Some(&t) = s.tokens.iter().find(|&&t| t as usize >= vocab) {
                return Err(Error::InvalidRequest(format!(
                    "token id {t} is outside the vocabulary of {vocab} tokens"
                )));
            }
        }
        let h = self.base.hidden_size;
        if let Some(f) = features.iter().flatten().find(|f| f.hidden.len() != h) {
            return Err(Error::InvalidRequest(format!(
                "a feature of {} values for a drafter of hidden size {h}",
                f.hidden.len()
            )));
        }
        Ok(())
    }

    fn run(
        &self,
        kv: &mut KvPool,
        batch: &mut [SeqInput<'_>],
        target: TargetKv<'_>,
        features: &[Option<FeatureRow<'_>>],
        keep_hidden: bool,
    ) -> Result<(Vec<Tensor>, Option<HiddenRows>)> {
        self.check_inputs(kv, batch, target, features)?;
        for s in batch.iter_mut() {
            kv.reserve(s.table, s.tokens.len())?;
        }
        let t = &self.target;
        let cross = CrossInput {
            kv: target.kv,
            tables: target.tables.to_vec(),
            layer: self.config.target_layer,
            n_heads: t.num_heads,
            n_kv_heads: t.num_kv_heads,
            head_dim: t.head_dim,
            inv_freq: &self.target_inv_freq,
            interleaved: t.rope_layout == RopeLayout::Interleaved,
        };
        let (logits, hidden) = match &self.weights {
            GlideDevice::Cpu(w) => {
                let mut step = CpuStep::new(&self.base, &self.inv_freq, kv, batch, Some(cross));
                if keep_hidden {
                    step.keep_hidden();
                }
                step.embed(&w.base.embed)?;
                if let Some(f) = &w.feature {
                    step.add_features(f, features)?;
                }
                glide_layers(&mut step, &w.base, &w.cross)?;
                let hidden = keep_hidden.then(|| step.hidden_per_seq());
                (step.logits_per_seq()?, hidden)
            }
            GlideDevice::Cuda(m) => {
                let rows = self.vocab.len();
                let glide = GlideInput {
                    cross: &cross,
                    features,
                };
                let wanted = Wanted {
                    mode: OutputMode::Logits,
                    sample: &[],
                    keep_hidden,
                };
                match m.forward(kv, batch, wanted, rows, Some(glide))? {
                    (ForwardOut::Logits(l), hidden) => (l, hidden),
                    _ => unreachable!("logits asked for"),
                }
            }
        };
        for s in batch.iter_mut() {
            kv.commit(s.table, s.tokens.len());
        }
        Ok((logits, hidden))
    }
}
