//! A forward's batch: what each sequence brings (its tokens and block table, its sampling
//! input, what a GLIDE drafter reads of its target) and what the forward hands back (logits,
//! their argmax, verdicts, hidden rows).

use candle_core::Tensor;

#[cfg(doc)]
use super::Model;
use crate::kv::{BlockTable, KvPool};
use crate::model::glide::FeatureRow;

/// Each sequence's final normed hidden rows (after the target's last norm), one per row of
/// logits: `[sequence][row][hidden]`.
pub type HiddenRows = Vec<Vec<Vec<f32>>>;

/// Which logits a sequence wants back from a forward.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Logits {
    /// One row per new token (verification of drafts).
    All,
    /// Only the row of the last new token (prefill, plain decoding).
    Last,
    /// No logits: the tokens only fill the cache (prefill of a prompt's head).
    None,
}

impl Logits {
    /// Rows of logits wanted from `n` new tokens.
    pub fn rows(self, n: usize) -> usize {
        match self {
            Logits::All => n,
            Logits::Last => 1,
            Logits::None => 0,
        }
    }
}

/// One sequence's part of a batched forward.
#[derive(Debug)]
pub struct SeqInput<'a> {
    /// The sequence's blocks in the pool the forward runs on.
    pub table: &'a mut BlockTable,
    pub tokens: &'a [u32],
    pub logits: Logits,
}

/// What rejection sampling in the forward needs of one sequence ([`Model::verify_sampled`]).
#[derive(Debug, Clone)]
pub struct SampleInput<'a> {
    /// The inverse of the sequence's temperature.
    pub inv_temp: f32,
    /// The drafter's distribution of each draft (rows of the target's vocabulary; missing
    /// entries count as zero), or `None` when every draft is one-hot (n-gram).
    pub q: Option<&'a [Vec<f32>]>,
    /// Uniforms in [0, 1): one per draft (keep it or not), then one to draw the token.
    pub u: Vec<f32>,
}

/// The argmax of one row of logits and its softmax probability.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Top {
    pub token: u32,
    pub prob: f32,
}

/// What a forward hands back, per sequence.
#[derive(Debug)]
pub(crate) enum ForwardOut {
    /// The wanted rows of logits, on the host.
    Logits(Vec<Tensor>),
    /// The argmax of each wanted row.
    Top(Vec<Vec<Top>>),
    /// The argmax token of each wanted row, without its probability.
    Tokens(Vec<Vec<u32>>),
    /// Acceptance of each sequence's tokens after the first as drafts: (kept, next).
    Verdicts(Vec<(usize, u32)>),
}

/// How a forward's logits are turned into its output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum OutputMode {
    Logits,
    Top,
    /// [`OutputMode::Top`]'s tokens alone: on the CPU no softmax sum a row, on a GPU one
    /// number a row less crossing to the host.
    Argmax,
    GreedyVerdict,
    /// Rejection sampling with each sequence's temperature and [`SampleInput`].
    SampledVerdict,
}

/// What a GLIDE drafter's cross-attention reads of the target: its pool, each sequence's
/// block table there (whose length is the number of verified positions), the layer, and the
/// target's attention shape and rotary frequencies (the queries are rotated as the target's).
#[derive(Debug)]
pub(crate) struct CrossInput<'a> {
    pub kv: &'a KvPool,
    pub tables: Vec<&'a BlockTable>,
    pub layer: usize,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    pub inv_freq: &'a [f64],
    pub interleaved: bool,
}

impl<'a> CrossInput<'a> {
    /// The same input for the first `n` sequences only.
    #[cfg_attr(not(feature = "cuda"), allow(dead_code))]
    pub fn first(&self, n: usize) -> CrossInput<'a> {
        CrossInput {
            tables: self.tables[..n].to_vec(),
            ..*self
        }
    }
}

/// What a forward hands back: `mode`'s output (`sample` for [`OutputMode::SampledVerdict`]),
/// and with `keep_hidden` each sequence's final normed rows, one per row of logits.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Wanted<'s, 'a> {
    pub mode: OutputMode,
    pub sample: &'s [SampleInput<'a>],
    pub keep_hidden: bool,
}

/// `rows` (`[logit rows, hidden]`, the batch's wanted rows in order) split by sequence.
pub(crate) fn hidden_per_seq(rows: &[f32], hidden: usize, batch: &[SeqInput<'_>]) -> HiddenRows {
    let mut rows = rows.chunks_exact(hidden).map(<[f32]>::to_vec);
    batch
        .iter()
        .map(|s| rows.by_ref().take(s.logits.rows(s.tokens.len())).collect())
        .collect()
}

/// What a GLIDE drafter's forward on a GPU reads of its target: the cache its cross-attention
/// reads, and the target's hidden rows its feature takes ([`FeatureRow`], by sequence; fewer
/// than the sequences: the rest take none).
#[derive(Debug, Clone, Copy)]
#[cfg_attr(not(feature = "cuda"), allow(dead_code))]
pub(crate) struct GlideInput<'a> {
    pub cross: &'a CrossInput<'a>,
    pub features: &'a [Option<FeatureRow<'a>>],
}
