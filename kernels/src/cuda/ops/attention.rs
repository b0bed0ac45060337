//! A layer's launches over the paged KV cache: rotary embedding of the step's rows with their
//! keys and values written into the blocks, and paged attention over a ragged batch.

use cudarc::driver::LaunchConfig;

use super::launch::{to_i32, Args};
use crate::cuda::{AttentionArgs, AttentionScratch, Gpu, GpuResult, RopeArgs};

/// Positions per KV block (kernels/cuda/attention.cu's BLOCK_SLOTS).
const KV_BLOCK_SLOTS: usize = 16;

impl Gpu {
    /// Rotary embedding of the step's rows and the paged KV write of one layer.
    pub fn rope_store_kv(&self, a: &RopeArgs) -> GpuResult<()> {
        if a.rows == 0 {
            return Ok(());
        }
        let f = &self.kernels().rope_store_kv;
        let (nh, nkv, hd) = (to_i32(a.n_heads), to_i32(a.n_kv), to_i32(a.head_dim));
        let inter = i32::from(a.interleaved);
        let (cb, layer, nl) = (
            to_i32(a.kv.chunk_blocks),
            to_i32(a.layer),
            to_i32(a.kv.n_layers),
        );
        let mut b = Args::default();
        b.arg(&a.qkv)
            .arg(&nh)
            .arg(&nkv)
            .arg(&hd)
            .arg(&a.cos_sin)
            .arg(&a.pos)
            .arg(&a.slot);
        b.arg(&inter)
            .arg(&a.kv.chunks)
            .arg(&cb)
            .arg(&layer)
            .arg(&nl);
        let cfg = LaunchConfig {
            grid_dim: (a.rows as u32, (a.n_heads + a.n_kv) as u32, 1),
            block_dim: ((a.head_dim / 2).next_multiple_of(32).min(1024) as u32, 1, 1),
            shared_mem_bytes: 0,
        };
        self.launch(f, cfg, b)
    }

    /// Paged attention for a ragged batch of query rows.
    pub fn paged_attention(&self, a: &AttentionArgs) -> GpuResult<()> {
        if a.rows == 0 {
            return Ok(());
        }
        assert!(
            a.head_dim <= 256 && a.head_dim.is_multiple_of(8),
            "head_dim must be a multiple of 8 up to 256"
        );
        let which = match a.head_dim {
            64 => 0,
            128 => 1,
            _ => 2,
        };
        let f = &self.kernels().paged_attention[which];
        let (qs, cb, layer, nl) = (
            to_i32(a.q_stride),
            to_i32(a.kv.chunk_blocks),
            to_i32(a.layer),
            to_i32(a.kv.n_layers),
        );
        let (tw, nh, nkv, hd, win) = (
            to_i32(a.table_width),
            to_i32(a.n_heads),
            to_i32(a.n_kv),
            to_i32(a.head_dim),
            to_i32(a.window),
        );
        let mut b = Args::default();
        b.arg(&a.q)
            .arg(&qs)
            .arg(&a.kv.chunks)
            .arg(&cb)
            .arg(&layer)
            .arg(&nl);
        b.arg(&a.row_seq).arg(&a.row_kv_len).arg(&a.tables).arg(&tw);
        let splits = AttentionScratch::grid_splits(
            a.splits.as_ref(),
            a.rows,
            a.n_heads,
            a.head_dim,
            a.table_width * KV_BLOCK_SLOTS,
        );
        let (partials, counters) = a.splits.map_or((0, 0), |s| (s.partials, s.counters));
        b.arg(&nh)
            .arg(&nkv)
            .arg(&hd)
            .arg(&a.scale)
            .arg(&win)
            .arg(&partials)
            .arg(&counters)
            .arg(&a.out);
        let cfg = LaunchConfig {
            grid_dim: (a.rows.max(1) as u32, a.n_heads as u32, splits as u32),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        };
        self.launch(f, cfg, b)
    }
}
