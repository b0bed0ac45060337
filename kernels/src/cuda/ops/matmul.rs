//! The products `y = x · wᵀ + bias` over rows of activations: which kernel takes one, the row
//! kernels (matmul.cu), and the prefill GEMM (gemm.cu) over bf16 weights or a dequantized slice
//! of quantized ones.

use cudarc::driver::LaunchConfig;

use super::launch::{grid, stride_blocks, to_i32, Args};
use crate::cuda::{DevicePtr, Gpu, GpuResult, MatmulArgs, MatmulKernel, WeightFormat};

/// The prefill GEMM's output tile (GEMM_BM, GEMM_BN in gemm.cu) and its dynamic shared memory
/// (GEMM_SHARED: three stages of two 64 x 288 bf16 tiles).
const GEMM_TILE: usize = 64;
pub(super) const GEMM_SHARED_BYTES: u32 = 3 * 2 * 64 * 288 * 2;

impl Gpu {
    /// `y = x · wᵀ + bias` for any number of rows (batch-invariant; see matmul.cu), with the
    /// GPU's default kernel.
    pub fn matmul_rows(&self, a: &MatmulArgs) -> GpuResult<()> {
        self.matmul_rows_with(self.matmul_kernel(), a)
    }

    /// [`Gpu::matmul_rows`] with a chosen kernel.
    pub fn matmul_rows_with(&self, kernel: MatmulKernel, a: &MatmulArgs) -> GpuResult<()> {
        if a.rows == 0 || a.w.rows == 0 {
            return Ok(());
        }
        match kernel.resolve(a.rows, a.w.rows, a.w.cols, a.w.format) {
            MatmulKernel::Gemm => self.gemm(a),
            MatmulKernel::Dot => self.dot_product(a),
            kernel => self.row_product(kernel, a),
        }
    }

    fn row_product(&self, kernel: MatmulKernel, a: &MatmulArgs) -> GpuResult<()> {
        let (f, resident) = &self.kernels().matmul[&(kernel, a.w.format.index())];
        let (w, rb, x, y, bias) = (a.w.ptr, a.w.row_bytes(), a.x, a.y, a.bias);
        let (rows, n, k, ldy) = (
            to_i32(a.rows),
            to_i32(a.w.rows),
            to_i32(a.w.cols),
            to_i32(a.ldy),
        );
        let mut b = Args::default();
        b.arg(&w).arg(&rb).arg(&x).arg(&y).arg(&bias);
        b.arg(&rows).arg(&n).arg(&k).arg(&ldy);
        let (blocks, threads) = kernel.launch_shape(a.w.rows, *resident);
        self.launch(f, grid(blocks, threads), b)
    }

    /// The product through the prefill GEMM: bf16 weights directly; quantized ones dequantized
    /// into the scratch a slice of output columns at a time (as many whole 64-column tiles as
    /// it holds), each slice followed by its GEMM. Without room for one tile, the row kernel
    /// for many rows (the same result).
    fn gemm(&self, a: &MatmulArgs) -> GpuResult<()> {
        let (n, k) = (a.w.rows, a.w.cols);
        if a.w.format == WeightFormat::Bf16 {
            return self.gemm_bf16(a.w.ptr, k, a, 0, n);
        }
        let (scratch, len) = self.dequant_scratch();
        let slice = (len / k) / GEMM_TILE * GEMM_TILE;
        if slice == 0 {
            return self.row_product(MatmulKernel::MANY_ROWS_IN_PLACE, a);
        }
        let (fmt, w, rb, ki) = (
            a.w.format.index() as i32,
            a.w.ptr,
            a.w.row_bytes(),
            to_i32(k),
        );
        for n0 in (0..n).step_by(slice) {
            let count = slice.min(n - n0);
            let (n0i, ci) = (to_i32(n0), to_i32(count));
            let mut b = Args::default();
            b.arg(&fmt)
                .arg(&w)
                .arg(&rb)
                .arg(&n0i)
                .arg(&ci)
                .arg(&ki)
                .arg(&scratch);
            let f = &self.kernels().dequantize_rows;
            self.launch(f, grid(stride_blocks(count * k / 8), 256), b)?;
            self.gemm_bf16(scratch, k, a, n0, count)?;
        }
        Ok(())
    }

    /// Output columns `n0 .. n0 + count` of `a` from the bf16 matrix at `w` (`ldw` elements
    /// per row, its first row being column `n0`).
    fn gemm_bf16(
        &self,
        w: DevicePtr,
        ldw: usize,
        a: &MatmulArgs,
        n0: usize,
        count: usize,
    ) -> GpuResult<()> {
        let (x, y) = (a.x, a.y + (n0 * 4) as u64);
        let bias = if a.bias == 0 {
            0
        } else {
            a.bias + (n0 * 4) as u64
        };
        let (ldw, rows, n, k, ldy) = (
            to_i32(ldw),
            to_i32(a.rows),
            to_i32(count),
            to_i32(a.w.cols),
            to_i32(a.ldy),
        );
        let mut b = Args::default();
        b.arg(&w).arg(&ldw).arg(&x).arg(&y).arg(&bias);
        b.arg(&rows).arg(&n).arg(&k).arg(&ldy);
        let cfg = LaunchConfig {
            grid_dim: (
                a.rows.div_ceil(GEMM_TILE) as u32,
                count.div_ceil(GEMM_TILE) as u32,
                1,
            ),
            block_dim: (256, 1, 1),
            shared_mem_bytes: GEMM_SHARED_BYTES,
        };
        self.launch(&self.kernels().gemm_bf16, cfg, b)
    }
}
