//! The launches of the products over 8-bit activations (kernels/cuda/qdot.cu, qmma.cu): the
//! activations' 8-bit copy, and which kernel takes a product by its rows and width.

use std::sync::Arc;

use cudarc::driver::{CudaFunction, CudaModule};

use super::args::{MatmulArgs, WeightFormat, WeightView};
use super::ops::{grid, to_i32, Args};
use super::{DevicePtr, Gpu, GpuError, GpuResult, MatmulKernel};

/// The 8-bit-activation products of one weight format (qdot.cu, qmma.cu).
pub(super) struct DotKernels {
    /// One row, a warp per column.
    one: CudaFunction,
    /// One row, a lane per column (for the widest matrices; see `Gpu::dotc_min_cols`).
    lane_per_column: Option<CudaFunction>,
    /// dp4a, a warp per column, up to 2, 4 and 8 rows a pass.
    rows: [CudaFunction; 3],
    /// int8 mma, 16 columns a CTA, 8 and 16 rows a pass.
    mma: [CudaFunction; 2],
}

impl DotKernels {
    /// The kernels of `format` (named `fmt` in the kernels' names) from the two modules.
    pub(super) fn load(
        qdot: &Arc<CudaModule>,
        qmma: &Arc<CudaModule>,
        fmt: &str,
        format: WeightFormat,
    ) -> GpuResult<Self> {
        let f = |m: &Arc<CudaModule>, name: &str| {
            m.load_function(name)
                .map_err(GpuError::driver("finding a kernel in specd's PTX"))
        };
        let g = |rg: usize| f(qdot, &format!("dot_{fmt}_r{rg}"));
        let m = |rt: usize| f(qmma, &format!("mdot_{fmt}_t{rt}"));
        Ok(Self {
            one: g(1)?,
            // Q4_K also has a kernel with a lane per column (dotc).
            lane_per_column: match format {
                WeightFormat::Q4K => Some(f(qdot, "dotc_q4k")?),
                _ => None,
            },
            rows: [g(2)?, g(4)?, g(8)?],
            mma: [m(1)?, m(2)?],
        })
    }
}

/// Output columns per CTA of the 8-bit-activation products: a warp each for dp4a (DOT_WARPS in
/// qdot.cu), a lane each for one row of Q4_K (DOTC_COLS), 16 for int8 mma (MDOT_COLS in
/// qmma.cu).
const DOT_WARPS: usize = 8;
const DOTC_COLS: usize = 32;
const MDOT_COLS: usize = 16;

impl Gpu {
    /// Whether [`Gpu::matmul_rows`] over `rows` rows of `w` reads x's 8-bit copy
    /// ([`MatmulArgs::xq`]).
    pub fn reads_q8(&self, w: &WeightView, rows: usize) -> bool {
        let kernel = self.matmul_kernel().resolve(rows, w.rows, w.cols, w.format);
        kernel == MatmulKernel::Dot
    }

    /// x's 8-bit copy: `rows` rows of `k` bf16 activations at `x` quantized to int8 per 32
    /// values into `xq` ([`super::q8_bytes`]`(rows, k)` bytes; see qdot.cu).
    pub fn quantize_rows(
        &self,
        x: DevicePtr,
        rows: usize,
        k: usize,
        xq: DevicePtr,
    ) -> GpuResult<()> {
        if rows == 0 {
            return Ok(());
        }
        let meta = xq + (rows * k) as u64;
        let (ri, ki) = (to_i32(rows), to_i32(k));
        let mut b = Args::default();
        b.arg(&x).arg(&ri).arg(&ki).arg(&xq).arg(&meta);
        let chunks = rows * k / 32;
        self.launch(
            &self.kernels().quantize_rows,
            grid(chunks.div_ceil(8), 256),
            b,
        )
    }

    /// The product over 8-bit activations (qdot.cu), quantizing x first unless the caller has.
    pub(super) fn dot_product(&self, a: &MatmulArgs) -> GpuResult<()> {
        if a.xq == 0 {
            return Err(GpuError::MissingBuffer {
                what: "room for the activations' 8-bit copy (MatmulArgs::xq)",
            });
        }
        let (n, k) = (a.w.rows, a.w.cols);
        if !a.xq_ready {
            self.quantize_rows(a.x, a.rows, k, a.xq)?;
        }
        let fns = &self.kernels().dot[&a.w.format.index()];
        let mma_from = self.dot_mma_from();
        // (function, output columns per CTA, rows per CTA pass for the mma kernels' grid rows)
        let (f, cols, pass) = match a.rows {
            1 => match &fns.lane_per_column {
                Some(f) if n >= self.dotc_min_cols() => (f, DOTC_COLS, 0),
                _ => (&fns.one, DOT_WARPS, 0),
            },
            r if r >= mma_from && r <= 8 => (&fns.mma[0], MDOT_COLS, 8),
            r if r >= mma_from => (&fns.mma[1], MDOT_COLS, 16),
            2 => (&fns.rows[0], DOT_WARPS, 0),
            3 | 4 => (&fns.rows[1], DOT_WARPS, 0),
            _ => (&fns.rows[2], DOT_WARPS, 0),
        };
        let (w, rb, xq, y, bias) = (a.w.ptr, a.w.row_bytes(), a.xq, a.y, a.bias);
        let meta = xq + (a.rows * k) as u64;
        let (rows, ni, ki, ldy) = (to_i32(a.rows), to_i32(n), to_i32(k), to_i32(a.ldy));
        let mut b = Args::default();
        b.arg(&w).arg(&rb).arg(&xq).arg(&meta).arg(&y).arg(&bias);
        b.arg(&rows).arg(&ni).arg(&ki).arg(&ldy);
        let mut cfg = grid(n.div_ceil(cols), 256);
        if pass > 0 {
            // The mma kernels' row passes spread over the grid's rows too (many-row products).
            cfg.grid_dim.1 = a.rows.div_ceil(pass).min(65_535) as u32;
        }
        self.launch(f, cfg, b)
    }
}
