//! The device seam: the operations of a forward on one device ([`ForwardOps`], over
//! activation buffers by role), a model's weights in a backend's representation, and the layer
//! loop written once over them.

#[cfg(doc)]
use super::CrossInput;
use crate::error::Result;

/// Activation buffers of a forward, by role (the residual stream itself is the backend's own).
/// Each backend sizes them for the step's rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Act {
    /// RMSNorm of the residual stream, the input of the next product, `[T, hidden]`.
    Normed,
    /// Queries, keys and values, `[T, q + 2 kv]`.
    Qkv,
    /// Attention output, `[T, q]`.
    Attn,
    /// A product's output to add to the residual stream, `[T, hidden]`.
    Delta,
    /// Gate and up projections, `[T, 2 intermediate]`.
    GateUp,
    /// SwiGLU of them, `[T, intermediate]`.
    Gated,
    /// Cross-attention queries of a GLIDE drafter, `[T, target heads · target head_dim]`.
    CrossQ,
}

/// The operations of a forward on one device. A backend holds the step's rows, positions and
/// caches; [`run_layers`] calls these in order.
pub(crate) trait ForwardOps {
    /// A weight matrix (with its bias, if any).
    type Matrix;
    /// A norm's weight vector.
    type Vector;

    /// `Hidden = embedding rows of the step's tokens`.
    fn embed(&mut self, table: &Self::Matrix) -> Result<()>;
    /// `Hidden += Delta` (when `add`), then `Normed = rms_norm(Hidden) · weight`.
    fn add_rms_norm(&mut self, add: bool, weight: &Self::Vector) -> Result<()>;
    /// `out = x · Wᵀ (+ bias)`.
    fn linear(&mut self, m: &Self::Matrix, x: Act, out: Act) -> Result<()>;
    /// Rotates queries and keys of `Qkv` and writes keys and values of `layer` to the cache.
    fn rope_write_kv(&mut self, layer: usize) -> Result<()>;
    /// `Attn` = attention of the step's queries over their sequences' caches at `layer`.
    fn attention(&mut self, layer: usize) -> Result<()>;
    /// `Gated = silu(gate) · up` of `GateUp`.
    fn silu_mul(&mut self) -> Result<()>;
    /// `Attn` = attention of the `CrossQ` queries, rotated at each row's position, over the
    /// keys and values one target layer cached for the row's sequence, verified positions only
    /// (a GLIDE drafter's cross-attention, [`CrossInput`]). A forward without a target to read
    /// refuses.
    fn cross_attention(&mut self) -> Result<()>;
    /// `Hidden += Delta`; the wanted rows through the final norm and the head.
    fn head(&mut self, norm: &Self::Vector, head: &Self::Matrix) -> Result<()>;
}

/// The weights of a Llama-family model in a backend's representation.
#[derive(Debug, Clone)]
pub(crate) struct LlamaWeights<M, V> {
    pub embed: M,
    pub layers: Vec<LayerWeights<M, V>>,
    pub norm: V,
    pub head: M,
}

/// One decoder layer's weights.
#[derive(Debug, Clone)]
pub(crate) struct LayerWeights<M, V> {
    pub attn_norm: V,
    /// Q, K and V stacked, with their biases.
    pub qkv: M,
    pub o: M,
    pub ffn_norm: V,
    /// Gate and up stacked.
    pub gate_up: M,
    pub down: M,
}

/// The forward: embedding, every decoder layer, final norm and head.
pub(crate) fn run_layers<O: ForwardOps>(
    ops: &mut O,
    w: &LlamaWeights<O::Matrix, O::Vector>,
) -> Result<()> {
    ops.embed(&w.embed)?;
    for (li, layer) in w.layers.iter().enumerate() {
        self_attention_block(ops, layer, li)?;
        mlp_block(ops, layer)?;
    }
    ops.head(&w.norm, &w.head)
}

/// A layer's self-attention: norm (after adding the previous layer's output), QKV, RoPE and
/// the cache write, attention, output projection into `Delta`.
pub(crate) fn self_attention_block<O: ForwardOps>(
    ops: &mut O,
    layer: &LayerWeights<O::Matrix, O::Vector>,
    li: usize,
) -> Result<()> {
    ops.add_rms_norm(li > 0, &layer.attn_norm)?;
    ops.linear(&layer.qkv, Act::Normed, Act::Qkv)?;
    ops.rope_write_kv(li)?;
    ops.attention(li)?;
    ops.linear(&layer.o, Act::Attn, Act::Delta)
}

/// A layer's MLP: norm (after adding `Delta`), gate and up, SwiGLU, down into `Delta`.
pub(crate) fn mlp_block<O: ForwardOps>(
    ops: &mut O,
    layer: &LayerWeights<O::Matrix, O::Vector>,
) -> Result<()> {
    ops.add_rms_norm(true, &layer.ffn_norm)?;
    ops.linear(&layer.gate_up, Act::Normed, Act::GateUp)?;
    ops.silu_mul()?;
    ops.linear(&layer.down, Act::Gated, Act::Delta)
}
