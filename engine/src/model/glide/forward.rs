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
    CrossInput, ForwardOps, ForwardOut, GlideInput, HiddenRows, OutputMode, SeqInput, Top, Wanted,
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

/// What a drafting forward hands back for each sequence's wanted rows.
#[derive(Debug)]
pub enum DraftRows {
    /// Logits over the draft vocabulary, on the host, for the proposer to choose from.
    Logits(Vec<Tensor>),
    /// The greedy choice made on the device: each row's top draft token (as a target id) and
    /// its probability over the draft vocabulary. Only this crosses to the host.
    Top(Vec<Vec<Top>>),
}

impl GlideModel {
    /// Whether [`GlideModel::forward_drafting`] can pick greedy drafts on the device (on a GPU),
    /// so that a row's logits need not cross to the host.
    pub fn picks_on_device(&self) -> bool {
        matches!(self.weights, GlideDevice::Cuda(_))
    }

    /// Whether the proposer drafts through [`GlideModel::draft_chain`]: with
    /// `SPECD_GLIDE_CHAIN=1`, on a GPU, for a drafter whose drafted rows take no feature of their
    /// own (not [`GlideFeature::LastHiddenChain`]). Off by default: on the real pair it drafted
    /// slower than one forward and one trip to the host a drafted row (session 28, an H100).
    pub fn chains_on_device(&self) -> bool {
        static CHAIN: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        let on = *CHAIN.get_or_init(|| std::env::var("SPECD_GLIDE_CHAIN").as_deref() == Ok("1"));
        on && self.picks_on_device() && !self.config.feature.chains()
    }

    /// A round of greedy drafts chained on the device ([`GlideModel::chains_on_device`]):
    /// sequence `k` of `batch` is fed `counts[k]` rows, one per forward (`counts` must not
    /// increase along the batch), its one token (its latest draft) first, then each time the
    /// token the forward before picked for it, with no trip to the host in between. Returns
    /// each sequence's picks (target ids) and their probabilities, which are those of greedy
    /// [`GlideModel::forward_drafting`] calls fed one after another; every row fed stays in
    /// the drafter's cache (verification's rollback cuts the ones not kept).
    pub fn draft_chain(
        &self,
        kv: &mut KvPool,
        batch: &mut [SeqInput<'_>],
        target: TargetKv<'_>,
        counts: &[usize],
    ) -> Result<Vec<Vec<Top>>> {
        let GlideDevice::Cuda(m) = &self.weights else {
            return Err(Error::InvalidRequest(
                "a GLIDE drafter chains its drafts on a GPU only".into(),
            ));
        };
        if self.config.feature.chains() {
            return Err(Error::InvalidRequest(
                "a drafter that feeds its own rows forward drafts one row at a time".into(),
            ));
        }
        self.check_inputs(kv, batch, target, &[])?;
        let cross = self.cross_input(target);
        let glide = GlideInput {
            cross: &cross,
            features: &[],
        };
        let picks = m.draft_chain(kv, batch, counts, self.vocab.len(), glide)?;
        Ok(self.picks_as_ids(picks))
    }

    /// Picks of the head's rows (each sequence's) as the target ids they stand for.
    fn picks_as_ids(&self, picks: Vec<Vec<Top>>) -> Vec<Vec<Top>> {
        picks
            .into_iter()
            .map(|rows| {
                rows.into_iter()
                    .map(|t| Top {
                        token: self.vocab.to_target(t.token),
                        prob: t.prob,
                    })
                    .collect()
            })
            .collect()
    }

    /// What the cross-attention reads of `target`, with the target's shapes.
    fn cross_input<'a>(&'a self, target: TargetKv<'a>) -> CrossInput<'a> {
        let t = &self.target;
        CrossInput {
            kv: target.kv,
            tables: target.tables.to_vec(),
            layer: self.config.target_layer,
            n_heads: t.num_heads,
            n_kv_heads: t.num_kv_heads,
            head_dim: t.head_dim,
            inv_freq: &self.target_inv_freq,
            interleaved: t.rope_layout == RopeLayout::Interleaved,
        }
    }

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

    /// [`GlideModel::forward_with_features`] for a round of drafts: with `greedy` on a drafter
    /// that [picks on the device](GlideModel::picks_on_device), each wanted row's top token
    /// and its probability come back instead of its logits (ties go to the lower draft row
    /// there, to the lower target id on the host). When the drafter chains its own hidden
    /// state ([`GlideFeature::LastHiddenChain`]), the final normed row (what the head read) of
    /// each wanted row also comes back, by sequence: the feature of the row after it in a round
    /// of drafts (on a GPU as its head read them, bf16).
    pub fn forward_drafting(
        &self,
        kv: &mut KvPool,
        batch: &mut [SeqInput<'_>],
        target: TargetKv<'_>,
        features: &[Option<FeatureRow<'_>>],
        greedy: bool,
    ) -> Result<(DraftRows, Option<HiddenRows>)> {
        let mode = if greedy && self.picks_on_device() {
            OutputMode::Top
        } else {
            OutputMode::Logits
        };
        let (out, hidden) = self.run(
            kv,
            batch,
            target,
            features,
            self.config.feature.chains(),
            mode,
        )?;
        let rows = match out {
            ForwardOut::Logits(l) => DraftRows::Logits(l),
            ForwardOut::Top(rows) => DraftRows::Top(self.picks_as_ids(rows)),
            _ => unreachable!("logits or top rows asked for"),
        };
        Ok((rows, hidden))
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
        match self
            .run(kv, batch, target, features, false, OutputMode::Logits)?
            .0
        {
            ForwardOut::Logits(l) => Ok(l),
            _ => unreachable!("logits asked for"),
        }
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
        mode: OutputMode,
    ) -> Result<(ForwardOut, Option<HiddenRows>)> {
        self.check_inputs(kv, batch, target, features)?;
        for s in batch.iter_mut() {
            kv.reserve(s.table, s.tokens.len())?;
        }
        let cross = self.cross_input(target);
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
                debug_assert_eq!(mode, OutputMode::Logits, "the host picks its own drafts");
                (ForwardOut::Logits(step.logits_per_seq()?), hidden)
            }
            GlideDevice::Cuda(m) => {
                let rows = self.vocab.len();
                let glide = GlideInput {
                    cross: &cross,
                    features,
                };
                let wanted = Wanted {
                    mode,
                    sample: &[],
                    keep_hidden,
                };
                m.forward(kv, batch, wanted, rows, Some(glide))?
            }
        };
        for s in batch.iter_mut() {
            kv.commit(s.table, s.tokens.len());
        }
        Ok((logits, hidden))
    }
}
