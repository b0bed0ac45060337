//! The launches that work row by row on activations: the embedding lookup, the residual add
//! with RMSNorm, the SiLU gate, and gathering selected rows.

use super::launch::{grid, stride_blocks, to_i32, Args};
use crate::cuda::{DevicePtr, Gpu, GpuResult, WeightView};

impl Gpu {
    /// `out[r] = w[ids[r]]` as f32, for `rows` ids (embedding lookup; a negative id gives zeros).
    pub fn embed_rows(
        &self,
        w: &WeightView,
        ids: DevicePtr,
        rows: usize,
        out: DevicePtr,
    ) -> GpuResult<()> {
        if rows == 0 {
            return Ok(());
        }
        let f = &self.kernels().embed_rows;
        let (fmt, ptr, rb, k) = (
            w.format.index() as i32,
            w.ptr,
            w.row_bytes(),
            to_i32(w.cols),
        );
        let mut b = Args::default();
        b.arg(&fmt).arg(&ptr).arg(&rb).arg(&ids).arg(&k).arg(&out);
        self.launch(f, grid(rows, 128), b)
    }

    /// For each of `rows` rows of width `d`: `x += delta` (when `delta` is not 0), then
    /// `out = bf16(rms_norm(x) · weight)`.
    #[allow(clippy::too_many_arguments)]
    pub fn add_rms_norm(
        &self,
        x: DevicePtr,
        delta: DevicePtr,
        weight: DevicePtr,
        eps: f32,
        out: DevicePtr,
        d: usize,
        rows: usize,
    ) -> GpuResult<()> {
        if rows == 0 {
            return Ok(());
        }
        let f = &self.kernels().add_rms_norm;
        let dd = to_i32(d);
        let mut b = Args::default();
        b.arg(&x)
            .arg(&delta)
            .arg(&weight)
            .arg(&eps)
            .arg(&out)
            .arg(&dd);
        let threads = if d >= 2048 { 1024 } else { 256 };
        self.launch(f, grid(rows, threads), b)
    }

    /// `out[r, i] = bf16(silu(gu[r, i]) · gu[r, inter + i])`.
    pub fn silu_mul(
        &self,
        gu: DevicePtr,
        out: DevicePtr,
        inter: usize,
        rows: usize,
    ) -> GpuResult<()> {
        if rows == 0 {
            return Ok(());
        }
        let f = &self.kernels().silu_mul;
        let (n, r) = (to_i32(inter), to_i32(rows));
        let mut b = Args::default();
        b.arg(&gu).arg(&out).arg(&n).arg(&r);
        self.launch(f, grid(stride_blocks(inter * rows), 256), b)
    }

    /// `dst[j] = src[sel[j]]` for `rows` selected rows of `d` bf16 values.
    pub fn gather_rows(
        &self,
        src: DevicePtr,
        sel: DevicePtr,
        d: usize,
        rows: usize,
        dst: DevicePtr,
    ) -> GpuResult<()> {
        if rows == 0 {
            return Ok(());
        }
        let f = &self.kernels().gather_rows;
        let dd = to_i32(d);
        let mut b = Args::default();
        b.arg(&src).arg(&sel).arg(&dd).arg(&dst);
        self.launch(f, grid(rows, 256), b)
    }
}
