//! The Llama-family forward (Llama 2/3, Mistral, Qwen2): GQA, RoPE, RMSNorm, SwiGLU, optional
//! QKV bias, tied or untied head.
//!
//! The forward is ragged: each sequence of a batch appends its own number of new tokens to its
//! own cache. All new tokens of the batch go through the matrix products together (one matmul of
//! `T = Σ n_i` rows per weight); only attention is per sequence.

use candle_core::quantized::{QMatMul, QTensor};
use candle_core::{Device, Tensor, D};
use specd_kernels::cpu as kern;

use super::config::ModelConfig;
use super::linear::{CandlePool, Linear};
use super::weights::{Param, Weights};
use crate::error::{Error, Result};
use crate::kv::{BlockTable, KvPool, SequenceCache};

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

/// One sequence's part of a batched forward.
#[derive(Debug)]
pub struct SeqInput<'a> {
    /// The sequence's blocks in the pool the forward runs on.
    pub table: &'a mut BlockTable,
    pub tokens: &'a [u32],
    pub logits: Logits,
}

/// Several weight matrices applied to the same input, fused into one matrix when their
/// storage allows it (same quantization), so that the input is quantized and read once.
#[derive(Debug, Clone)]
struct Projection {
    parts: Vec<Linear>,
    bias: Option<Vec<f32>>,
}

impl Projection {
    fn new(mats: Vec<QMatMul>, bias: Option<Vec<f32>>) -> Result<Self> {
        let parts = match fuse(&mats)? {
            Some(m) => vec![Linear::new(m)],
            None => mats.into_iter().map(Linear::new).collect(),
        };
        Ok(Self { parts, bias })
    }

    /// The rows of `x · Wᵀ + b`, flattened.
    fn forward(&self, x: &Tensor) -> Result<Vec<f32>> {
        let y = if self.parts.len() == 1 {
            self.parts[0].forward(x)?
        } else {
            let outs = self
                .parts
                .iter()
                .map(|p| p.forward(x))
                .collect::<Result<Vec<_>>>()?;
            Tensor::cat(&outs, D::Minus1)?
        };
        let mut y = y.flatten_all()?.to_vec1::<f32>()?;
        if let Some(b) = &self.bias {
            for row in y.chunks_exact_mut(b.len()) {
                kern::add_assign(row, b);
            }
        }
        Ok(y)
    }
}

/// Stacks the rows of matrices with the same storage kind into one matrix.
fn fuse(mats: &[QMatMul]) -> Result<Option<QMatMul>> {
    if mats.len() < 2 {
        return Ok(mats.first().cloned());
    }
    if let Some(ts) = mats
        .iter()
        .map(|m| match m {
            QMatMul::Tensor(t) => Some(t),
            _ => None,
        })
        .collect::<Option<Vec<_>>>()
    {
        return Ok(Some(QMatMul::Tensor(Tensor::cat(&ts, 0)?)));
    }
    let Some(qs) = mats
        .iter()
        .map(|m| match m {
            QMatMul::QTensor(q) => Some(q),
            _ => None,
        })
        .collect::<Option<Vec<_>>>()
    else {
        return Ok(None);
    };
    let dtype = qs[0].dtype();
    let k = qs[0].shape().dims()[1];
    if qs
        .iter()
        .any(|q| q.dtype() != dtype || q.shape().dims()[1] != k)
    {
        return Ok(None);
    }
    // Quantized rows are independent runs of blocks: stacking matrices is concatenating bytes.
    let mut bytes = Vec::new();
    let mut rows = 0;
    for q in &qs {
        bytes.extend_from_slice(&q.data()?);
        rows += q.shape().dims()[0];
    }
    let storage = candle_core::quantized::QStorage::from_data(
        std::borrow::Cow::Owned(bytes),
        &Device::Cpu,
        dtype,
    )?;
    Ok(Some(QMatMul::from_qtensor(QTensor::new(
        storage,
        (rows, k),
    )?)?))
}

#[derive(Debug, Clone)]
struct Layer {
    attn_norm: Vec<f32>,
    qkv: Projection,
    o: Linear,
    ffn_norm: Vec<f32>,
    gate_up: Projection,
    down: Linear,
}

/// A loaded Llama-family model.
#[derive(Debug, Clone)]
pub struct Model {
    config: ModelConfig,
    embed: Linear,
    layers: Vec<Layer>,
    norm: Vec<f32>,
    lm_head: Linear,
    inv_freq: Vec<f64>,
}

impl Model {
    /// Builds the model from weights whose shapes must match `config`.
    pub fn load(config: ModelConfig, weights: &mut Weights) -> Result<Self> {
        let c = &config;
        let (h, kv, hd) = (c.hidden_size, c.num_kv_heads * c.head_dim, c.head_dim);
        let q_dim = c.num_heads * hd;
        let embed = Linear::new(weights.embedding(c.vocab_size, h)?);
        let mut layers = Vec::with_capacity(c.num_layers);
        for i in 0..c.num_layers {
            let bias = if c.qkv_bias {
                let q = weights.tensor(Param::QBias(i), &[q_dim])?;
                let k = weights.tensor(Param::KBias(i), &[kv])?;
                let v = weights.tensor(Param::VBias(i), &[kv])?;
                Some(Tensor::cat(&[q, k, v], 0)?.to_vec1::<f32>()?)
            } else {
                None
            };
            let qkv = Projection::new(
                vec![
                    weights.matrix(Param::Q(i), q_dim, h)?,
                    weights.matrix(Param::K(i), kv, h)?,
                    weights.matrix(Param::V(i), kv, h)?,
                ],
                bias,
            )?;
            let gate_up = Projection::new(
                vec![
                    weights.matrix(Param::Gate(i), c.intermediate_size, h)?,
                    weights.matrix(Param::Up(i), c.intermediate_size, h)?,
                ],
                None,
            )?;
            layers.push(Layer {
                attn_norm: weights.tensor(Param::AttnNorm(i), &[h])?.to_vec1()?,
                qkv,
                o: Linear::new(weights.matrix(Param::O(i), h, q_dim)?),
                ffn_norm: weights.tensor(Param::FfnNorm(i), &[h])?.to_vec1()?,
                gate_up,
                down: Linear::new(weights.matrix(Param::Down(i), h, c.intermediate_size)?),
            });
        }
        let norm = weights.tensor(Param::FinalNorm, &[h])?.to_vec1()?;
        let lm_head = if weights.contains(Param::LmHead) {
            Linear::new(weights.matrix(Param::LmHead, c.vocab_size, h)?)
        } else if c.tie_word_embeddings || weights.naming() == super::weights::Naming::Gguf {
            embed.clone()
        } else {
            return Err(Error::MissingTensor {
                path: weights.origin().to_path_buf(),
                name: weights.naming().name(Param::LmHead),
            });
        };
        let inv_freq = config.rope_inv_freq();
        Ok(Self {
            config,
            embed,
            layers,
            norm,
            lm_head,
            inv_freq,
        })
    }

    /// Runs a few forwards on a scratch cache. candle packs quantized weights into the
    /// layouts of its multi-row kernels on first use; doing it here keeps that cost out of the
    /// first request.
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
        self.lm_head = self.lm_head.first_rows(rows)?;
        Ok(())
    }

    /// Number of logits a forward returns per row (the vocabulary, or a restricted head).
    pub fn head_rows(&self) -> usize {
        self.lm_head.rows()
    }

    /// The model's configuration.
    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    /// A new, empty cache with a pool of its own for one sequence of this model (tools and
    /// tests; the engine shares one [`KvPool`] among its sequences).
    pub fn new_cache(&self) -> SequenceCache {
        SequenceCache::new(
            self.config.num_layers,
            self.config.num_kv_heads * self.config.head_dim,
            self.config.max_position_embeddings,
        )
    }

    /// A pool of `max_blocks` blocks for this model.
    pub fn new_pool(&self, max_blocks: usize) -> KvPool {
        KvPool::for_model(&self.config, max_blocks)
    }

    /// Appends each sequence's tokens to its cache in `kv` and returns its logits: `[n_i, vocab]`
    /// for [`Logits::All`], `[1, vocab]` for [`Logits::Last`], `[0, vocab]` for [`Logits::None`].
    /// New tokens attend causally to each other and to everything cached before them. Slots
    /// for the new tokens are reserved first ([`Error::KvExhausted`] when the pool is full).
    /// On error no sequence's committed length changes (reserved blocks stay with their
    /// tables).
    pub fn forward(&self, kv: &mut KvPool, batch: &mut [SeqInput<'_>]) -> Result<Vec<Tensor>> {
        self.check_batch(batch)?;
        for s in batch.iter_mut() {
            kv.reserve(s.table, s.tokens.len())?;
        }
        self.forward_inner(kv, batch)
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

    fn check_batch(&self, batch: &[SeqInput<'_>]) -> Result<()> {
        let c = &self.config;
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

    fn forward_inner(&self, kv: &mut KvPool, batch: &mut [SeqInput<'_>]) -> Result<Vec<Tensor>> {
        let c = &self.config;
        let (hd, nh, nkv) = (c.head_dim, c.num_heads, c.num_kv_heads);
        let (q_dim, kv_dim) = (nh * hd, nkv * hd);
        let qkv_dim = q_dim + 2 * kv_dim;
        let ids: Vec<u32> = batch
            .iter()
            .flat_map(|s| s.tokens.iter().copied())
            .collect();
        let total = ids.len();
        let positions: Vec<usize> = batch
            .iter()
            .flat_map(|s| s.table.len()..s.table.len() + s.tokens.len())
            .collect();
        let rope = kern::rope_tables(&positions, &self.inv_freq);
        let interleaved = c.rope_layout == super::config::RopeLayout::Interleaved;
        let shape = kern::AttentionShape {
            n_heads: nh,
            n_kv_heads: nkv,
            head_dim: hd,
            sliding_window: c.sliding_window,
        };
        let eps = c.rms_norm_eps as f32;

        // The hidden state stays a plain buffer: only matrix products go through candle, and
        // the small per-token operations run inline instead of waking a thread pool.
        let hidden = c.hidden_size;
        let inter = c.intermediate_size;
        let mut x = self
            .embed
            .embedding(&Tensor::from_vec(ids, total, &Device::Cpu)?)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        let mut h = vec![0f32; total * hidden];
        let mut attn_out = vec![0f32; total * q_dim];
        let mut act = vec![0f32; total * inter];
        for (li, layer) in self.layers.iter().enumerate() {
            kern::rms_norm(&x, &layer.attn_norm, eps, &mut h);
            let mut qkv =
                layer
                    .qkv
                    .forward(&Tensor::from_slice(&h, (total, hidden), &Device::Cpu)?)?;
            kern::apply_rope(&mut qkv, qkv_dim, 0, nh, &rope, interleaved);
            kern::apply_rope(&mut qkv, qkv_dim, q_dim, nkv, &rope, interleaved);
            let mut row0 = 0;
            for s in batch.iter_mut() {
                let n = s.tokens.len();
                let rows = &qkv[row0 * qkv_dim..(row0 + n) * qkv_dim];
                // Keys and values go straight into the cache; only the queries are gathered.
                let start = s.table.len();
                let mut q = Vec::with_capacity(n * q_dim);
                for (i, r) in rows.chunks_exact(qkv_dim).enumerate() {
                    q.extend_from_slice(&r[..q_dim]);
                    kv.write(
                        s.table,
                        start + i,
                        li,
                        &r[q_dim..q_dim + kv_dim],
                        &r[q_dim + kv_dim..],
                    );
                }
                let (keys, values) = kv.layer_chunks(s.table, li, start + n);
                let chunks = kern::KvChunks {
                    keys: &keys,
                    values: &values,
                };
                let out = &mut attn_out[row0 * q_dim..(row0 + n) * q_dim];
                kern::attention(&q, start, chunks, shape, out, &CandlePool);
                row0 += n;
            }
            let a = Tensor::from_slice(&attn_out, (total, q_dim), &Device::Cpu)?;
            let o = layer.o.forward(&a)?.flatten_all()?.to_vec1::<f32>()?;
            kern::add_assign(&mut x, &o);
            kern::rms_norm(&x, &layer.ffn_norm, eps, &mut h);
            let gu =
                layer
                    .gate_up
                    .forward(&Tensor::from_slice(&h, (total, hidden), &Device::Cpu)?)?;
            for (row, out) in gu.chunks_exact(2 * inter).zip(act.chunks_exact_mut(inter)) {
                let (g, u) = row.split_at(inter);
                kern::silu_mul(g, u, out);
            }
            let a = Tensor::from_slice(&act, (total, inter), &Device::Cpu)?;
            let d = layer.down.forward(&a)?.flatten_all()?.to_vec1::<f32>()?;
            kern::add_assign(&mut x, &d);
        }
        for s in batch.iter_mut() {
            kv.commit(s.table, s.tokens.len());
        }

        // Only the rows whose logits are wanted go through the final norm and the head.
        let mut wanted = Vec::new();
        let mut row0 = 0;
        for s in batch.iter() {
            let n = s.tokens.len();
            match s.logits {
                Logits::All => wanted.extend(row0..row0 + n),
                Logits::Last => wanted.push(row0 + n - 1),
                Logits::None => {}
            }
            row0 += n;
        }
        let mut selected = Vec::with_capacity(wanted.len() * hidden);
        for &r in &wanted {
            selected.extend_from_slice(&x[r * hidden..(r + 1) * hidden]);
        }
        let mut normed = vec![0f32; selected.len()];
        kern::rms_norm(&selected, &self.norm, eps, &mut normed);
        let vocab = self.lm_head.rows();
        let logits = if wanted.is_empty() {
            Tensor::zeros((0, vocab), candle_core::DType::F32, &Device::Cpu)?
        } else {
            let x = Tensor::from_vec(normed, (wanted.len(), hidden), &Device::Cpu)?;
            self.lm_head.forward(&x)?
        };
        let mut out = Vec::with_capacity(batch.len());
        let mut r = 0;
        for s in batch.iter() {
            let n = match s.logits {
                Logits::All => s.tokens.len(),
                Logits::Last => 1,
                Logits::None => 0,
            };
            out.push(logits.narrow(0, r, n)?);
            r += n;
        }
        Ok(out)
    }
}
