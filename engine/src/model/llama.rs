//! The Llama-family forward (Llama 2/3, Mistral, Qwen2): GQA, RoPE, RMSNorm, SwiGLU, optional
//! QKV bias, tied or untied head — one forward for every device.
//!
//! The forward is ragged: each sequence of a batch appends its own number of new tokens to its
//! own cache. All new tokens of the batch go through the matrix products together (one product
//! of `T = Σ n_i` rows per weight); attention reads each sequence's own cache. The layer loop is
//! written once, in [`run_layers`], over the operations of [`ForwardOps`]; the CPU
//! (`cpu_forward.rs`) and CUDA (`cuda/`) backends implement those operations on their own
//! buffers, which is the whole device seam.

use std::sync::Arc;

use candle_core::Tensor;

use super::config::ModelConfig;
use super::cpu_forward::{CpuWeights, Projection};
use super::cuda::CudaModel;
use super::device::{Device, GpuStats};
use super::glide::FeatureRow;
use super::host_weights::load_host;
use super::weights::{WeightStorage, Weights};
use crate::error::{Error, Result};
use crate::kv::{BlockTable, KvDtype, KvPool, SequenceCache};

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

/// The weights of a model on its device.
#[derive(Debug, Clone)]
enum DeviceWeights {
    Cpu(Arc<CpuWeights>),
    Cuda(Arc<CudaModel>),
}

/// A loaded Llama-family model.
#[derive(Debug, Clone)]
pub struct Model {
    config: ModelConfig,
    weights: DeviceWeights,
    /// Rows of the output head in use (a drafter may keep only the first ones).
    head_rows: usize,
    inv_freq: Vec<f64>,
    /// Element type of the KV pools this model makes on the CPU.
    kv_dtype: KvDtype,
    /// How its file's quantized matrices are held (a draft model follows its target's).
    storage: WeightStorage,
}

impl Model {
    /// Builds the model on the CPU from weights whose shapes must match `config`.
    pub fn load(config: ModelConfig, weights: &mut Weights) -> Result<Self> {
        Self::load_on(config, weights, Device::Cpu)
    }

    /// Builds the model on `device` from weights whose shapes must match `config`. On a GPU
    /// the weights are uploaded (GGUF blocks as they are, dense weights as bf16).
    pub fn load_on(config: ModelConfig, weights: &mut Weights, device: Device) -> Result<Self> {
        let storage = weights.storage();
        let (host, tied) = load_host(&config, weights, device)?;
        let weights = match device {
            Device::Cpu => DeviceWeights::Cpu(Arc::new(host.into_cpu()?)),
            Device::Cuda(ordinal) => {
                DeviceWeights::Cuda(Arc::new(CudaModel::load(&config, host, tied, ordinal)?))
            }
        };
        let inv_freq = config.rope_inv_freq();
        Ok(Self {
            head_rows: config.vocab_size,
            config,
            weights,
            inv_freq,
            kv_dtype: KvDtype::F32,
            storage,
        })
    }

    /// Whether its quantized matrices stayed quantized or were dequantized at load.
    pub fn weight_storage(&self) -> WeightStorage {
        self.storage
    }

    /// The element type of this model's KV pools.
    pub fn kv_dtype(&self) -> KvDtype {
        match self.device() {
            Device::Cpu => self.kv_dtype,
            Device::Cuda(_) => KvDtype::Bf16,
        }
    }

    /// Makes this model's KV pools store `dtype` (`--kv-dtype`). A GPU's pools are bf16 only.
    pub fn with_kv_dtype(mut self, dtype: KvDtype) -> Result<Self> {
        if dtype == KvDtype::F32 && self.device() != Device::Cpu {
            return Err(Error::Device(
                "--kv-dtype f32 is for the CPU: a GPU's KV cache is bf16".into(),
            ));
        }
        self.kv_dtype = dtype;
        Ok(self)
    }

    /// The device the model runs on.
    pub fn device(&self) -> Device {
        match &self.weights {
            DeviceWeights::Cpu(_) => Device::Cpu,
            DeviceWeights::Cuda(m) => Device::Cuda(m.ordinal()),
        }
    }

    /// Runs a few forwards on a scratch cache. On the CPU candle packs quantized weights into
    /// the layouts of its multi-row kernels on first use; on a GPU the first steps capture
    /// graphs. Doing it here keeps that cost out of the first request.
    pub fn warm_up(&self) -> Result<()> {
        let mut cache = self.new_cache();
        self.forward_cache(&mut cache, &[0; 4], Logits::Last)?;
        self.forward_cache(&mut cache, &[0], Logits::Last)?;
        Ok(())
    }

    /// Keeps only the first `rows` rows of the output head: logits then cover token ids
    /// `0..rows` only. For drafters: byte-level BPE vocabularies number tokens roughly by merge
    /// order, so the first ids are the frequent ones, and a head of 32k of Qwen's 152k rows
    /// costs a fifth of the full one. Speculation stays lossless (the drafter's distribution is
    /// simply zero on the other ids); only acceptance can change.
    pub fn restrict_head(&mut self, rows: usize) -> Result<()> {
        let vocab = self.config.vocab_size;
        if rows == 0 || rows > vocab {
            return Err(Error::InvalidRequest(format!(
                "the draft head must keep between 1 and {vocab} rows, got {rows}"
            )));
        }
        if let DeviceWeights::Cpu(w) = &mut self.weights {
            let mut cut = (**w).clone();
            cut.head = cut.head.first_rows(rows)?;
            *w = Arc::new(cut);
        }
        self.head_rows = rows;
        Ok(())
    }

    /// The token embedding on the CPU (a GLIDE drafter shares it); `None` on a GPU.
    pub(crate) fn cpu_embedding(&self) -> Option<Projection> {
        match &self.weights {
            DeviceWeights::Cpu(w) => Some(w.embed.clone()),
            DeviceWeights::Cuda(_) => None,
        }
    }

    /// The output head on the CPU (a GLIDE drafter may take rows of it); `None` on a GPU.
    pub(crate) fn cpu_head(&self) -> Option<&Projection> {
        match &self.weights {
            DeviceWeights::Cpu(w) => Some(&w.head),
            DeviceWeights::Cuda(_) => None,
        }
    }

    /// The model on a GPU (a GLIDE drafter shares its stream, embedding and head); `None` on
    /// the CPU.
    pub(crate) fn cuda_model(&self) -> Option<&CudaModel> {
        match &self.weights {
            DeviceWeights::Cpu(_) => None,
            DeviceWeights::Cuda(m) => Some(m),
        }
    }

    /// Whether the output head is stored quantized (a GGUF target's): a GLIDE drafter then
    /// quantizes its own matrices.
    pub(crate) fn head_is_quantized(&self) -> bool {
        match &self.weights {
            DeviceWeights::Cpu(w) => w.head.is_quantized(),
            DeviceWeights::Cuda(m) => m.head_is_quantized(),
        }
    }

    /// Number of logits a forward returns per row (the vocabulary, or a restricted head).
    pub fn head_rows(&self) -> usize {
        self.head_rows
    }

    /// The model's configuration.
    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    /// A new, empty cache with a pool of its own for one sequence of this model (tools and
    /// tests; the engine shares one [`KvPool`] among its sequences).
    pub fn new_cache(&self) -> SequenceCache {
        SequenceCache::with_pool(
            self.new_pool(KvPool::blocks_for(self.config.max_position_embeddings)),
        )
    }

    /// A pool of `max_blocks` blocks for this model, on its device (block memory is allocated
    /// as blocks are first used).
    pub fn new_pool(&self, max_blocks: usize) -> KvPool {
        match &self.weights {
            DeviceWeights::Cpu(_) => KvPool::for_model(&self.config, max_blocks, self.kv_dtype),
            DeviceWeights::Cuda(m) => {
                KvPool::on_gpu(m.kv_storage(max_blocks), &self.config, max_blocks)
            }
        }
    }

    /// Forward counters on a GPU (`None` on the CPU).
    pub fn gpu_stats(&self) -> Option<GpuStats> {
        match &self.weights {
            DeviceWeights::Cpu(_) => None,
            DeviceWeights::Cuda(m) => Some(m.stats()),
        }
    }

    /// On a GPU, the device-to-device copy bandwidth in bytes per second (read plus written),
    /// the ceiling of a memory-bound decode step; `None` on the CPU.
    pub fn copy_bandwidth(&self) -> Result<Option<f64>> {
        match &self.weights {
            DeviceWeights::Cpu(_) => Ok(None),
            DeviceWeights::Cuda(m) => m.copy_bandwidth().map(Some),
        }
    }

    /// On a GPU, whether forwards of up to a few hundred rows are captured into CUDA graphs
    /// and replayed (on by default); no effect on the CPU.
    pub fn set_cuda_graphs(&self, on: bool) {
        if let DeviceWeights::Cuda(m) = &self.weights {
            m.set_graphs(on);
        }
    }

    /// On a GPU, switches the row-product kernel (`8x8`, `16x8`, `32x8`, `8x8u16`, ...:
    /// tensor-core tile shapes; `simple`: CUDA cores); for benchmarks. No effect on the CPU.
    pub fn set_cuda_matmul(&self, name: &str) -> Result<()> {
        match &self.weights {
            DeviceWeights::Cpu(_) => Ok(()),
            DeviceWeights::Cuda(m) => m.set_matmul(name),
        }
    }

    /// The names [`Model::set_cuda_matmul`] takes (empty without CUDA).
    pub fn cuda_matmul_kernels() -> Vec<String> {
        super::cuda::matmul_kernels()
    }

    /// Bytes of one KV block of this model on its device (f32 on the CPU, bf16 on a GPU).
    pub fn kv_block_bytes(&self) -> usize {
        self.new_pool(1).block_bytes()
    }

    /// Bytes of device memory free now, for sizing KV pools (`None` on the CPU).
    pub fn device_memory_free(&self) -> Result<Option<usize>> {
        match &self.weights {
            DeviceWeights::Cpu(_) => Ok(None),
            DeviceWeights::Cuda(m) => m.memory_free().map(Some),
        }
    }

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
    /// exactly as the target's softmax at its temperature. `sample[i]` goes with `batch[i]`;
    /// every sequence must want [`Logits::All`].
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
            ForwardOut::Verdicts(v) => Ok(v),
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
                super::cpu_forward::forward(&self.config, &self.inv_freq, w, kv, batch, wanted)?
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
/// input per sequence with one uniform per token and one draft distribution per draft.
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
            if sample.len() != batch.len() {
                return Err(Error::InvalidRequest(format!(
                    "{} sampling inputs for {} sequences",
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
    }
}
