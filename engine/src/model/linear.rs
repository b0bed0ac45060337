//! Weight matrices applied as `x · Wᵀ`, quantized or dense.

use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::{Device, Module, Tensor};
use specd_kernels::cpu as kern;

use crate::error::Result;

/// Rows one kernel call takes; longer inputs go through in groups of this many. Every product
/// (quantized in the formats of `kernels/`, or dense) is computed per row in a way that does
/// not depend on the other rows of the batch, so verification of up to `SMALL_BATCH_ROWS - 1`
/// drafts computes, bit for bit, the logits one-token decode steps compute (and prefill the
/// same as decode). That, not luck with near-ties, is why greedy speculative output equals
/// plain greedy output.
pub const SMALL_BATCH_ROWS: usize = kern::qmatmul::MAX_ROWS;

/// Work split over candle's own worker pool, the one its matrix products use, so that no
/// second pool competes for the same cores.
pub(crate) struct CandlePool;

impl kern::ParallelFor for CandlePool {
    fn for_each_range(&self, n: usize, f: &(dyn Fn(std::ops::Range<usize>) + Sync)) {
        candle_core::utils::barrier_pool().execute_chunked(n, f);
    }
}

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
        if x.rank() == 2 {
            let (m, n) = (x.dims()[0], self.rows());
            let xs = x
                .to_dtype(candle_core::DType::F32)?
                .flatten_all()?
                .to_vec1::<f32>()?;
            let mut out = vec![0f32; m * n];
            if self.kernel_into(&xs, &mut out)? {
                return Ok(Tensor::from_vec(out, (m, n), &Device::Cpu)?);
            }
        }
        Ok(self.inner.forward(x)?)
    }

    /// `x · Wᵀ` for the `rows` rows of `x` (flattened), written into `out` (`rows` rows of
    /// [`Linear::rows`] values): the products our kernels compute go straight from `x` to
    /// `out`; other storage goes through candle.
    pub fn forward_into(&self, x: &[f32], rows: usize, out: &mut [f32]) -> Result<()> {
        assert_eq!(
            out.len(),
            rows * self.rows(),
            "Linear::forward_into: output size"
        );
        if self.kernel_into(x, out)? {
            return Ok(());
        }
        let t = Tensor::from_slice(x, (rows, x.len() / rows.max(1)), &Device::Cpu)?;
        let y = self.inner.forward(&t)?.flatten_all()?.to_vec1::<f32>()?;
        out.copy_from_slice(&y);
        Ok(())
    }

    /// The product through our kernels, in groups of [`SMALL_BATCH_ROWS`] rows, each weight
    /// row read from memory once per group; `false` (nothing written) for storage they lack.
    ///
    /// - Quantized in a format of `kernels/`: the small-batch quantized product.
    /// - Dense (the tiny test models and unquantized checkpoints; f16/bf16 widened first): one
    ///   dot product per output, batch-invariant for any number of rows; speed matters less
    ///   there than exactness.
    fn kernel_into(&self, x: &[f32], out: &mut [f32]) -> Result<bool> {
        let n = self.rows();
        match &self.inner {
            QMatMul::QTensor(q) => {
                let Some(format) = kernel_format(q.dtype()) else {
                    return Ok(false);
                };
                let (data, k) = (q.data()?, q.shape().dims2()?.1);
                let Ok(w) = kern::QuantMatrix::new(format, &data, n, k) else {
                    return Ok(false);
                };
                for (xg, og) in x
                    .chunks(SMALL_BATCH_ROWS * k)
                    .zip(out.chunks_mut(SMALL_BATCH_ROWS * n))
                {
                    kern::quant_matmul(&w, xg, og, &CandlePool);
                }
                Ok(true)
            }
            QMatMul::Tensor(w) | QMatMul::TensorF16(w) => {
                let k = w.dims2()?.1;
                let w = w.to_dtype(candle_core::DType::F32)?.contiguous()?;
                let (storage, layout) = w.storage_and_layout();
                let candle_core::Storage::Cpu(cpu) = &*storage else {
                    return Err(
                        candle_core::Error::Msg("dense weights live on the CPU".into()).into(),
                    );
                };
                let start = layout.start_offset();
                let ws = &cpu.as_slice::<f32>()?[start..start + n * k];
                for (xg, og) in x
                    .chunks(SMALL_BATCH_ROWS * k)
                    .zip(out.chunks_mut(SMALL_BATCH_ROWS * n))
                {
                    kern::dense_matmul(ws, xg, k, og, &CandlePool);
                }
                Ok(true)
            }
        }
    }

    /// Output rows of the matrix.
    pub fn rows(&self) -> usize {
        match &self.inner {
            QMatMul::QTensor(q) => q.shape().dims()[0],
            QMatMul::Tensor(t) | QMatMul::TensorF16(t) => t.dims()[0],
        }
    }

    /// A matrix of the first `rows` output rows.
    pub fn first_rows(&self, rows: usize) -> Result<Self> {
        self.select_rows(&(0..rows as u32).collect::<Vec<_>>())
    }

    /// A matrix of the output rows `ids`, in that order (quantized rows are runs of whole
    /// blocks, so this copies their bytes and the rows stay quantized).
    pub fn select_rows(&self, ids: &[u32]) -> Result<Self> {
        let n = self.rows();
        if let Some(&bad) = ids.iter().find(|&&i| i as usize >= n) {
            return Err(crate::error::Error::InvalidRequest(format!(
                "row {bad} of a matrix of {n} rows"
            )));
        }
        let index = || Tensor::from_slice(ids, ids.len(), &Device::Cpu);
        Ok(Self::new(match &self.inner {
            QMatMul::QTensor(q) => {
                let k = q.shape().dims2()?.1;
                let data = q.data()?;
                let row = data.len() / n;
                let mut bytes = Vec::with_capacity(row * ids.len());
                for &i in ids {
                    bytes.extend_from_slice(&data[i as usize * row..(i as usize + 1) * row]);
                }
                let storage = candle_core::quantized::QStorage::from_data(
                    std::borrow::Cow::Owned(bytes),
                    &Device::Cpu,
                    q.dtype(),
                )?;
                QMatMul::from_qtensor(QTensor::new(storage, (ids.len(), k))?)?
            }
            QMatMul::Tensor(t) => QMatMul::Tensor(t.index_select(&index()?, 0)?.contiguous()?),
            QMatMul::TensorF16(t) => {
                QMatMul::TensorF16(t.index_select(&index()?, 0)?.contiguous()?)
            }
        }))
    }

    /// Rows of the matrix for the given ids (embedding lookup), dequantized.
    pub fn embedding(&self, ids: &Tensor) -> Result<Tensor> {
        Ok(self.inner.embedding(ids)?)
    }
}

/// Our kernel's block format for a candle dtype, if it has one.
fn kernel_format(dtype: GgmlDType) -> Option<kern::QuantFormat> {
    Some(match dtype {
        GgmlDType::Q4K => kern::QuantFormat::Q4K,
        GgmlDType::Q6K => kern::QuantFormat::Q6K,
        GgmlDType::Q8_0 => kern::QuantFormat::Q8_0,
        GgmlDType::Q5_0 => kern::QuantFormat::Q5_0,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Deterministic values in about [-2, 2).
    fn values(n: usize, seed: u64) -> Vec<f32> {
        let mut x = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (0..n)
            .map(|_| {
                x = x
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((x >> 40) as f32 / (1u64 << 24) as f32) * 4.0 - 2.0
            })
            .collect()
    }

    #[test]
    fn kernel_path_matches_the_f32_product_for_every_native_format_and_row_count() {
        let k = 512;
        let w = Tensor::from_vec(values(48 * k, 1), (48, k), &Device::Cpu).unwrap();
        for (dtype, act_block) in [
            (GgmlDType::Q4K, 256),
            (GgmlDType::Q6K, 256),
            (GgmlDType::Q8_0, 32),
            (GgmlDType::Q5_0, 32),
        ] {
            let q = QTensor::quantize(&w, dtype).unwrap();
            assert!(kernel_format(dtype).is_some());
            // The product with the weights as stored, in f32.
            let deq = q.dequantize(&Device::Cpu).unwrap();
            let wq = deq.to_vec2::<f32>().unwrap();
            let lin = Linear::new(QMatMul::from_qtensor(q).unwrap());
            for rows in [1, 3, 16, 17, 40] {
                let xv = values(rows * k, rows as u64);
                let x = Tensor::from_vec(xv.clone(), (rows, k), &Device::Cpu).unwrap();
                let ours = lin.forward(&x).unwrap().to_vec2::<f32>().unwrap();
                let exact = x
                    .matmul(&deq.t().unwrap())
                    .unwrap()
                    .to_vec2::<f32>()
                    .unwrap();
                for (r, (ro, re)) in ours.iter().zip(&exact).enumerate() {
                    let xr = &xv[r * k..(r + 1) * k];
                    // Each input is rounded to 8 bits per block: off by at most half a step,
                    // max|x_block| / 254, so an output by at most that times Σ|w| per block.
                    let half_steps: Vec<f32> = xr
                        .chunks(act_block)
                        .map(|b| b.iter().fold(0f32, |m, v| m.max(v.abs())) / 254.0)
                        .collect();
                    for (j, (a, b)) in ro.iter().zip(re).enumerate() {
                        let bound: f32 = wq[j]
                            .iter()
                            .enumerate()
                            .map(|(i, wv)| wv.abs() * half_steps[i / act_block])
                            .sum();
                        assert!(
                            (a - b).abs() <= bound * 1.01 + 1e-3,
                            "{dtype:?} row {r} col {j}: {a} vs {b}, bound {bound}"
                        );
                    }
                }
                // Row 0 alone is bit-identical to row 0 within the batch.
                let alone = lin.forward(&x.narrow(0, 0, 1).unwrap()).unwrap();
                assert_eq!(
                    alone.to_vec2::<f32>().unwrap()[0],
                    ours[0],
                    "{dtype:?}, {rows} rows"
                );
            }
        }
    }
}
