//! The drafter's layer math: its layer stack over the [`ForwardOps`] seam, which both backends
//! run, and the CPU backend's cross-attention over the target's cache.

use specd_kernels::cpu as kern;

use super::CrossWeights;
use crate::error::Result;
use crate::kv::pool::PoolQuery;
use crate::model::cpu_forward::positions;
use crate::model::linear::CandlePool;
use crate::model::llama::{
    mlp_block, self_attention_block, Act, CrossInput, ForwardOps, LlamaWeights, SeqInput,
};

/// The drafter's forward over `ops` after the embedding (and the feature, for rows that take
/// one): the Llama layers of `base`, each with its `cross`-attention, then the head.
pub(crate) fn glide_layers<O: ForwardOps>(
    ops: &mut O,
    base: &LlamaWeights<O::Matrix, O::Vector>,
    cross: &[CrossWeights<O::Matrix, O::Vector>],
) -> Result<()> {
    for (li, (layer, cross)) in base.layers.iter().zip(cross).enumerate() {
        self_attention_block(ops, layer, li)?;
        ops.add_rms_norm(true, &cross.norm)?;
        ops.linear(&cross.q, Act::Normed, Act::CrossQ)?;
        ops.cross_attention()?;
        ops.linear(&cross.o, Act::Attn, Act::Delta)?;
        mlp_block(ops, layer)?;
    }
    ops.head(&base.norm, &base.head)
}

/// The cross-attention of `q` (`[rows, heads · head_dim]` of the batch's rows, in order) on the
/// CPU: queries rotated at their rows' positions, each row over its sequence's verified target
/// positions before its own ([module docs](super)).
pub(crate) fn cross_attention(
    cross: &CrossInput<'_>,
    batch: &[SeqInput<'_>],
    q: &[f32],
) -> Vec<f32> {
    let q_dim = cross.n_heads * cross.head_dim;
    let mut q = q.to_vec();
    let rope = kern::rope_tables(&positions(batch), cross.inv_freq);
    kern::apply_rope(&mut q, q_dim, 0, cross.n_heads, &rope, cross.interleaved);
    let shape = kern::AttentionShape {
        n_heads: cross.n_heads,
        n_kv_heads: cross.n_kv_heads,
        head_dim: cross.head_dim,
        sliding_window: None,
    };
    let mut out = vec![0f32; q.len()];
    // Each row is a query of its own over the target positions it may see (verified ones, and
    // none at or after its own position); rows that see none keep zeros.
    let mut queries = Vec::with_capacity(out.len() / q_dim);
    let mut rows = q.chunks_exact(q_dim).zip(out.chunks_exact_mut(q_dim));
    for (s, table) in batch.iter().zip(&cross.tables) {
        for p in s.table.len()..s.table.len() + s.tokens.len() {
            let (q, o) = rows.next().expect("one query row per token");
            let seen = p.min(table.len());
            if seen > 0 {
                queries.push(PoolQuery {
                    table,
                    upto: seen,
                    q,
                    q_stride: q_dim,
                    start: seen - 1,
                    out: o,
                });
            }
        }
    }
    cross
        .kv
        .attention(cross.layer, &mut queries, shape, &CandlePool);
    out
}
