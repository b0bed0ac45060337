//! Weight matrices applied as `x · Wᵀ`, quantized or dense.

use candle_core::quantized::k_quants::{self, BlockQ4K, GgmlType};
use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::{Device, Module, Tensor};
use specd_kernels::cpu as kern;

use crate::error::Result;

/// Rows up to which a product runs through our per-row kernels, whose result for one row does
/// not depend on the other rows of the batch. Verification of up to `SMALL_BATCH_ROWS - 1`
/// drafts then computes, bit for bit, the logits that one-token decode steps compute, which is
/// what makes greedy speculative output identical to plain greedy output.
pub const SMALL_BATCH_ROWS: usize = 16;

/// Work split over candle's own worker pool, the one its matrix products use, so that no
/// second pool competes for the same cores.
pub(crate) struct CandlePool;

impl kern::ParallelFor for CandlePool {
    fn for_each_range(&self, n: usize, f: &(dyn Fn(std::ops::Range<usize>) + Sync)) {
        candle_core::utils::barrier_pool().execute_chunked(n, f);
    }
}

/// Rows up to which a Q4_K product streams the weights in their file layout (decode steps).
/// candle's default for Q4_K repacks weights into tiles that suit many rows but are a third
/// larger; with one or two rows the product is bound by memory traffic and the compact layout
/// wins (measured on the real 1.5B: see BENCHMARKS.md).
const COMPACT_MAX_ROWS: usize = 2;

/// A weight matrix of shape `[out, in]`.
#[derive(Debug, Clone)]
pub struct Linear {
    inner: QMatMul,
}

impl Linear {
    /// Wraps candle's matrix (quantized, or a dense f32 tensor).
    pub fn new(inner: QMatMul) -> Self {
        Self { inner }
    }

    /// The wrapped candle matrix.
    pub fn inner(&self) -> &QMatMul {
        &self.inner
    }

    /// `x · Wᵀ` for `x` of shape `[rows, in]`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if let QMatMul::Tensor(w) = &self.inner {
            if x.rank() == 2 {
                return dense_rows(w, x);
            }
        }
        if let QMatMul::QTensor(q) = &self.inner {
            let rows = x.dims()[0];
            if q.dtype() == GgmlDType::Q4K && rows <= COMPACT_MAX_ROWS && x.rank() == 2 {
                if let Some(y) = compact_matmul::<BlockQ4K>(q, x)? {
                    return Ok(y);
                }
            }
        }
        Ok(self.inner.forward(x)?)
    }

    /// Output rows of the matrix.
    pub fn rows(&self) -> usize {
        match &self.inner {
            QMatMul::QTensor(q) => q.shape().dims()[0],
            QMatMul::Tensor(t) | QMatMul::TensorF16(t) => t.dims()[0],
        }
    }

    /// A matrix of the first `rows` output rows (quantized rows are runs of whole blocks, so
    /// this copies their bytes).
    pub fn first_rows(&self, rows: usize) -> Result<Self> {
        Ok(Self::new(match &self.inner {
            QMatMul::QTensor(q) => {
                let (n, k) = q.shape().dims2()?;
                let data = q.data()?;
                let bytes = data.len() / n * rows;
                let storage = candle_core::quantized::QStorage::from_data(
                    std::borrow::Cow::Owned(data[..bytes].to_vec()),
                    &Device::Cpu,
                    q.dtype(),
                )?;
                QMatMul::from_qtensor(QTensor::new(storage, (rows, k))?)?
            }
            QMatMul::Tensor(t) => QMatMul::Tensor(t.narrow(0, 0, rows)?.contiguous()?),
            QMatMul::TensorF16(t) => QMatMul::TensorF16(t.narrow(0, 0, rows)?.contiguous()?),
        }))
    }

    /// Rows of the matrix for the given ids (embedding lookup), dequantized.
    pub fn embedding(&self, ids: &Tensor) -> Result<Tensor> {
        Ok(self.inner.embedding(ids)?)
    }
}

/// A dense product, one dot product per output element, so batch-invariant for any number of
/// rows (dense weights are the tiny test models and unquantized checkpoints; speed matters less
/// there than exactness). Rows go in groups of [`SMALL_BATCH_ROWS`] so that each weight row is
/// read from memory once per group.
fn dense_rows(w: &Tensor, x: &Tensor) -> Result<Tensor> {
    let (n, k) = w.dims2()?;
    let m = x.dims()[0];
    let w = w.to_dtype(candle_core::DType::F32)?.contiguous()?;
    let x = x
        .to_dtype(candle_core::DType::F32)?
        .contiguous()?
        .flatten_all()?;
    let xs = x.to_vec1::<f32>()?;
    let (storage, layout) = w.storage_and_layout();
    let candle_core::Storage::Cpu(cpu) = &*storage else {
        return Err(candle_core::Error::Msg("dense weights live on the CPU".into()).into());
    };
    let ws = &cpu.as_slice::<f32>()?[layout.start_offset()..layout.start_offset() + n * k];
    let mut out = vec![0f32; m * n];
    for (xg, og) in xs
        .chunks(SMALL_BATCH_ROWS * k)
        .zip(out.chunks_mut(SMALL_BATCH_ROWS * n))
    {
        kern::dense_matmul(ws, xg, k, og, &CandlePool);
    }
    Ok(Tensor::from_vec(out, (m, n), &Device::Cpu)?)
}

/// The product through candle's per-row dot products on the weights as stored. `None` when the
/// storage cannot be viewed as blocks of `T` (then the caller takes candle's default path).
fn compact_matmul<T: GgmlType>(q: &QTensor, x: &Tensor) -> Result<Option<Tensor>> {
    let (n, k) = q.shape().dims2()?;
    let (m, xk) = x.dims2()?;
    if xk != k || k % T::BLCK_SIZE != 0 || x.dtype() != candle_core::DType::F32 {
        return Ok(None);
    }
    let data = q.data()?;
    let size = std::mem::size_of::<T>();
    if data.len() != n * k / T::BLCK_SIZE * size
        || data.as_ptr().align_offset(std::mem::align_of::<T>()) != 0
    {
        return Ok(None);
    }
    // SAFETY: the bytes are the tensor's own block storage (a `Vec` of `T` inside candle), the
    // pointer is aligned for `T` and the length is a whole number of blocks, checked above.
    let blocks: &[T] =
        unsafe { std::slice::from_raw_parts(data.as_ptr().cast::<T>(), data.len() / size) };
    let x = x.contiguous()?;
    let (storage, layout) = x.storage_and_layout();
    let candle_core::Storage::Cpu(cpu) = &*storage else {
        return Ok(None);
    };
    let lhs = &cpu.as_slice::<f32>()?[layout.start_offset()..layout.start_offset() + m * k];
    let mut dst = vec![0f32; m * n];
    k_quants::matmul((m, k, n), lhs, blocks, &mut dst)?;
    Ok(Some(Tensor::from_vec(dst, (m, n), &Device::Cpu)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compact_path_matches_candles_default() {
        let w = Tensor::randn(0f32, 1.0, (64, 512), &Device::Cpu).unwrap();
        let q = QTensor::quantize(&w, GgmlDType::Q4K).unwrap();
        let lin = Linear::new(QMatMul::from_qtensor(q).unwrap());
        for rows in 1..=3 {
            let x = Tensor::randn(0f32, 1.0, (rows, 512), &Device::Cpu).unwrap();
            let ours = lin.forward(&x).unwrap().to_vec2::<f32>().unwrap();
            let theirs = lin.inner().forward(&x).unwrap().to_vec2::<f32>().unwrap();
            for (a, b) in ours.iter().flatten().zip(theirs.iter().flatten()) {
                assert!((a - b).abs() <= 1e-3 * (1.0 + b.abs()), "{a} vs {b}");
            }
        }
    }
}
