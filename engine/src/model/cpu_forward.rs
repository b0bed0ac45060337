//! The CPU backend of the forward: matrix products through `linear.rs` (our small-batch
//! quantized kernels, candle for the rest), everything else inline on plain buffers.

use candle_core::quantized::{QMatMul, QTensor};
use candle_core::{Device, Tensor};
use specd_kernels::cpu as kern;

use super::config::{ModelConfig, RopeLayout};
use super::glide::{FeatureRow, FeatureWeights};
use super::linear::{CandlePool, Linear};
use super::llama::{
    hidden_per_seq, run_layers, Act, CrossInput, ForwardOps, ForwardOut, HiddenRows, LlamaWeights,
    Logits, OutputMode, SampleInput, SeqInput, Top, Wanted,
};
use crate::error::Result;
use crate::kv::pool::PoolQuery;
use crate::kv::KvPool;

/// The weights of a model on the CPU.
pub(crate) type CpuWeights = LlamaWeights<Projection, Vec<f32>>;

/// Several weight matrices applied to the same input, fused into one matrix when their
/// storage allows it (same quantization), so that the input is quantized and read once.
#[derive(Debug, Clone)]
pub(crate) struct Projection {
    parts: Vec<Linear>,
    bias: Option<Vec<f32>>,
}

impl Projection {
    pub(crate) fn new(mats: Vec<QMatMul>, bias: Option<Vec<f32>>) -> Result<Self> {
        let parts = match fuse(&mats)? {
            Some(m) => vec![Linear::new(m)],
            None => mats.into_iter().map(Linear::new).collect(),
        };
        Ok(Self { parts, bias })
    }

    /// The `rows` rows of `x · Wᵀ + b` into `out` (resized to fit; a buffer reused across
    /// layers is not cleared first: every value is written).
    fn forward_into(&self, x: &[f32], rows: usize, out: &mut Vec<f32>) -> Result<()> {
        let n = self.rows();
        out.resize(rows * n, 0.0);
        if let [part] = &self.parts[..] {
            part.forward_into(x, rows, out)?;
        } else {
            // Each part's rows, then side by side in each output row.
            let mut col = 0;
            for p in &self.parts {
                let pn = p.rows();
                let mut y = vec![0f32; rows * pn];
                p.forward_into(x, rows, &mut y)?;
                for (o, y) in out.chunks_exact_mut(n).zip(y.chunks_exact(pn)) {
                    o[col..col + pn].copy_from_slice(y);
                }
                col += pn;
            }
        }
        if let Some(b) = &self.bias {
            for row in out.chunks_exact_mut(b.len()) {
                kern::add_assign(row, b);
            }
        }
        Ok(())
    }

    /// The matrix of the first `rows` output rows (a single-part matrix: heads).
    pub(crate) fn first_rows(&self, rows: usize) -> Result<Self> {
        Ok(Self {
            parts: vec![self.parts[0].first_rows(rows)?],
            bias: None,
        })
    }

    /// The matrix of the output rows `ids`, in order (a single-part matrix: heads).
    pub(crate) fn select_rows(&self, ids: &[u32]) -> Result<Self> {
        Ok(Self {
            parts: vec![self.parts[0].select_rows(ids)?],
            bias: None,
        })
    }

    /// Output rows.
    fn rows(&self) -> usize {
        self.parts.iter().map(Linear::rows).sum()
    }

    /// Whether any part is stored quantized.
    pub(crate) fn is_quantized(&self) -> bool {
        self.parts
            .iter()
            .any(|p| matches!(p.inner(), QMatMul::QTensor(_)))
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

/// One forward on the CPU: the step's rows, their rope tables, the buffers and the pool (and,
/// for a GLIDE drafter, what its cross-attention reads of the target).
pub(crate) struct CpuStep<'a, 'b> {
    c: &'a ModelConfig,
    kv: &'a mut KvPool,
    batch: &'a mut [SeqInput<'b>],
    ids: Vec<u32>,
    rope: kern::RopeTables,
    x: Vec<f32>,
    normed: Vec<f32>,
    qkv: Vec<f32>,
    attn: Vec<f32>,
    delta: Vec<f32>,
    gate_up: Vec<f32>,
    gated: Vec<f32>,
    cross_q: Vec<f32>,
    cross: Option<CrossInput<'a>>,
    logits: Option<Tensor>,
    /// Whether the head keeps the final normed rows it reads ([`CpuStep::hidden`]).
    keep_hidden: bool,
    hidden: Vec<f32>,
}

impl<'a, 'b> CpuStep<'a, 'b> {
    pub(crate) fn new(
        c: &'a ModelConfig,
        inv_freq: &[f64],
        kv: &'a mut KvPool,
        batch: &'a mut [SeqInput<'b>],
        cross: Option<CrossInput<'a>>,
    ) -> Self {
        let ids: Vec<u32> = batch
            .iter()
            .flat_map(|s| s.tokens.iter().copied())
            .collect();
        let rope = kern::rope_tables(&positions(batch), inv_freq);
        Self {
            c,
            kv,
            batch,
            ids,
            rope,
            x: Vec::new(),
            normed: Vec::new(),
            qkv: Vec::new(),
            attn: Vec::new(),
            delta: Vec::new(),
            gate_up: Vec::new(),
            gated: Vec::new(),
            cross_q: Vec::new(),
            cross,
            logits: None,
            keep_hidden: false,
            hidden: Vec::new(),
        }
    }

    /// Adds to each sequence's row at `features[i]`'s position (if among its new tokens) the
    /// projection of that hidden state, after the embedding (GLIDE's feature).
    pub(crate) fn add_features(
        &mut self,
        w: &FeatureWeights<Projection, Vec<f32>>,
        features: &[Option<FeatureRow<'_>>],
    ) -> Result<()> {
        let h = self.c.hidden_size;
        let mut row0 = 0;
        for (i, s) in self.batch.iter().enumerate() {
            let (start, n) = (s.table.len(), s.tokens.len());
            if let Some(Some(f)) = features.get(i) {
                // (Its length is checked by the caller, GlideModel's forward.)
                if (start..start + n).contains(&f.position) {
                    let mut normed = vec![0f32; h];
                    let norm = w.norm_for(f.source);
                    kern::rms_norm(f.hidden, norm, self.c.rms_norm_eps as f32, &mut normed);
                    let mut inner = Vec::new();
                    if let Some(down) = &w.down {
                        down.forward_into(&normed, 1, &mut inner)?;
                    } else {
                        inner = normed;
                    }
                    let mut y = Vec::new();
                    w.proj.forward_into(&inner, 1, &mut y)?;
                    let r = row0 + f.position - start;
                    kern::add_assign(&mut self.x[r * h..(r + 1) * h], &y);
                }
            }
            row0 += n;
        }
        Ok(())
    }

    /// Keeps the final normed rows the head reads ([`CpuStep::hidden_per_seq`]).
    pub(crate) fn keep_hidden(&mut self) {
        self.keep_hidden = true;
    }

    /// The final normed rows the head read, per sequence (after the head ran, with
    /// [`CpuStep::keep_hidden`]).
    pub(crate) fn hidden_per_seq(&self) -> HiddenRows {
        hidden_per_seq(&self.hidden, self.c.hidden_size, self.batch)
    }

    /// Each wanted row's logits, per sequence (after the head ran).
    pub(crate) fn logits_per_seq(&mut self) -> Result<Vec<Tensor>> {
        let logits = self.logits.take().expect("the head ran");
        let mut per_seq = Vec::with_capacity(self.batch.len());
        let mut r = 0;
        for s in self.batch.iter() {
            let n = s.logits.rows(s.tokens.len());
            per_seq.push(logits.narrow(0, r, n)?);
            r += n;
        }
        Ok(per_seq)
    }
}

/// The position of every row of a batch, in order.
pub(crate) fn positions(batch: &[SeqInput<'_>]) -> Vec<usize> {
    batch
        .iter()
        .flat_map(|s| s.table.len()..s.table.len() + s.tokens.len())
        .collect()
}

impl CpuStep<'_, '_> {
    fn buf(&self, a: Act) -> &[f32] {
        match a {
            Act::Normed => &self.normed,
            Act::Qkv => &self.qkv,
            Act::Attn => &self.attn,
            Act::Delta => &self.delta,
            Act::GateUp => &self.gate_up,
            Act::Gated => &self.gated,
            Act::CrossQ => &self.cross_q,
        }
    }

    fn buf_mut(&mut self, a: Act) -> &mut Vec<f32> {
        match a {
            Act::Normed => &mut self.normed,
            Act::Qkv => &mut self.qkv,
            Act::Attn => &mut self.attn,
            Act::Delta => &mut self.delta,
            Act::GateUp => &mut self.gate_up,
            Act::Gated => &mut self.gated,
            Act::CrossQ => &mut self.cross_q,
        }
    }

    fn rows(&self) -> usize {
        self.ids.len()
    }
}

impl ForwardOps for CpuStep<'_, '_> {
    type Matrix = Projection;
    type Vector = Vec<f32>;

    fn embed(&mut self, table: &Projection) -> Result<()> {
        let ids = Tensor::from_slice(&self.ids, self.rows(), &Device::Cpu)?;
        self.x = table.parts[0]
            .embedding(&ids)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        Ok(())
    }

    fn add_rms_norm(&mut self, add: bool, weight: &Vec<f32>) -> Result<()> {
        if add {
            kern::add_assign(&mut self.x, &self.delta);
        }
        let eps = self.c.rms_norm_eps as f32;
        self.normed.resize(self.x.len(), 0.0);
        kern::rms_norm(&self.x, weight, eps, &mut self.normed);
        Ok(())
    }

    fn linear(&mut self, m: &Projection, x: Act, out: Act) -> Result<()> {
        let mut y = std::mem::take(self.buf_mut(out));
        m.forward_into(self.buf(x), self.rows(), &mut y)?;
        *self.buf_mut(out) = y;
        Ok(())
    }

    fn rope_write_kv(&mut self, layer: usize) -> Result<()> {
        let c = self.c;
        let (nh, nkv, hd) = (c.num_heads, c.num_kv_heads, c.head_dim);
        let (q_dim, kv_dim) = (nh * hd, nkv * hd);
        let qkv_dim = q_dim + 2 * kv_dim;
        let interleaved = c.rope_layout == RopeLayout::Interleaved;
        kern::apply_rope(&mut self.qkv, qkv_dim, 0, nh, &self.rope, interleaved);
        kern::apply_rope(&mut self.qkv, qkv_dim, q_dim, nkv, &self.rope, interleaved);
        let mut row0 = 0;
        for s in self.batch.iter() {
            let start = s.table.len();
            for i in 0..s.tokens.len() {
                let r = &self.qkv[(row0 + i) * qkv_dim..(row0 + i + 1) * qkv_dim];
                self.kv.write(
                    s.table,
                    start + i,
                    layer,
                    &r[q_dim..q_dim + kv_dim],
                    &r[q_dim + kv_dim..],
                );
            }
            row0 += s.tokens.len();
        }
        Ok(())
    }

    fn attention(&mut self, layer: usize) -> Result<()> {
        let c = self.c;
        let (nh, nkv, hd) = (c.num_heads, c.num_kv_heads, c.head_dim);
        let (q_dim, kv_dim) = (nh * hd, nkv * hd);
        let qkv_dim = q_dim + 2 * kv_dim;
        let shape = kern::AttentionShape {
            n_heads: nh,
            n_kv_heads: nkv,
            head_dim: hd,
            sliding_window: c.sliding_window,
        };
        self.attn.resize(self.rows() * q_dim, 0.0);
        // Every sequence's rows in one call: the kernel spreads sequences, key/value heads and
        // blocks of rows over the pool.
        let mut queries = Vec::with_capacity(self.batch.len());
        let (mut qkv, mut out) = (&self.qkv[..], &mut self.attn[..]);
        for s in self.batch.iter() {
            let n = s.tokens.len();
            let start = s.table.len();
            let (q, rest) = qkv.split_at(n * qkv_dim);
            let (o, rest_out) = std::mem::take(&mut out).split_at_mut(n * q_dim);
            (qkv, out) = (rest, rest_out);
            queries.push(PoolQuery {
                table: s.table,
                upto: start + n,
                q,
                q_stride: qkv_dim,
                start,
                out: o,
            });
        }
        self.kv.attention(layer, &mut queries, shape, &CandlePool);
        Ok(())
    }

    fn silu_mul(&mut self) -> Result<()> {
        let inter = self.c.intermediate_size;
        self.gated.resize(self.rows() * inter, 0.0);
        kern::silu_mul_rows(&self.gate_up, inter, &mut self.gated, &CandlePool);
        Ok(())
    }

    fn cross_attention(&mut self) -> Result<()> {
        let cross = self.cross.as_ref().ok_or_else(|| {
            crate::error::Error::InvalidRequest(
                "cross-attention without a target to read (not a GLIDE forward)".into(),
            )
        })?;
        self.attn = super::glide::cross_attention(cross, self.batch, &self.cross_q);
        Ok(())
    }

    fn head(&mut self, norm: &Vec<f32>, head: &Projection) -> Result<()> {
        kern::add_assign(&mut self.x, &self.delta);
        let hidden = self.c.hidden_size;
        // Only the rows whose logits are wanted go through the final norm and the head.
        let mut selected = Vec::new();
        let mut row0 = 0;
        for s in self.batch.iter() {
            let n = s.tokens.len();
            let rows = match s.logits {
                Logits::All => row0..row0 + n,
                Logits::Last => row0 + n - 1..row0 + n,
                Logits::None => row0..row0,
            };
            selected.extend_from_slice(&self.x[rows.start * hidden..rows.end * hidden]);
            row0 += n;
        }
        let wanted = selected.len() / hidden;
        let mut normed = vec![0f32; selected.len()];
        kern::rms_norm(&selected, norm, self.c.rms_norm_eps as f32, &mut normed);
        if self.keep_hidden {
            self.hidden.clone_from(&normed);
        }
        self.logits = Some(if wanted == 0 {
            Tensor::zeros((0, head.rows()), candle_core::DType::F32, &Device::Cpu)?
        } else {
            let mut y = Vec::new();
            head.forward_into(&normed, wanted, &mut y)?;
            Tensor::from_vec(y, (wanted, head.rows()), &Device::Cpu)?
        });
        Ok(())
    }
}

/// Runs the forward on the CPU (slots already reserved) and shapes its output.
pub(crate) fn forward(
    c: &ModelConfig,
    inv_freq: &[f64],
    w: &CpuWeights,
    kv: &mut KvPool,
    batch: &mut [SeqInput<'_>],
    wanted: Wanted<'_, '_>,
) -> Result<(ForwardOut, Option<HiddenRows>)> {
    let Wanted {
        mode,
        sample,
        keep_hidden,
    } = wanted;
    let mut step = CpuStep::new(c, inv_freq, kv, batch, None);
    step.keep_hidden = keep_hidden;
    run_layers(&mut step, w)?;
    let per_seq = step.logits_per_seq()?;
    let hidden = keep_hidden.then(|| hidden_per_seq(&step.hidden, c.hidden_size, step.batch));
    let batch = &*step.batch;
    let out = match mode {
        OutputMode::Logits => ForwardOut::Logits(per_seq),
        OutputMode::Top => ForwardOut::Top(
            per_seq
                .iter()
                .map(|l| {
                    Ok(l.to_vec2::<f32>()?
                        .iter()
                        .map(|row| {
                            let (token, prob) = kern::sample::argmax_prob(row);
                            Top { token, prob }
                        })
                        .collect())
                })
                .collect::<Result<_>>()?,
        ),
        OutputMode::Argmax => {
            ForwardOut::Tokens(per_seq.iter().map(row_argmaxes).collect::<Result<_>>()?)
        }
        OutputMode::GreedyVerdict => ForwardOut::Verdicts(
            per_seq
                .iter()
                .zip(batch)
                .map(|(l, s)| Ok(kern::sample::accept_greedy(s.tokens, &row_argmaxes(l)?)))
                .collect::<Result<_>>()?,
        ),
        OutputMode::SampledVerdict => ForwardOut::Verdicts(
            per_seq
                .iter()
                .zip(batch)
                .zip(sample)
                .map(|((l, s), x)| Ok(sampled_verdict(&l.to_vec2::<f32>()?, s.tokens, x)))
                .collect::<Result<_>>()?,
        ),
    };
    Ok((out, hidden))
}

/// The argmax of each row of a sequence's logits.
fn row_argmaxes(logits: &Tensor) -> Result<Vec<u32>> {
    Ok(logits
        .to_vec2::<f32>()?
        .iter()
        .map(|row| crate::sampling::argmax(row))
        .collect())
}

/// Rejection sampling of one sequence's rows as the GPU does it (the kernels' CPU references):
/// softmax at the sequence's temperature, draft rows fitted to the vocabulary.
fn sampled_verdict(rows: &[Vec<f32>], tokens: &[u32], x: &SampleInput<'_>) -> (usize, u32) {
    let p: Vec<Vec<f32>> = rows
        .iter()
        .map(|r| kern::sample::softmax(r, x.inv_temp))
        .collect();
    let v = rows.first().map_or(0, Vec::len);
    let q: Option<Vec<Vec<f32>>> = x.q.map(|q| {
        q.iter()
            .map(|r| {
                let mut r = r[..r.len().min(v)].to_vec();
                r.resize(v, 0.0);
                r
            })
            .collect()
    });
    let p_refs: Vec<&[f32]> = p.iter().map(Vec::as_slice).collect();
    let q_refs: Option<Vec<&[f32]>> = q.as_ref().map(|q| q.iter().map(Vec::as_slice).collect());
    kern::sample::rejection_sample(&p_refs, q_refs.as_deref(), tokens, &x.u)
}
