//! The quantized product against candle (its quantizer, dequantizer and `QMatMul`), against an
//! f32 product over the dequantized weights, across kernels, and for batch invariance.
//!
//! **Tolerance.** Our kernels (and candle's) quantize each input block to 8-bit codes, so a
//! code differs from its input by at most half a step, `max|x_block| / 254`; the dot product
//! with exact weights then differs from the f32 reference by at most
//! `Σ_blocks max|x_block| / 254 · Σ_i∈block |w_i|` — about 0.5 % of a row's RMS output for random
//! inputs, i.e. well inside the ~1e-2 relative error such products are usually held to, but
//! a bound that holds for every element rather than on average. Float rounding adds a few ulps
//! of the terms' magnitude (`SLACK`). A wrong block layout, scale or sign breaks the bound by
//! orders of magnitude. All kernels compute the same exact integer block sums and fold them in
//! with the same float steps, so they are compared bit for bit.

use std::ops::Range;

use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::{Device, Module, Tensor};
use specd_kernels::cpu::qmatmul::{quant_matmul_scalar, quant_matmul_with, MAX_ROWS};
use specd_kernels::cpu::{
    quant_matmul, ParallelFor, QuantFormat, QuantKernel, QuantMatrix, QuantMatrixError, Serial,
};

const SLACK: f32 = 2e-5;

const FORMATS: [QuantFormat; 4] = [
    QuantFormat::Q4K,
    QuantFormat::Q6K,
    QuantFormat::Q8_0,
    QuantFormat::Q5_0,
];

fn ggml(format: QuantFormat) -> GgmlDType {
    match format {
        QuantFormat::Q4K => GgmlDType::Q4K,
        QuantFormat::Q6K => GgmlDType::Q6K,
        QuantFormat::Q8_0 => GgmlDType::Q8_0,
        QuantFormat::Q5_0 => GgmlDType::Q5_0,
    }
}

/// Shapes `(n, k)` per format: row counts that are not multiples of anything, several blocks
/// per row, an odd number of blocks for the 32-blocks.
fn shapes(format: QuantFormat) -> Vec<(usize, usize)> {
    if format.block_len() == 256 {
        vec![(37, 512), (5, 256), (66, 1536)]
    } else {
        vec![(45, 96), (7, 32), (66, 224), (19, 896)]
    }
}

/// Deterministic pseudo-random values in [-1, 1), with some spread in magnitude.
fn values(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..n)
        .map(|i| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            let u = (s >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0;
            // Vary magnitudes between blocks of 32 so that block scales differ.
            u * (1.0 + ((i / 32) % 5) as f32 * 0.5)
        })
        .collect()
}

struct Fixture {
    format: QuantFormat,
    n: usize,
    k: usize,
    w: Tensor,
    bytes: Vec<u8>,
    /// The weights as candle decodes them.
    deq: Vec<f32>,
}

impl Fixture {
    fn new(format: QuantFormat, n: usize, k: usize, seed: u64) -> Self {
        let w = Tensor::from_vec(values(n * k, seed), (n, k), &Device::Cpu).unwrap();
        let q = QTensor::quantize(&w, ggml(format)).unwrap();
        let bytes = q.data().unwrap().into_owned();
        let deq = q
            .dequantize(&Device::Cpu)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        Self {
            format,
            n,
            k,
            w,
            bytes,
            deq,
        }
    }

    fn matrix(&self) -> QuantMatrix<'_> {
        QuantMatrix::new(self.format, &self.bytes, self.n, self.k).unwrap()
    }

    fn run(&self, kernel: QuantKernel, x: &[f32], par: &dyn ParallelFor) -> Vec<f32> {
        let mut out = vec![f32::NAN; x.len() / self.k * self.n];
        quant_matmul_with(kernel, &self.matrix(), x, &mut out, par);
        out
    }

    /// The f32 product over the dequantized weights (in f64), and for each output the bound of
    /// the module doc.
    fn reference(&self, x: &[f32]) -> (Vec<f32>, Vec<f32>) {
        let block = self.format.block_len();
        let (mut want, mut bound) = (Vec::new(), Vec::new());
        for xr in x.chunks_exact(self.k) {
            for wr in self.deq.chunks_exact(self.k) {
                let dot: f64 = xr.iter().zip(wr).map(|(&a, &b)| a as f64 * b as f64).sum();
                let mut err = 0f32;
                let mut mag = 0f32;
                for (xb, wb) in xr.chunks_exact(block).zip(wr.chunks_exact(block)) {
                    let amax = xb.iter().fold(0f32, |a, v| a.max(v.abs()));
                    let wsum: f32 = wb.iter().map(|w| w.abs()).sum();
                    let wmax = wb.iter().fold(0f32, |a, v| a.max(v.abs()));
                    err += amax / 254.0 * wsum;
                    // k-quant weights are differences of two terms up to ~2·max|w| each.
                    mag += xb.iter().map(|v| v.abs()).sum::<f32>() * 4.0 * wmax;
                }
                want.push(dot as f32);
                bound.push(err * 1.001 + SLACK * mag + 1e-6);
            }
        }
        (want, bound)
    }
}

fn kernels() -> Vec<QuantKernel> {
    [
        QuantKernel::Scalar,
        QuantKernel::Avx2,
        QuantKernel::Avx512Vnni,
    ]
    .into_iter()
    .filter(|k| k.is_available())
    .collect()
}

/// Splits `0..n` in two halves on two threads.
struct TwoThreads;

impl ParallelFor for TwoThreads {
    fn for_each_range(&self, n: usize, f: &(dyn Fn(Range<usize>) + Sync)) {
        std::thread::scope(|s| {
            s.spawn(|| f(0..n / 2));
            s.spawn(|| f(n / 2..n));
        });
    }
}

/// Uneven ranges, last first, on the calling thread.
struct Ragged;

impl ParallelFor for Ragged {
    fn for_each_range(&self, n: usize, f: &(dyn Fn(Range<usize>) + Sync)) {
        let mut cuts = vec![0];
        let mut at = 0;
        for step in [1, 3, 2, 7].iter().cycle() {
            at = (at + step).min(n);
            cuts.push(at);
            if at == n {
                break;
            }
        }
        for w in cuts.windows(2).rev() {
            f(w[0]..w[1]);
        }
    }
}

fn assert_within(got: &[f32], want: &[f32], bound: &[f32], what: &str) {
    for (i, ((&g, &w), &b)) in got.iter().zip(want).zip(bound).enumerate() {
        assert!(
            (g - w).abs() <= b,
            "{what}: output {i}: {g} vs {w} (bound {b})"
        );
    }
}

#[test]
fn dequantize_row_matches_candle_exactly() {
    for format in FORMATS {
        for (n, k) in shapes(format) {
            let f = Fixture::new(format, n, k, 1);
            let mut row = vec![0f32; k];
            for j in 0..n {
                f.matrix().dequantize_row(j, &mut row);
                for (i, (a, b)) in row.iter().zip(&f.deq[j * k..(j + 1) * k]).enumerate() {
                    assert_eq!(
                        a.to_bits(),
                        b.to_bits(),
                        "{format:?} [{j}, {i}]: {a} vs {b}"
                    );
                }
            }
        }
    }
}

#[test]
fn every_kernel_matches_f32_reference_within_quantization_bound() {
    for format in FORMATS {
        for (si, (n, k)) in shapes(format).into_iter().enumerate() {
            let f = Fixture::new(format, n, k, 10 + si as u64);
            let x = values(MAX_ROWS * k, 99 + si as u64);
            for m in 1..=MAX_ROWS {
                let x = &x[..m * k];
                let (want, bound) = f.reference(x);
                for kernel in kernels() {
                    let got = f.run(kernel, x, &Serial);
                    assert_within(
                        &got,
                        &want,
                        &bound,
                        &format!("{format:?} {n}x{k} m={m} {kernel:?}"),
                    );
                }
            }
        }
    }
}

#[test]
fn default_kernel_matches_candle_qmatmul() {
    for format in FORMATS {
        for (si, (n, k)) in shapes(format).into_iter().enumerate() {
            if format == QuantFormat::Q5_0 && (k / 32) % 2 == 1 {
                continue; // candle's Q5_0 dot product asserts an even number of blocks
            }
            let f = Fixture::new(format, n, k, 20 + si as u64);
            let q = QTensor::quantize(&f.w, ggml(format)).unwrap();
            assert_eq!(q.data().unwrap().as_ref(), &f.bytes[..]);
            let qmm = QMatMul::from_qtensor(q).unwrap();
            for m in [1, 2, 5, 6, 8, 16] {
                let x = values(m * k, 7 * m as u64 + si as u64);
                let xt = Tensor::from_vec(x.clone(), (m, k), &Device::Cpu).unwrap();
                let theirs = qmm
                    .forward(&xt)
                    .unwrap()
                    .flatten_all()
                    .unwrap()
                    .to_vec1::<f32>()
                    .unwrap();
                let mut ours = vec![0f32; m * n];
                quant_matmul(&f.matrix(), &x, &mut ours, &Serial);
                // Both sides round the inputs: twice the bound.
                let (_, bound) = f.reference(&x);
                let bound: Vec<f32> = bound.iter().map(|b| 2.0 * b).collect();
                assert_within(&ours, &theirs, &bound, &format!("{format:?} {n}x{k} m={m}"));
            }
        }
    }
}

#[test]
fn all_kernels_are_bit_identical_to_scalar() {
    for format in FORMATS {
        for (si, (n, k)) in shapes(format).into_iter().enumerate() {
            let f = Fixture::new(format, n, k, 30 + si as u64);
            let x = values(MAX_ROWS * k, 31 + si as u64);
            let scalar = f.run(QuantKernel::Scalar, &x, &Serial);
            for kernel in kernels() {
                let got = f.run(kernel, &x, &Serial);
                for (i, (g, s)) in got.iter().zip(&scalar).enumerate() {
                    assert_eq!(
                        g.to_bits(),
                        s.to_bits(),
                        "{format:?} {n}x{k} {kernel:?} output {i}: {g} vs scalar {s}"
                    );
                }
            }
        }
    }
}

#[test]
fn rows_are_bit_identical_alone_in_any_batch_and_any_split() {
    for format in FORMATS {
        for (si, (n, k)) in shapes(format).into_iter().enumerate() {
            let f = Fixture::new(format, n, k, 40 + si as u64);
            let x = values(MAX_ROWS * k, 41 + si as u64);
            let other = values(MAX_ROWS * k, 42 + si as u64);
            let scalar = f.run(QuantKernel::Scalar, &x, &Serial);
            for kernel in kernels() {
                let full = f.run(kernel, &x, &Serial);
                assert!(
                    full.iter()
                        .zip(&scalar)
                        .all(|(a, b)| a.to_bits() == b.to_bits()),
                    "{format:?} {n}x{k} {kernel:?}: the batch differs from the scalar kernel's"
                );
                for par in [&TwoThreads as &dyn ParallelFor, &Ragged] {
                    let split = f.run(kernel, &x, par);
                    assert!(
                        full.iter()
                            .zip(&split)
                            .all(|(a, b)| a.to_bits() == b.to_bits()),
                        "{format:?} {n}x{k} {kernel:?}: split changed the result"
                    );
                }
                for r in 0..MAX_ROWS {
                    let row = &x[r * k..(r + 1) * k];
                    let alone = f.run(kernel, row, &Serial);
                    // One row split unevenly (the one-row kernels take weight rows four at a
                    // time, then one by one).
                    let alone_split = f.run(kernel, row, &Ragged);
                    assert_eq!(
                        alone.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                        alone_split.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                        "{format:?} {n}x{k} {kernel:?} row {r} alone, split"
                    );
                    // Row r placed at position r / 2 of a batch of r + 1 rows of other inputs:
                    // every batch size once (the kernels take 1-3 rows, 4, and 5 or more
                    // different ways).
                    let pos = r / 2;
                    let mut batch = other[..(r + 1) * k].to_vec();
                    batch[pos * k..(pos + 1) * k].copy_from_slice(row);
                    let within = f.run(kernel, &batch, &Ragged);
                    for j in 0..n {
                        let (a, b, c) = (full[r * n + j], alone[j], within[pos * n + j]);
                        assert!(
                            a.to_bits() == b.to_bits() && a.to_bits() == c.to_bits(),
                            "{format:?} {n}x{k} {kernel:?} row {r} col {j}: {a} / {b} / {c}"
                        );
                    }
                }
            }
        }
    }
}

#[test]
fn zero_rows_give_zero_outputs() {
    for format in FORMATS {
        let f = Fixture::new(format, 9, 512, 50);
        let mut x = values(3 * 512, 51);
        x[512..1024].fill(0.0);
        for kernel in kernels() {
            let out = f.run(kernel, &x, &Serial);
            assert!(
                out[9..18].iter().all(|&v| v == 0.0),
                "{format:?} {kernel:?}"
            );
            assert!(out[..9].iter().any(|&v| v != 0.0));
        }
    }
}

#[test]
fn scalar_entry_point_is_the_scalar_kernel() {
    let f = Fixture::new(QuantFormat::Q4K, 11, 256, 60);
    let x = values(3 * 256, 61);
    let mut out = vec![0f32; 3 * 11];
    quant_matmul_scalar(&f.matrix(), &x, &mut out, &Serial);
    let want = f.run(QuantKernel::Scalar, &x, &Serial);
    assert!(out
        .iter()
        .zip(&want)
        .all(|(a, b)| a.to_bits() == b.to_bits()));
}

#[test]
fn constructor_rejects_bad_sizes_with_a_message() {
    let data = vec![0u8; 2 * 144];
    let err = QuantMatrix::new(QuantFormat::Q4K, &data, 2, 200).unwrap_err();
    assert!(matches!(
        err,
        QuantMatrixError::Cols {
            cols: 200,
            block_len: 256,
            ..
        }
    ));
    assert!(
        err.to_string().contains("multiple of the block length 256"),
        "{err}"
    );
    let err = QuantMatrix::new(QuantFormat::Q4K, &data, 3, 256).unwrap_err();
    assert!(matches!(
        err,
        QuantMatrixError::DataLen {
            expected: 432,
            actual: 288,
            ..
        }
    ));
    assert!(
        err.to_string().contains("expected 432 bytes, got 288"),
        "{err}"
    );
    assert!(QuantMatrix::new(QuantFormat::Q8_0, &[], 0, 0).is_err());
    assert!(QuantMatrix::new(QuantFormat::Q8_0, &data[..68], 1, 64).is_ok());
    assert!(QuantMatrix::new(QuantFormat::Q5_0, &data[..66], 1, 96).is_ok());
    assert!(QuantMatrix::new(QuantFormat::Q6K, &data[..210], 1, 256).is_ok());
    assert!(QuantMatrix::new(QuantFormat::Q6K, &data[..209], 1, 256).is_err());
}

#[test]
#[should_panic(expected = "not 1 to 16 rows")]
fn more_than_max_rows_panics() {
    let data = vec![0u8; 34];
    let w = QuantMatrix::new(QuantFormat::Q8_0, &data, 1, 32).unwrap();
    let mut out = vec![0f32; 17];
    quant_matmul(&w, &[0.0; 17 * 32], &mut out, &Serial);
}

#[test]
#[should_panic(expected = "out must be 2 x 1")]
fn wrong_output_length_panics() {
    let data = vec![0u8; 34];
    let w = QuantMatrix::new(QuantFormat::Q8_0, &data, 1, 32).unwrap();
    let mut out = vec![0f32; 3];
    quant_matmul(&w, &[0.0; 64], &mut out, &Serial);
}
