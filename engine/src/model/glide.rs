//! A GLIDE drafter (Du et al., "GLIDE with a CAPE", ICML 2024): per layer, self-attention over
//! its own cache, then cross-attention whose queries (rotated as the target's) read the keys
//! and values one target layer cached for the verified positions, then an MLP, with RMSNorms;
//! tokens are embedded with the target's own table, and the head scores a reduced vocabulary
//! ([`DraftVocab`]).
//!
//! The forward is the Llama one ([`self_attention_block`], [`mlp_block`]) with the
//! cross-attention block between them, over the same [`ForwardOps`] seam. The drafter runs on
//! its target's device: on the CPU through the CPU backend ([`cross_attention`] below), on a
//! GPU as a model of the CUDA backend on the target's stream, whose cross-attention reads the
//! target's pool through the paged-attention kernel.
//!
//! Which target positions a row sees: a row at position `p` of a sequence whose target cache
//! holds `V` verified positions sees target positions `0 .. min(p, V)`, the verified ones
//! before it. This is the paper's block-wise mask, which training uses: the rows drafted after
//! a verification form a block that sees only the positions verified before the block began,
//! and a row that catches up on a committed token (the prompt, or the last of a fully accepted
//! draft) is a block of its own. The row at position 0 sees nothing.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use candle_core::quantized::QMatMul;
use candle_core::Tensor;
use specd_kernels::cpu as kern;

use super::config::ModelConfig;
use super::cpu_forward::{positions, CpuStep, Projection};
use super::cuda::CudaModel;
use super::device::Device;
use super::draft_vocab::DraftVocab;
use super::glide_config::{GlideConfig, GlideFeature};
use super::host_weights::{load_layer, HostLayer, HostMatrix};
use super::linear::CandlePool;
use super::llama::{
    mlp_block, self_attention_block, Act, CrossInput, ForwardOps, ForwardOut, GlideInput,
    HiddenRows, LlamaWeights, OutputMode, SeqInput, Wanted,
};
use super::weights::{q8_0_bytes, Param, Weights};
use super::{Model, RopeLayout};
use crate::error::{Error, Result};
use crate::kv::pool::PoolQuery;
use crate::kv::{BlockTable, KvDtype, KvPool};

/// A layer's cross-attention weights.
#[derive(Debug, Clone)]
pub(crate) struct CrossWeights<M, V> {
    pub norm: V,
    /// hidden → target heads × target head_dim.
    pub q: M,
    /// target heads × target head_dim → hidden.
    pub o: M,
}

/// The weights of a drafter's feature ([`GlideFeature::LastHidden`]): the row that takes it
/// adds `proj · down · rms_norm(h, norm)` (no `down` at full rank) to its embedding; a chained
/// row ([`FeatureSource::Drafter`]) normalizes with `chain_norm` where the file has it.
#[derive(Debug, Clone)]
pub(crate) struct FeatureWeights<M, V> {
    pub norm: V,
    pub chain_norm: Option<V>,
    pub down: Option<M>,
    pub proj: M,
}

impl<M, V> FeatureWeights<M, V> {
    /// The norm weights a feature row of `source` is normalized with.
    pub fn norm_for(&self, source: FeatureSource) -> &V {
        match (source, &self.chain_norm) {
            (FeatureSource::Drafter, Some(chain)) => chain,
            _ => &self.norm,
        }
    }
}

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

/// A GLIDE drafter's weights: the Llama layers (embedding shared with the target), each with
/// its cross-attention, and its feature's if it has one.
#[derive(Debug, Clone)]
pub(crate) struct GlideWeights<M, V> {
    pub base: LlamaWeights<M, V>,
    pub cross: Vec<CrossWeights<M, V>>,
    pub feature: Option<FeatureWeights<M, V>>,
}

/// A GLIDE drafter's weights as read from its file, before they go to the target's device
/// (the embedding is the target's; the head, where the file has none, the target's rows).
#[derive(Debug)]
pub(crate) struct GlideHost {
    pub layers: Vec<HostLayer>,
    pub cross: Vec<CrossWeights<HostMatrix, Vec<f32>>>,
    pub norm: Vec<f32>,
    /// The file's own head over the reduced vocabulary, if it has one.
    pub head: Option<HostMatrix>,
    pub feature: Option<FeatureWeights<HostMatrix, Vec<f32>>>,
}

impl GlideHost {
    /// The weights on the CPU, sharing `target`'s embedding (and head rows for `ids`).
    fn into_cpu(self, target: &Model, ids: &[u32]) -> Result<GlideWeights<Projection, Vec<f32>>> {
        let (Some(embed), Some(target_head)) = (target.cpu_embedding(), target.cpu_head()) else {
            return Err(Error::Device("the target is not on the CPU".into()));
        };
        let head = match self.head {
            Some(h) => h.into_cpu()?,
            None => target_head.select_rows(ids)?,
        };
        let cross = self
            .cross
            .into_iter()
            .map(|c| {
                Ok(CrossWeights {
                    norm: c.norm,
                    q: c.q.into_cpu()?,
                    o: c.o.into_cpu()?,
                })
            })
            .collect::<Result<_>>()?;
        let feature = match self.feature {
            None => None,
            Some(f) => Some(FeatureWeights {
                norm: f.norm,
                chain_norm: f.chain_norm,
                down: f.down.map(HostMatrix::into_cpu).transpose()?,
                proj: f.proj.into_cpu()?,
            }),
        };
        Ok(GlideWeights {
            feature,
            base: LlamaWeights {
                embed,
                layers: self
                    .layers
                    .into_iter()
                    .map(HostLayer::into_cpu)
                    .collect::<Result<_>>()?,
                norm: self.norm,
                head,
            },
            cross,
        })
    }
}

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
/// positions before its own (module docs).
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

/// The safetensors metadata key holding a GLIDE file's [`GlideConfig`] (JSON).
pub const CONFIG_KEY: &str = "glide_config";
/// The tensor holding a GLIDE file's id map: the target id of each head row (i64 or u32).
pub const VOCAB_TENSOR: &str = "draft_vocab.ids";

/// Writes a GLIDE file: one safetensors file with `config` in its metadata, `vocab`'s id map,
/// and the weights `tensors` (the names [`GlideModel::from_weights`] reads).
pub fn save_glide(
    path: &Path,
    config: &GlideConfig,
    vocab: &DraftVocab,
    tensors: &HashMap<String, Tensor>,
) -> Result<()> {
    let ids: Vec<i64> = vocab.ids().iter().map(|&i| i64::from(i)).collect();
    let ids = Tensor::from_vec(ids, vocab.len(), &candle_core::Device::Cpu)?;
    let mut all: Vec<(&str, &Tensor)> = tensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
    all.push((VOCAB_TENSOR, &ids));
    let json = serde_json::to_string(config).expect("a config serializes");
    let metadata = HashMap::from([(CONFIG_KEY.to_string(), json)]);
    safetensors::serialize_to_file(all, Some(metadata), path).map_err(|e| Error::file(path, e))
}

/// Rewrites the GLIDE file `input` as `output` with every matrix in GGUF's Q8_0 blocks (a u8
/// tensor of `[rows, cols / 32 · 34]` bytes, which [`GlideModel::load`] reads back quantized;
/// about 8.5 bits a weight against bf16's 16), the id map, norms and metadata as they are.
/// For a quantized target specd serves a drafter's matrices in Q8_0 anyway, quantized at load
/// by the same function, so the rewritten file drafts bit for bit as the original there.
/// Returns the number of matrices quantized (none for a file already so).
pub fn quantize_glide(input: &Path, output: &Path) -> Result<usize> {
    let bytes = std::fs::read(input).map_err(|e| Error::file(input, e))?;
    let (_, meta) =
        safetensors::SafeTensors::read_metadata(&bytes).map_err(|e| Error::file(input, e))?;
    let metadata = meta.metadata().clone().unwrap_or_default();
    if !metadata.contains_key(CONFIG_KEY) {
        return Err(Error::file(
            input,
            format!("no `{CONFIG_KEY}` in its metadata: not a GLIDE drafter file"),
        ));
    }
    let mut tensors = candle_core::safetensors::load_buffer(&bytes, &candle_core::Device::Cpu)?;
    let mut quantized = 0;
    for (name, t) in tensors.iter_mut() {
        if name != VOCAB_TENSOR {
            if let Some(q) = q8_0_bytes(t)? {
                *t = q;
                quantized += 1;
            }
        }
    }
    let all: Vec<(&str, &Tensor)> = tensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
    safetensors::serialize_to_file(all, Some(metadata), output)
        .map_err(|e| Error::file(output, e))?;
    Ok(quantized)
}

/// Tensor names of a GLIDE file beyond the Llama ones (Hugging Face naming).
pub fn cross_tensor_names(layer: usize) -> [String; 3] {
    [
        format!("model.layers.{layer}.cross_attn_layernorm.weight"),
        format!("model.layers.{layer}.cross_attn.q_proj.weight"),
        format!("model.layers.{layer}.cross_attn.o_proj.weight"),
    ]
}

/// Tensor names of a GLIDE file's feature ([`GlideFeature::LastHidden`]): its norm, its
/// down-projection (low rank only) and its projection.
pub fn feature_tensor_names() -> [String; 3] {
    [
        "model.feature_norm.weight".into(),
        "model.feature_down.weight".into(),
        "model.feature_proj.weight".into(),
    ]
}

/// The tensor of the chained rows' own norm weights (`chain_norm` in a GLIDE file's
/// configuration).
pub const CHAIN_NORM_TENSOR: &str = "model.chain_norm.weight";

/// A GLIDE drafter's weights on its target's device.
#[derive(Debug, Clone)]
enum GlideDevice {
    Cpu(Arc<GlideWeights<Projection, Vec<f32>>>),
    Cuda(Arc<CudaModel>),
}

/// A GLIDE drafter for one target model.
#[derive(Debug, Clone)]
pub struct GlideModel {
    config: GlideConfig,
    /// The drafter's own forward shapes: the target's, with the drafter's layers, heads and
    /// MLP width (the embedding is the target's, so the vocabulary and hidden size are too).
    base: ModelConfig,
    weights: GlideDevice,
    vocab: DraftVocab,
    inv_freq: Vec<f64>,
    target: ModelConfig,
    target_inv_freq: Vec<f64>,
}

impl GlideModel {
    /// Loads a GLIDE file ([`save_glide`]'s format) for `target`, refusing one that is not a
    /// GLIDE file, whose configuration or id map does not parse, or that does not fit the
    /// target, with the file and the problem named.
    pub fn load(path: &Path, target: &Model) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|e| Error::file(path, e))?;
        let (_, meta) =
            safetensors::SafeTensors::read_metadata(&bytes).map_err(|e| Error::file(path, e))?;
        let json = meta
            .metadata()
            .as_ref()
            .and_then(|m| m.get(CONFIG_KEY))
            .ok_or_else(|| {
                Error::file(
                    path,
                    format!("no `{CONFIG_KEY}` in its metadata: not a GLIDE drafter file"),
                )
            })?;
        let config: GlideConfig = serde_json::from_str(json)
            .map_err(|e| Error::file(path, format!("its `{CONFIG_KEY}`: {e}")))?;
        let mut tensors = candle_core::safetensors::load_buffer(&bytes, &candle_core::Device::Cpu)?;
        let ids = tensors
            .remove(VOCAB_TENSOR)
            .ok_or_else(|| Error::file(path, format!("no `{VOCAB_TENSOR}` tensor (the id map)")))?;
        let ids: Vec<i64> = ids.to_dtype(candle_core::DType::I64)?.to_vec1()?;
        let target_vocab = target.config().vocab_size;
        let ids = ids
            .into_iter()
            .map(|i| u32::try_from(i).unwrap_or(u32::MAX))
            .collect();
        let vocab = DraftVocab::new(ids, target_vocab).map_err(|e| Error::IncompatibleDraft {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        Self::from_weights(
            config,
            &mut Weights::from_tensors(tensors),
            vocab,
            target,
            path,
        )
    }

    /// Builds the drafter for `target` on its device from `weights` (Hugging Face names for the
    /// Llama layers, [`cross_tensor_names`] for the cross-attention, and `lm_head.weight` of
    /// `vocab.len()` rows; without it the head is the target's own rows for the drafter's
    /// tokens), refusing a drafter that does not fit the target (named with `path`). For a
    /// quantized target the drafter's dense matrices are quantized to Q8_0; for a dense one
    /// they stay as stored (bf16 on a GPU).
    pub fn from_weights(
        config: GlideConfig,
        weights: &mut Weights,
        vocab: DraftVocab,
        target: &Model,
        path: &Path,
    ) -> Result<Self> {
        let t = target.config();
        config.check_target(t, path)?;
        let incompatible = |message: String| Error::IncompatibleDraft {
            path: path.to_path_buf(),
            message,
        };
        if vocab.len() != config.draft_vocab_size || vocab.target_len() != t.vocab_size {
            return Err(incompatible(format!(
                "its id map has {} of {} tokens; its configuration says {} of {}",
                vocab.len(),
                vocab.target_len(),
                config.draft_vocab_size,
                t.vocab_size
            )));
        }
        let mut base = config.forward_config(t);
        let host = read_host(&config, &mut base, weights, &vocab, target)?;
        let weights = match target.cuda_model() {
            None => GlideDevice::Cpu(Arc::new(host.into_cpu(target, vocab.ids())?)),
            Some(m) => GlideDevice::Cuda(Arc::new(CudaModel::load_glide(
                m,
                &base,
                host,
                vocab.ids(),
                config.target_layer,
            )?)),
        };
        Ok(Self {
            inv_freq: base.rope_inv_freq(),
            target_inv_freq: t.rope_inv_freq(),
            target: t.clone(),
            config,
            base,
            weights,
            vocab,
        })
    }

    /// The device the drafter runs on (its target's).
    pub fn device(&self) -> Device {
        match &self.weights {
            GlideDevice::Cpu(_) => Device::Cpu,
            GlideDevice::Cuda(m) => Device::Cuda(m.ordinal()),
        }
    }

    pub fn config(&self) -> &GlideConfig {
        &self.config
    }

    /// Whether the drafter's layer matrices are stored quantized (they are for a quantized
    /// target: [`GlideModel::from_weights`]).
    pub fn is_quantized(&self) -> bool {
        match &self.weights {
            GlideDevice::Cpu(w) => {
                w.base.layers.iter().all(|l| l.qkv.is_quantized())
                    && w.cross.iter().all(|c| c.q.is_quantized())
            }
            GlideDevice::Cuda(m) => m.layers_quantized(),
        }
    }

    /// The target ids of the head's rows.
    pub fn vocab(&self) -> &DraftVocab {
        &self.vocab
    }

    /// A pool of `max_blocks` blocks for the drafter's own cache, on its device.
    pub fn new_pool(&self, max_blocks: usize) -> KvPool {
        match &self.weights {
            // One layer's own cache: f32 whatever the target's (`--kv-dtype`).
            GlideDevice::Cpu(_) => KvPool::for_model(&self.base, max_blocks, KvDtype::F32),
            GlideDevice::Cuda(m) => {
                KvPool::on_gpu(m.kv_storage(max_blocks), &self.base, max_blocks)
            }
        }
    }

    /// Appends each sequence's tokens to its cache in `kv` (the drafter's pool) and returns
    /// the logits over the reduced vocabulary of the rows each wants. `target_tables[i]` is
    /// sequence `i`'s table in `target_kv`, the target's pool, which the cross-attention reads.
    pub fn forward(
        &self,
        kv: &mut KvPool,
        batch: &mut [SeqInput<'_>],
        target_kv: &KvPool,
        target_tables: &[&BlockTable],
    ) -> Result<Vec<Tensor>> {
        self.forward_with_features(kv, batch, target_kv, target_tables, &[])
    }

    /// [`GlideModel::forward_with_features`], also handing back the final normed row (what
    /// the head read) of each row whose logits are wanted, by sequence, when the drafter
    /// chains its own hidden state ([`GlideFeature::LastHiddenChain`]): the feature of the
    /// row after it in a round of drafts (on a GPU as its head read them, bf16).
    pub fn forward_drafting(
        &self,
        kv: &mut KvPool,
        batch: &mut [SeqInput<'_>],
        target_kv: &KvPool,
        target_tables: &[&BlockTable],
        features: &[Option<FeatureRow<'_>>],
    ) -> Result<(Vec<Tensor>, Option<HiddenRows>)> {
        self.run(
            kv,
            batch,
            target_kv,
            target_tables,
            features,
            self.config.feature.chains(),
        )
    }

    /// [`GlideModel::forward`], where `features[i]` (if given) is the target's hidden state
    /// that sequence `i`'s row at its position takes ([`GlideFeature::LastHidden`]; ignored
    /// when that row is not among its new tokens, or the drafter has no feature). Fewer
    /// entries than sequences: the rest take none.
    pub fn forward_with_features(
        &self,
        kv: &mut KvPool,
        batch: &mut [SeqInput<'_>],
        target_kv: &KvPool,
        target_tables: &[&BlockTable],
        features: &[Option<FeatureRow<'_>>],
    ) -> Result<Vec<Tensor>> {
        Ok(self
            .run(kv, batch, target_kv, target_tables, features, false)?
            .0)
    }

    /// Refuses a forward whose inputs do not fit: one target table a sequence, both KV pools
    /// on the drafter's device, token ids inside the vocabulary, features of the hidden size.
    fn check_inputs(
        &self,
        kv: &KvPool,
        batch: &[SeqInput<'_>],
        target_kv: &KvPool,
        target_tables: &[&BlockTable],
        features: &[Option<FeatureRow<'_>>],
    ) -> Result<()> {
        if target_tables.len() != batch.len() {
            return Err(Error::InvalidRequest(format!(
                "{} target tables for {} sequences",
                target_tables.len(),
                batch.len()
            )));
        }
        let device = self.device();
        for (what, pool) in [("its own", kv), ("the target's", target_kv)] {
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
        target_kv: &KvPool,
        target_tables: &[&BlockTable],
        features: &[Option<FeatureRow<'_>>],
        keep_hidden: bool,
    ) -> Result<(Vec<Tensor>, Option<HiddenRows>)> {
        self.check_inputs(kv, batch, target_kv, target_tables, features)?;
        for s in batch.iter_mut() {
            kv.reserve(s.table, s.tokens.len())?;
        }
        let t = &self.target;
        let cross = CrossInput {
            kv: target_kv,
            tables: target_tables.to_vec(),
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

/// Reads a GLIDE drafter's weights of `base`'s shapes (layers, cross-attention, final norm,
/// and its own head if the file has one), quantized to Q8_0 for a quantized `target`: a
/// quantized target is served at its quantization's precision, and the drafter's dense
/// matrices follow it, which cuts the bytes a drafted token reads by four. For a GPU target
/// the layers are padded to the CUDA kernels' shapes ([`HostLayer::padded_for_gpu`]: the same
/// function) and `base` says the padded shapes.
fn read_host(
    config: &GlideConfig,
    base: &mut ModelConfig,
    weights: &mut Weights,
    vocab: &DraftVocab,
    target: &Model,
) -> Result<GlideHost> {
    let t = target.config();
    let h = base.hidden_size;
    let cross_dim = t.num_heads * t.head_dim;
    let quantize = target.head_is_quantized();
    // Dense weights stay in the file's precision for a GPU (bf16 there).
    let keep_dtype = target.device().is_cuda();
    let prepare = |m: HostMatrix| if quantize { m.quantized_q8() } else { Ok(m) };
    let single = |m| HostMatrix {
        parts: vec![m],
        bias: None,
    };
    let mut layers = Vec::with_capacity(config.num_layers);
    let mut cross = Vec::with_capacity(config.num_layers);
    let file_shapes = base.clone();
    for i in 0..config.num_layers {
        let mut layer = load_layer(&file_shapes, weights, i, keep_dtype)?;
        if keep_dtype {
            let mut padded = file_shapes.clone();
            layer = layer.padded_for_gpu(&mut padded)?;
            *base = padded;
        }
        layers.push(if quantize {
            layer.quantized_q8()?
        } else {
            layer
        });
        let [norm, q, o] = cross_tensor_names(i);
        cross.push(CrossWeights {
            norm: weights.tensor_named(&norm, &[h])?.to_vec1()?,
            q: prepare(single(weights.matrix_named(&q, cross_dim, h)?))?,
            o: prepare(single(weights.matrix_named(&o, h, cross_dim)?))?,
        });
    }
    let head = if weights.contains(Param::LmHead) {
        let m = weights.matrix_as(Param::LmHead, vocab.len(), h, keep_dtype)?;
        Some(prepare(single(m))?)
    } else {
        None
    };
    let feature = match config.feature {
        GlideFeature::None => None,
        GlideFeature::LastHidden | GlideFeature::LastHiddenChain => {
            let [norm, down, proj] = feature_tensor_names();
            let rank = config.feature_rank;
            let mut down = match rank {
                0 => None,
                _ => Some(single(weights.matrix_named(&down, rank, h)?)),
            };
            let inner = if rank == 0 { h } else { rank };
            let mut proj = single(weights.matrix_named(&proj, h, inner)?);
            // On a GPU the two products are one: `proj · down` ([h, h]) is stored instead, so
            // the feature takes one product and no conversion between them.
            if let Some(d) = down.take_if(|_| keep_dtype) {
                proj = single(QMatMul::Tensor(composed(&proj, &d)?));
            }
            let chain_norm = match config.chain_norm {
                true => Some(weights.tensor_named(CHAIN_NORM_TENSOR, &[h])?.to_vec1()?),
                false => None,
            };
            Some(FeatureWeights {
                norm: weights.tensor_named(&norm, &[h])?.to_vec1()?,
                chain_norm,
                down: down.map(prepare).transpose()?,
                proj: prepare(proj)?,
            })
        }
    };
    Ok(GlideHost {
        layers,
        cross,
        norm: weights.tensor(Param::FinalNorm, &[h])?.to_vec1()?,
        head,
        feature,
    })
}

/// The dense product `outer · inner` of two single-part matrices (dequantized), as f32.
fn composed(outer: &HostMatrix, inner: &HostMatrix) -> Result<Tensor> {
    let dense = |m: &HostMatrix| match &m.parts[..] {
        [QMatMul::Tensor(t) | QMatMul::TensorF16(t)] => Ok(t.to_dtype(candle_core::DType::F32)?),
        [QMatMul::QTensor(q)] => Ok(q.dequantize(&candle_core::Device::Cpu)?),
        _ => Err(Error::Device(
            "a GLIDE feature's matrices must be single parts to be composed".into(),
        )),
    };
    Ok(dense(outer)?.matmul(&dense(inner)?)?)
}
