//! One forward on the GPU: the [`ForwardOps`] that launch the kernels over its buffers
//! (`buffers.rs`) and the step's metadata (`plan.rs`); for a GLIDE drafter, also its
//! cross-attention over the target's pool. The operations only enqueue
//! launches on the stream (no copies, no waits), so a whole forward can be captured into a CUDA
//! graph and replayed: the graph's pointers stay valid because every buffer here lives as long
//! as the model's scratch.

use specd_kernels::cuda::{
    AttentionArgs, Buffer, DevicePtr, Gpu, KvLayout, MatmulArgs, RejectionArgs, RopeArgs,
};

use super::buffers::{Buffers, FeatureKinds};
use super::gpu_err;
use super::plan::{MetaPtrs, Shape};
use super::weights::{GpuFeature, GpuMatrix};
use crate::error::Result;
use crate::model::config::{ModelConfig, RopeLayout};
use crate::model::llama::{Act, ForwardOps, OutputMode};

/// What a GLIDE drafter's cross-attention launches with: the target's pool layout and layer,
/// its attention shape, and its rotary table.
#[derive(Debug, Clone, Copy)]
pub(super) struct CrossLaunch {
    pub kv: KvLayout,
    pub layer: usize,
    pub n_heads: usize,
    pub n_kv: usize,
    pub head_dim: usize,
    pub interleaved: bool,
    /// (cos, sin) of the target's frequencies, `[max_position][head_dim / 2]`.
    pub cos_sin: DevicePtr,
}

/// The launches of one forward: [`ForwardOps`] over the buffers and the metadata.
pub(super) struct CudaStep<'a> {
    pub gpu: &'a Gpu,
    pub c: &'a ModelConfig,
    pub bufs: &'a Buffers,
    pub shape: Shape,
    pub kv: KvLayout,
    pub cos_sin: DevicePtr,
    pub head_rows: usize,
    pub mode: OutputMode,
    pub cross: Option<CrossLaunch>,
    meta: MetaPtrs,
}

impl<'a> CudaStep<'a> {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        gpu: &'a Gpu,
        c: &'a ModelConfig,
        bufs: &'a Buffers,
        shape: Shape,
        chunk_blocks: usize,
        cos_sin: DevicePtr,
        head_rows: usize,
        mode: OutputMode,
        cross: Option<CrossLaunch>,
    ) -> Self {
        let kv = KvLayout {
            chunks: bufs.chunk_table.ptr(),
            chunk_blocks,
            n_layers: c.num_layers,
            kv_dim: c.num_kv_heads * c.head_dim,
        };
        Self {
            gpu,
            c,
            bufs,
            shape,
            kv,
            cos_sin,
            head_rows,
            mode,
            cross,
            meta: MetaPtrs::new(&bufs.meta, &shape),
        }
    }

    fn act(&self, a: Act) -> DevicePtr {
        let b = self.bufs;
        match a {
            Act::Normed => b.normed.ptr(),
            Act::Qkv => b.qkv.ptr(),
            Act::Attn => b.attn.ptr(),
            Act::Delta => b.delta.ptr(),
            Act::GateUp => b.gate_up.ptr(),
            Act::Gated => b.gated.ptr(),
            Act::CrossQ => b.cross_q.ptr(),
        }
    }

    fn eps(&self) -> f32 {
        self.c.rms_norm_eps as f32
    }
}

/// Writes `y = x · Wᵀ + b` for `rows` rows, one launch per stored part of the matrix; x is
/// quantized to 8 bits into `xq` once if any part's product reads that copy.
fn product(
    gpu: &Gpu,
    m: &GpuMatrix,
    (x, xq): (DevicePtr, DevicePtr),
    y: DevicePtr,
    rows: usize,
    head_rows: Option<usize>,
) -> Result<()> {
    let ldy = head_rows.unwrap_or(m.rows);
    let mut quantized = false;
    for p in &m.parts {
        let mut w = p.view;
        if let Some(h) = head_rows {
            // Only the output columns below `h` are kept.
            if p.col >= h {
                continue;
            }
            w.rows = w.rows.min(h - p.col);
        }
        if !quantized && gpu.reads_q8(&w, rows) {
            gpu.quantize_rows(x, rows, w.cols, xq).map_err(gpu_err)?;
            quantized = true;
        }
        let bias = m.bias.as_ref().map_or(0, |b| b.at(p.col));
        gpu.matmul_rows(&MatmulArgs {
            w,
            x,
            xq,
            xq_ready: quantized,
            y: y + (p.col * 4) as u64,
            bias,
            rows,
            ldy,
        })
        .map_err(gpu_err)?;
    }
    Ok(())
}

impl ForwardOps for CudaStep<'_> {
    type Matrix = GpuMatrix;
    type Vector = Buffer<f32>;

    fn embed(&mut self, table: &GpuMatrix) -> Result<()> {
        let view = table.parts[0].view;
        self.gpu
            .embed_rows(&view, self.meta.ids, self.shape.rows, self.bufs.x.ptr())
            .map_err(gpu_err)
    }

    fn add_rms_norm(&mut self, add: bool, weight: &Buffer<f32>) -> Result<()> {
        let delta = if add { self.bufs.delta.ptr() } else { 0 };
        self.gpu
            .add_rms_norm(
                self.bufs.x.ptr(),
                delta,
                weight.ptr(),
                self.eps(),
                self.bufs.normed.ptr(),
                self.c.hidden_size,
                self.shape.rows,
            )
            .map_err(gpu_err)
    }

    fn linear(&mut self, m: &GpuMatrix, x: Act, out: Act) -> Result<()> {
        product(
            self.gpu,
            m,
            (self.act(x), self.bufs.xq.ptr()),
            self.act(out),
            self.shape.rows,
            None,
        )
    }

    fn rope_write_kv(&mut self, layer: usize) -> Result<()> {
        let c = self.c;
        self.gpu
            .rope_store_kv(&RopeArgs {
                qkv: self.bufs.qkv.ptr(),
                rows: self.shape.rows,
                n_heads: c.num_heads,
                n_kv: c.num_kv_heads,
                head_dim: c.head_dim,
                cos_sin: self.cos_sin,
                pos: self.meta.pos,
                slot: self.meta.slot,
                interleaved: c.rope_layout == RopeLayout::Interleaved,
                kv: self.kv,
                layer,
            })
            .map_err(gpu_err)
    }

    fn attention(&mut self, layer: usize) -> Result<()> {
        let c = self.c;
        let q_dim = c.num_heads * c.head_dim;
        self.gpu
            .paged_attention(&AttentionArgs {
                q: self.bufs.qkv.ptr(),
                q_stride: q_dim + 2 * c.num_kv_heads * c.head_dim,
                kv: self.kv,
                layer,
                row_seq: self.meta.row_seq,
                row_kv_len: self.meta.row_len,
                tables: self.meta.tables,
                table_width: self.shape.width,
                rows: self.shape.rows,
                n_heads: c.num_heads,
                n_kv: c.num_kv_heads,
                head_dim: c.head_dim,
                scale: 1.0 / (c.head_dim as f32).sqrt(),
                window: c.sliding_window.unwrap_or(0),
                splits: self.bufs.attention_scratch(),
                out: self.bufs.attn.ptr(),
            })
            .map_err(gpu_err)
    }

    fn silu_mul(&mut self) -> Result<()> {
        // A separate launch: fusing it into the down projection's input load cost more than it
        // saved (every CTA recomputes the SwiGLU of the whole row; BENCHMARKS.md, GPU run 2).
        self.gpu
            .silu_mul(
                self.bufs.gate_up.ptr(),
                self.bufs.gated.ptr(),
                self.c.intermediate_size,
                self.shape.rows,
            )
            .map_err(gpu_err)
    }

    fn cross_attention(&mut self) -> Result<()> {
        let x = self.cross.ok_or_else(|| {
            crate::error::Error::InvalidRequest(
                "cross-attention without a target to read (not a GLIDE forward)".into(),
            )
        })?;
        let q = self.bufs.cross_q.ptr();
        // The queries rotated at their rows' positions with the target's frequencies: the rope
        // kernel with no key heads rotates the query heads only and writes no cache.
        self.gpu
            .rope_store_kv(&RopeArgs {
                qkv: q,
                rows: self.shape.rows,
                n_heads: x.n_heads,
                n_kv: 0,
                head_dim: x.head_dim,
                cos_sin: x.cos_sin,
                pos: self.meta.pos,
                slot: self.meta.slot,
                interleaved: x.interleaved,
                kv: x.kv,
                layer: x.layer,
            })
            .map_err(gpu_err)?;
        // Each row over the target positions it sees (none: zeros).
        self.gpu
            .paged_attention(&AttentionArgs {
                q,
                q_stride: x.n_heads * x.head_dim,
                kv: x.kv,
                layer: x.layer,
                row_seq: self.meta.row_seq,
                row_kv_len: self.meta.cross_len,
                tables: self.meta.cross_tables,
                table_width: self.shape.cross_width,
                rows: self.shape.rows,
                n_heads: x.n_heads,
                n_kv: x.n_kv,
                head_dim: x.head_dim,
                scale: 1.0 / (x.head_dim as f32).sqrt(),
                window: 0,
                splits: self.bufs.attention_scratch(),
                out: self.bufs.attn.ptr(),
            })
            .map_err(gpu_err)
    }

    fn head(&mut self, norm: &Buffer<f32>, head: &GpuMatrix) -> Result<()> {
        let (gpu, b, s) = (self.gpu, self.bufs, self.shape);
        if s.logit_rows == 0 {
            return Ok(());
        }
        let h = self.c.hidden_size;
        gpu.add_rms_norm(
            b.x.ptr(),
            b.delta.ptr(),
            norm.ptr(),
            self.eps(),
            b.normed.ptr(),
            h,
            s.rows,
        )
        .map_err(gpu_err)?;
        gpu.gather_rows(
            b.normed.ptr(),
            self.meta.sel,
            h,
            s.logit_rows,
            b.head_in.ptr(),
        )
        .map_err(gpu_err)?;
        product(
            gpu,
            head,
            (b.head_in.ptr(), b.xq.ptr()),
            b.logits.ptr(),
            s.logit_rows,
            Some(self.head_rows),
        )?;
        match self.mode {
            OutputMode::Logits => Ok(()),
            OutputMode::SampledVerdict => self.rejection_sample(),
            OutputMode::Top | OutputMode::Argmax | OutputMode::GreedyVerdict => self.argmax(),
        }
    }
}

impl CudaStep<'_> {
    /// Adds a GLIDE drafter's feature to the residual stream after the embedding:
    /// `x += proj · rms_norm(feature input)` (rows whose input is zeros get exactly zero), for
    /// the uploaded rows `kinds` names: the shared input with the feature's norm, then the
    /// drafter's own rows with the chained rows' norm (a row is in one input at most, so the
    /// other adds exactly zero to it).
    pub fn add_feature(&mut self, f: &GpuFeature, kinds: FeatureKinds) -> Result<()> {
        let b = self.bufs;
        if kinds.shared {
            self.add_feature_from(b.feature.ptr(), f.norm.ptr(), f)?;
        }
        if let (true, Some(chain)) = (kinds.own, &f.chain_norm) {
            self.add_feature_from(b.feature_own.ptr(), chain.ptr(), f)?;
        }
        Ok(())
    }

    /// `x += proj · rms_norm(input, norm)`. The addition goes through the norm kernel, whose
    /// normed output layer 0 then overwrites.
    fn add_feature_from(
        &mut self,
        input: DevicePtr,
        norm: DevicePtr,
        f: &GpuFeature,
    ) -> Result<()> {
        let (gpu, b, rows) = (self.gpu, self.bufs, self.shape.rows);
        let h = self.c.hidden_size;
        let eps = self.eps();
        gpu.add_rms_norm(input, 0, norm, eps, b.normed.ptr(), h, rows)
            .map_err(gpu_err)?;
        product(
            gpu,
            &f.proj,
            (b.normed.ptr(), b.xq.ptr()),
            b.delta.ptr(),
            rows,
            None,
        )?;
        gpu.add_rms_norm(b.x.ptr(), b.delta.ptr(), norm, eps, b.normed.ptr(), h, rows)
            .map_err(gpu_err)
    }

    /// Argmax of every logit row, then (greedy verification) acceptance.
    fn argmax(&mut self) -> Result<()> {
        let (gpu, b, s) = (self.gpu, self.bufs, self.shape);
        gpu.argmax_rows(
            b.logits.ptr(),
            self.head_rows,
            self.head_rows,
            s.logit_rows,
            b.top_tok.ptr(),
            b.top_prob.ptr(),
            b.argmax_scratch.ptr(),
        )
        .map_err(gpu_err)?;
        if self.mode == OutputMode::GreedyVerdict {
            gpu.accept_greedy(
                b.top_tok.ptr(),
                self.meta.ids,
                self.meta.first,
                self.meta.n,
                s.seqs,
                b.verdicts.ptr(),
            )
            .map_err(gpu_err)?;
        }
        Ok(())
    }

    /// Softmax of every logit row at its sequence's temperature (in place), then rejection
    /// sampling of each sequence's drafts.
    fn rejection_sample(&mut self) -> Result<()> {
        let (gpu, b, s) = (self.gpu, self.bufs, self.shape);
        let v = self.head_rows;
        let logits = b.logits.ptr();
        gpu.softmax_rows(logits, v, v, b.sample.ptr(), s.logit_rows, logits)
            .map_err(gpu_err)?;
        gpu.rejection_sample(&RejectionArgs {
            p: logits,
            vocab: v,
            q: b.q.as_ref().map_or(0, Buffer::ptr),
            ids: self.meta.ids,
            first: self.meta.first,
            n: self.meta.n,
            qrow: b.qrow.ptr(),
            u: b.sample.at(s.logit_rows),
            ustride: s.logit_rows,
            seqs: s.seqs,
            out: b.verdicts.ptr(),
        })
        .map_err(gpu_err)
    }
}
