//! Every CUDA kernel against its CPU reference, on a GPU (feature `cuda`; run by
//! `scripts/gpu/check`, never by `scripts/test`).
//!
//! Inputs are fresh random values each run (the seed is printed, `SPECD_CHECK_SEED` repeats a
//! run); outputs are poisoned with NaN before each launch, so an element a kernel fails to
//! write fails the comparison. Shapes are ragged (row counts that are not multiples of the
//! kernels' tiles, sequences of different lengths) and cover GQA ratios 1, 6 and 7.
#![cfg(feature = "cuda")]

use std::sync::Arc;

use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};
use specd_kernels::cpu::{
    self, sample, AttentionShape, KvChunks, QuantFormat, QuantMatrix, Serial,
};
use specd_kernels::cuda::{
    bf16_to_f32, f32_to_bf16, q8_bytes, AttentionArgs, AttentionScratch, Buffer, Gpu, KvLayout,
    MatmulArgs, MatmulKernel, RejectionArgs, RopeArgs, WeightFormat, WeightView,
};

/// A small xorshift generator: each test draws from its own stream of the run's seed.
struct Rng(u64);

impl Rng {
    fn new(salt: u64) -> Self {
        let seed = std::env::var("SPECD_CHECK_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_nanos() as u64
            });
        eprintln!("seed {seed} (SPECD_CHECK_SEED={seed} repeats this run)");
        Self((seed ^ salt.wrapping_mul(0x9e37_79b9_7f4a_7c15)) | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// Uniform in [0, 1).
    fn unit(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 24) as f32
    }

    /// Uniform in [-a, a).
    fn sym(&mut self, a: f32) -> f32 {
        (self.unit() * 2.0 - 1.0) * a
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn vec(&mut self, n: usize, a: f32) -> Vec<f32> {
        (0..n).map(|_| self.sym(a)).collect()
    }
}

fn gpu() -> Arc<Gpu> {
    let ordinal = std::env::var("SPECD_CHECK_GPU")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    Gpu::open(ordinal).unwrap_or_else(|e| panic!("these tests need a GPU: {e}"))
}

const ADVICE: &str = "a test";

fn poisoned_f32(g: &Gpu, n: usize) -> Buffer<f32> {
    g.upload(&vec![f32::NAN; n], "test output", ADVICE).unwrap()
}

fn poisoned_bf16(g: &Gpu, n: usize) -> Buffer<u16> {
    g.upload(&vec![0x7fc0u16; n], "test output", ADVICE)
        .unwrap()
}

fn bf16(v: &[f32]) -> Vec<u16> {
    v.iter().map(|&x| f32_to_bf16(x)).collect()
}

fn round_bf16(x: f32) -> f32 {
    bf16_to_f32(f32_to_bf16(x))
}

fn read_f32(g: &Gpu, b: &Buffer<f32>) -> Vec<f32> {
    g.read(b.ptr(), b.len()).unwrap()
}

fn read_bf16(g: &Gpu, b: &Buffer<u16>) -> Vec<f32> {
    g.read::<u16>(b.ptr(), b.len())
        .unwrap()
        .into_iter()
        .map(bf16_to_f32)
        .collect()
}

/// ‖a − b‖ / ‖b‖, failing on any NaN (an unwritten, poisoned element).
fn rel_err(a: &[f32], b: &[f32], what: &str) -> f64 {
    assert_eq!(a.len(), b.len(), "{what}: lengths");
    if let Some(i) = a.iter().position(|x| x.is_nan()) {
        panic!("{what}: element {i} is NaN (not written?)");
    }
    let num: f64 = a
        .iter()
        .zip(b)
        .map(|(&x, &y)| (x as f64 - y as f64).powi(2))
        .sum();
    let den: f64 = b.iter().map(|&y| (y as f64).powi(2)).sum();
    (num / den.max(1e-30)).sqrt()
}

/// Each element within `ulps` bf16 steps of the reference (relative to its magnitude).
fn assert_bf16_close(got: &[f32], want: &[f32], ulps: f32, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let tol = ulps * (w.abs().max(1e-6) / 128.0) + 1e-6;
        assert!((g - w).abs() <= tol, "{what}: element {i}: {g} vs {w}");
    }
}

fn ggml(f: QuantFormat) -> GgmlDType {
    match f {
        QuantFormat::Q4K => GgmlDType::Q4K,
        QuantFormat::Q6K => GgmlDType::Q6K,
        QuantFormat::Q8_0 => GgmlDType::Q8_0,
        QuantFormat::Q5_0 => GgmlDType::Q5_0,
    }
}

fn gpu_format(f: QuantFormat) -> WeightFormat {
    match f {
        QuantFormat::Q4K => WeightFormat::Q4K,
        QuantFormat::Q6K => WeightFormat::Q6K,
        QuantFormat::Q8_0 => WeightFormat::Q8_0,
        QuantFormat::Q5_0 => WeightFormat::Q5_0,
    }
}

/// A random matrix in `format` (None: bf16): its bytes, its exact values as the tensor-core
/// kernels see them (dequantized by our CPU decoder, rounded to bf16), and as the
/// 8-bit-activation kernels do (not rounded).
fn random_matrix(
    rng: &mut Rng,
    format: Option<QuantFormat>,
    n: usize,
    k: usize,
) -> (WeightFormat, Vec<u8>, Vec<f32>, Vec<f32>) {
    let values: Vec<f32> = (0..n * k)
        .map(|i| rng.sym(1.0) * (1.0 + (i / 32 % 5) as f32))
        .collect();
    match format {
        None => {
            let bits = bf16(&values);
            let exact: Vec<f32> = bits.iter().map(|&b| bf16_to_f32(b)).collect();
            (
                WeightFormat::Bf16,
                bits.iter().flat_map(|b| b.to_le_bytes()).collect(),
                exact.clone(),
                exact,
            )
        }
        Some(f) => {
            let t = Tensor::from_vec(values, (n, k), &Device::Cpu).unwrap();
            let q = QTensor::quantize(&t, ggml(f)).unwrap();
            let bytes = q.data().unwrap().into_owned();
            let m = QuantMatrix::new(f, &bytes, n, k).unwrap();
            let mut exact = vec![0f32; n * k];
            for (j, row) in exact.chunks_exact_mut(k).enumerate() {
                m.dequantize_row(j, row);
            }
            let rounded = exact.iter().copied().map(round_bf16).collect();
            (gpu_format(f), bytes, rounded, exact)
        }
    }
}

/// [`random_matrix`] uploaded: its buffer, its view and its exact values (bf16-rounded).
fn upload_matrix(
    g: &Gpu,
    rng: &mut Rng,
    format: Option<QuantFormat>,
    n: usize,
    k: usize,
) -> (Buffer<u8>, WeightView, Vec<f32>) {
    let (buf, view, rounded, _) = upload_matrix_exact(g, rng, format, n, k);
    (buf, view, rounded)
}

/// [`upload_matrix`], with the values unrounded too.
fn upload_matrix_exact(
    g: &Gpu,
    rng: &mut Rng,
    format: Option<QuantFormat>,
    n: usize,
    k: usize,
) -> (Buffer<u8>, WeightView, Vec<f32>, Vec<f32>) {
    let (format, bytes, exact, unrounded) = random_matrix(rng, format, n, k);
    let buf = g.upload(&bytes, "weights", ADVICE).unwrap();
    let view = WeightView {
        format,
        ptr: buf.ptr(),
        rows: n,
        cols: k,
    };
    (buf, view, exact, unrounded)
}

/// The 8-bit copy of activation rows as qdot.cu's `quantize_rows` makes it, worked out here
/// independently: per 32 values d = amax / 127 and q = round(x · (127 / amax)), ties to even;
/// returns the values, and per chunk d and the sums of q over its two halves of 16.
fn quantize_q8(x: &[f32]) -> (Vec<i8>, Vec<(f32, [i32; 2])>) {
    let mut q = Vec::with_capacity(x.len());
    let mut meta = Vec::with_capacity(x.len() / 32);
    for chunk in x.chunks_exact(32) {
        let amax = chunk.iter().fold(0f32, |m, v| m.max(v.abs()));
        let inv = if amax > 0.0 { 127.0 / amax } else { 0.0 };
        let mut sum = [0; 2];
        for (i, &v) in chunk.iter().enumerate() {
            let qv = ((v * inv).round_ties_even() as i32).clamp(-127, 127);
            sum[i / 16] += qv;
            q.push(qv as i8);
        }
        meta.push((amax / 127.0, sum));
    }
    (q, meta)
}

#[test]
fn matmul_rows_matches_the_f64_product_in_every_format_and_is_batch_invariant() {
    let g = gpu();
    // The GEMM dequantizes into a scratch of 128 x 2304 values here: the widest matrices go
    // through it in many slices. A second handle has none, so its GEMM falls back to the row
    // kernel for quantized weights (the same result).
    g.reserve_dequant_scratch(128 * 2304).unwrap();
    let plain = gpu();
    // The 8-bit-activation products on the tensor cores from 2 rows and with a warp per column
    // for one (`g`), with dp4a for every number of rows and a lane per column for one
    // (`dp4a`), and through the tiled GEMM for every number of rows (`tiled`): the same bits.
    g.set_dot_mma_from(2);
    g.set_dot_gemm_from(usize::MAX);
    g.set_dotc_min_cols(usize::MAX);
    let dp4a = gpu();
    dp4a.set_dot_mma_from(usize::MAX);
    dp4a.set_dot_mma_wide_from(usize::MAX);
    dp4a.set_dot_gemm_from(usize::MAX);
    dp4a.set_dotc_min_cols(0);
    dp4a.set_dot_split_from_k(usize::MAX);
    dp4a.set_dot_warp_rows(8);
    // And dp4a with two warps a column for every k (`g` and `dp4a` never split).
    g.set_dot_split_from_k(usize::MAX);
    let split = gpu();
    split.set_dot_mma_from(usize::MAX);
    split.set_dot_gemm_from(usize::MAX);
    split.set_dot_split_from_k(0);
    split.set_dotc_min_cols(usize::MAX);
    // One column a warp, 8 rows a CTA (the defaults take 5 to 7 rows of a narrow product in
    // CTAs of 4, two columns a warp: `pairs4` below).
    split.set_dot_warp_rows(8);
    split.set_dot_warp_pair_from(usize::MAX);
    // dp4a with a CTA for every 1, 2 and 4 rows of every product (the grid's y); one warp a
    // column for 2.
    let rows_apart = |rows_a_cta: usize| {
        let g = gpu();
        g.set_dot_split_from_k(if rows_a_cta == 2 { usize::MAX } else { 0 });
        g.set_dot_mma_from(usize::MAX);
        g.set_dot_mma_wide_from(usize::MAX);
        g.set_dot_gemm_from(usize::MAX);
        g.set_dotc_min_cols(usize::MAX);
        g.set_dotc_q6k_min_cols(usize::MAX);
        g.set_dot_warp_rows(rows_a_cta);
        g.set_dot_warp_pair_from(usize::MAX);
        g
    };
    let (apart1, apart2, apart4) = (rows_apart(1), rows_apart(2), rows_apart(4));
    // Two warps a column and two columns a warp from 3 rows (4 and 8 a pass), in one CTA for
    // each column's rows and in CTAs of 4.
    let pairs = |rows_a_cta: usize| {
        let g = rows_apart(rows_a_cta);
        g.set_dot_split_from_k(0);
        g.set_dot_warp_pair_from(3);
        g
    };
    let (pairs8, pairs4) = (pairs(8), pairs(4));
    // A lane per column for up to 8 rows of the products that have it (Q4_K, Q6_K), dp4a
    // otherwise.
    let lanes_in_passes_of = |pass: usize| {
        let g = gpu();
        g.set_dot_mma_from(usize::MAX);
        g.set_dot_gemm_from(usize::MAX);
        g.set_dotc_min_cols(0);
        g.set_dotc_q6k_min_cols(0);
        g.set_dotc_max_rows(8);
        g.set_dotc_pass_rows(pass);
        g
    };
    let lanes = lanes_in_passes_of(8);
    // The same in passes of at most 2 rows (3, 5 and 8 rows walk the weights several times).
    let lane_passes = lanes_in_passes_of(2);
    let tiled = gpu();
    tiled.set_dot_gemm_from(1);
    tiled.set_dot_gemm_wm(1);
    // With 64 rows a CTA too (chosen by the grid's size only for the widest products).
    let tiled64 = gpu();
    tiled64.set_dot_gemm_from(1);
    tiled64.set_dot_gemm_wm(2);
    let mut rng = Rng::new(1);
    let formats = [
        None,
        Some(QuantFormat::Q4K),
        Some(QuantFormat::Q6K),
        Some(QuantFormat::Q8_0),
        Some(QuantFormat::Q5_0),
    ];
    for format in formats {
        let shapes: &[(usize, usize)] = match format.map(QuantFormat::block_len) {
            // Both sides past MatmulKernel::NARROW_MAX too, where `auto` switches kernels; and
            // more 8-column tiles (1,057) than any GPU of up to 132 SMs holds CTAs of 8x8p (8
            // an SM at most, by threads), so that its persistent CTAs each take several tiles of
            // several slabs whatever their registers.
            // And the 1.5B's down projection's k (280 chunks: classes of four and five).
            Some(256) => &[
                (37, 512),
                (300, 1536),
                (8, 256),
                (2056, 2304),
                (8451, 1280),
                (40, 8960),
            ],
            _ => &[
                (45, 96),
                (300, 896),
                (7, 32),
                (1029, 224),
                (2056, 2112),
                (8451, 1056),
            ],
        };
        for &(n, k) in shapes {
            let (_wbuf, view, w, w_exact) = upload_matrix_exact(&g, &mut rng, format, n, k);
            let wf = view.format;
            let bias = rng.vec(n, 1.0);
            let bbuf = g.upload(&bias, "bias", ADVICE).unwrap();
            let max_rows = 130;
            let x: Vec<f32> = rng
                .vec(max_rows * k, 2.0)
                .into_iter()
                .map(round_bf16)
                .collect();
            let xbuf = g.upload(&bf16(&x), "x", ADVICE).unwrap();
            // The f64 product of every row, once (a row's value does not depend on the others).
            let want_all: Vec<f32> = (0..max_rows * n)
                .map(|i| {
                    let (r, j) = (i / n, i % n);
                    let s: f64 = (0..k)
                        .map(|c| x[r * k + c] as f64 * w[j * k + c] as f64)
                        .sum();
                    (s + bias[j] as f64) as f32
                })
                .collect();
            // The same through x's 8-bit copy (the kernels of MatmulKernel::Dot), with the
            // weights unrounded.
            let (xq, xmeta) = quantize_q8(&x);
            let q8_rows = if wf.has_dot() { max_rows } else { 0 };
            let want_q8: Vec<f32> = (0..q8_rows * n)
                .map(|i| {
                    let (r, j) = (i / n, i % n);
                    let s: f64 = (0..k / 32)
                        .map(|c| {
                            let dot: f64 = (c * 32..c * 32 + 32)
                                .map(|e| xq[r * k + e] as f64 * w_exact[j * k + e] as f64)
                                .sum();
                            xmeta[r * k / 32 + c].0 as f64 * dot
                        })
                        .sum();
                    (s + bias[j] as f64) as f32
                })
                .collect();
            let xqbuf = g
                .alloc::<u8>(q8_bytes(max_rows, k), "x's 8-bit copy", ADVICE)
                .unwrap();
            // Kernels that add in the same order (the tensor-core kernels of 8 warps, and
            // `auto`, which picks among them per product; the 8-bit-activation kernels among
            // themselves) must agree bit for bit.
            let mut same_order: Vec<(MatmulKernel, usize, Vec<f32>)> = Vec::new();
            let runs = MatmulKernel::CHOICES
                .into_iter()
                .map(|k| (k, &g, ""))
                .chain([
                    (MatmulKernel::Gemm, &plain, " without scratch"),
                    (MatmulKernel::Dot, &dp4a, " with dp4a and a lane per column"),
                    (
                        MatmulKernel::Dot,
                        &lanes,
                        " with a lane per column for 8 rows",
                    ),
                    (
                        MatmulKernel::Dot,
                        &lane_passes,
                        " with a lane per column for 8 rows in passes of 2",
                    ),
                    (MatmulKernel::Dot, &tiled, " through the tiled GEMM"),
                    (
                        MatmulKernel::Dot,
                        &tiled64,
                        " through the tiled GEMM, 64 rows a CTA",
                    ),
                    (MatmulKernel::Dot, &split, " with two warps a column"),
                    (MatmulKernel::Dot, &apart1, " with a CTA a row"),
                    (MatmulKernel::Dot, &apart2, " with a CTA for every 2 rows"),
                    (MatmulKernel::Dot, &apart4, " with a CTA for every 4 rows"),
                    (MatmulKernel::Dot, &pairs8, " with two columns a warp"),
                    (
                        MatmulKernel::Dot,
                        &pairs4,
                        " with two columns a warp, a CTA for every 4 rows",
                    ),
                ]);
            for (kernel, on, how) in runs {
                let mut alone: Option<Vec<f32>> = None;
                for rows in [1, 2, 3, 5, 8, 16, 17, 64, 65, 130] {
                    let y = poisoned_f32(&g, rows * n);
                    g.synchronize().unwrap();
                    on.matmul_rows_with(
                        kernel,
                        &MatmulArgs {
                            w: view,
                            x: xbuf.ptr(),
                            xq: xqbuf.ptr(),
                            xq_ready: false,
                            y: y.ptr(),
                            bias: bbuf.ptr(),
                            rows,
                            ldy: n,
                        },
                    )
                    .unwrap();
                    on.synchronize().unwrap();
                    let got = read_f32(&g, &y);
                    let what = format!("{kernel:?}{how} {wf:?} {n}x{k}, {rows} rows");
                    let dot = kernel.resolve(rows, n, k, wf) == MatmulKernel::Dot;
                    let want = if dot { &want_q8 } else { &want_all };
                    let e = rel_err(&got, &want[..rows * n], &what);
                    assert!(e < 1e-5, "{what}: relative error {e}");
                    if dot {
                        // x's copy is the one worked out here, and 8 bits of activations
                        // stay close to the exact product.
                        let bytes = g.read::<u8>(xqbuf.ptr(), rows * k).unwrap();
                        let q: Vec<i8> = bytes.iter().map(|&b| b as i8).collect();
                        assert_eq!(q, xq[..rows * k], "{what}: quantized activations");
                        let metas = g
                            .read::<u32>(xqbuf.ptr() + (rows * k) as u64, rows * k / 32 * 2)
                            .unwrap();
                        for (c, m) in metas.chunks_exact(2).enumerate() {
                            let want_meta = xmeta[c];
                            let halves =
                                [(m[1] & 0xFFFF) as u16 as i16, (m[1] >> 16) as u16 as i16];
                            assert_eq!(
                                (f32::from_bits(m[0]), halves.map(i32::from)),
                                want_meta,
                                "{what}: chunk {c}'s scale and sum"
                            );
                        }
                        let e_true = rel_err(&got, &want_all[..rows * n], &what);
                        assert!(e_true < 2e-2, "{what}: 8-bit activations' error {e_true}");
                    }
                    // Bit for bit (f32 equality would take -0 for +0).
                    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                    for (other, r, seen) in &same_order {
                        if *r == rows && kernel.same_order(*other, wf) {
                            assert!(bits(&got) == bits(seen), "{what}: differs from {other:?}");
                        }
                    }
                    same_order.push((kernel, rows, got.clone()));
                    // Row 0 is bit-identical whatever else shares the launch.
                    match &alone {
                        None => alone = Some(got[..n].to_vec()),
                        Some(a) => assert_eq!(&got[..n], &a[..], "{what}: row 0 changed"),
                    }
                    // And so is a row deep in a larger launch against the same row alone.
                    if rows == 130 {
                        let y1 = poisoned_f32(&g, n);
                        let x129 = xbuf.at(129 * k);
                        g.synchronize().unwrap();
                        on.matmul_rows_with(
                            kernel,
                            &MatmulArgs {
                                w: view,
                                x: x129,
                                xq: xqbuf.ptr(),
                                xq_ready: false,
                                y: y1.ptr(),
                                bias: bbuf.ptr(),
                                rows: 1,
                                ldy: n,
                            },
                        )
                        .unwrap();
                        on.synchronize().unwrap();
                        assert_eq!(
                            read_f32(&g, &y1),
                            got[129 * n..].to_vec(),
                            "{what}: row 129"
                        );
                    }
                }
            }
        }
    }
}

#[test]
fn a_nan_activation_reaches_the_outputs_of_the_8_bit_products() {
    let g = gpu();
    let mut rng = Rng::new(7);
    let (n, k) = (24, 512);
    // The row kernels with one warp a column and with two, then the tiled GEMM.
    for (format, gemm_from, split_from_k) in [
        (QuantFormat::Q4K, usize::MAX, usize::MAX),
        (QuantFormat::Q6K, usize::MAX, usize::MAX),
        (QuantFormat::Q4K, usize::MAX, 0),
        (QuantFormat::Q6K, usize::MAX, 0),
        (QuantFormat::Q4K, 1, usize::MAX),
        (QuantFormat::Q6K, 1, usize::MAX),
    ] {
        g.set_dot_gemm_from(gemm_from);
        g.set_dot_split_from_k(split_from_k);
        let (_wbuf, view, _) = upload_matrix(&g, &mut rng, Some(format), n, k);
        let mut x: Vec<f32> = rng.vec(2 * k, 1.0).into_iter().map(round_bf16).collect();
        x[k + 77] = f32::NAN;
        let xbuf = g.upload(&bf16(&x), "x", ADVICE).unwrap();
        let xq = g
            .alloc::<u8>(q8_bytes(2, k), "x's 8-bit copy", ADVICE)
            .unwrap();
        for (rows, x0, row) in [(2, xbuf.ptr(), 1), (1, xbuf.at(k), 0)] {
            // Zeros, not the NaN poison: an unwritten output must not pass.
            let y = g.upload(&vec![0f32; rows * n], "y", ADVICE).unwrap();
            g.matmul_rows_with(
                MatmulKernel::Dot,
                &MatmulArgs {
                    w: view,
                    x: x0,
                    xq: xq.ptr(),
                    xq_ready: false,
                    y: y.ptr(),
                    bias: 0,
                    rows,
                    ldy: n,
                },
            )
            .unwrap();
            let got = read_f32(&g, &y);
            assert!(
                got[row * n..(row + 1) * n].iter().all(|v| v.is_nan()),
                "{format:?}, {rows} rows, GEMM from {gemm_from}, split from k {split_from_k}: the row with a NaN gave {:?}",
                &got[row * n..(row + 1) * n]
            );
            if rows == 2 {
                assert!(
                    got[..n].iter().all(|v| v.is_finite()),
                    "{format:?}: row 0 {got:?}"
                );
            }
        }
    }
}

#[test]
fn embedding_gives_the_stored_values() {
    let g = gpu();
    let mut rng = Rng::new(2);
    for format in [
        None,
        Some(QuantFormat::Q4K),
        Some(QuantFormat::Q6K),
        Some(QuantFormat::Q8_0),
        Some(QuantFormat::Q5_0),
    ] {
        let (n, k) = (40, 512);
        let (_wbuf, view, w) = upload_matrix(&g, &mut rng, format, n, k);
        let wf = view.format;
        let ids: Vec<i32> = vec![3, 0, 39, 17, 17, -1, 5];
        let idbuf = g.upload(&ids, "ids", ADVICE).unwrap();
        let out = poisoned_f32(&g, ids.len() * k);
        g.embed_rows(&view, idbuf.ptr(), ids.len(), out.ptr())
            .unwrap();
        let got = read_f32(&g, &out);
        let want: Vec<f32> = ids
            .iter()
            .flat_map(|&id| {
                if id < 0 {
                    vec![0.0; k]
                } else {
                    w[id as usize * k..(id as usize + 1) * k].to_vec()
                }
            })
            .collect();
        assert_bf16_close(&got, &want, 1.0, &format!("embedding {wf:?}"));
    }
}

#[test]
fn norm_activation_and_gather_match_the_cpu() {
    let g = gpu();
    let mut rng = Rng::new(3);
    for (rows, d) in [(1, 64), (7, 1536), (33, 3584), (2, 4096)] {
        let x = rng.vec(rows * d, 3.0);
        let delta = rng.vec(rows * d, 1.0);
        let w = rng.vec(d, 1.5);
        let xb = g.upload(&x, "x", ADVICE).unwrap();
        let db = g.upload(&delta, "delta", ADVICE).unwrap();
        let wb = g.upload(&w, "w", ADVICE).unwrap();
        let out = poisoned_bf16(&g, rows * d);
        g.add_rms_norm(xb.ptr(), db.ptr(), wb.ptr(), 1e-6, out.ptr(), d, rows)
            .unwrap();
        let mut xr = x.clone();
        cpu::add_assign(&mut xr, &delta);
        assert_eq!(read_f32(&g, &xb), xr, "residual add ({rows}x{d})");
        let mut want = vec![0f32; rows * d];
        cpu::rms_norm(&xr, &w, 1e-6, &mut want);
        assert_bf16_close(
            &read_bf16(&g, &out),
            &want,
            2.0,
            &format!("rms_norm {rows}x{d}"),
        );
        // Without a delta the stream is left alone.
        g.add_rms_norm(xb.ptr(), 0, wb.ptr(), 1e-6, out.ptr(), d, rows)
            .unwrap();
        assert_eq!(read_f32(&g, &xb), xr, "no delta");

        let inter = d / 2;
        let gu = rng.vec(rows * 2 * inter, 4.0);
        let gub = g.upload(&gu, "gu", ADVICE).unwrap();
        let act = poisoned_bf16(&g, rows * inter);
        g.silu_mul(gub.ptr(), act.ptr(), inter, rows).unwrap();
        let mut want = vec![0f32; rows * inter];
        for (r, o) in gu.chunks_exact(2 * inter).zip(want.chunks_exact_mut(inter)) {
            cpu::silu_mul(&r[..inter], &r[inter..], o);
        }
        assert_bf16_close(
            &read_bf16(&g, &act),
            &want,
            2.0,
            &format!("silu_mul {rows}x{inter}"),
        );

        let sel: Vec<i32> = (0..rows as i32).rev().collect();
        let selb = g.upload(&sel, "sel", ADVICE).unwrap();
        let src = g.upload(&bf16(&x), "src", ADVICE).unwrap();
        let dst = poisoned_bf16(&g, rows * d);
        g.gather_rows(src.ptr(), selb.ptr(), d, rows, dst.ptr())
            .unwrap();
        let want: Vec<f32> = sel
            .iter()
            .flat_map(|&r| {
                x[r as usize * d..(r as usize + 1) * d]
                    .iter()
                    .map(|&v| round_bf16(v))
            })
            .collect();
        assert_eq!(read_bf16(&g, &dst), want, "gather_rows");
    }
}

/// A paged pool for a test: chunks of blocks on the GPU and the same values on the host.
struct TestPool {
    chunks: Vec<Buffer<u16>>,
    table_buf: Buffer<u64>,
    layout: KvLayout,
    block_elems: usize,
}

impl TestPool {
    fn new(
        g: &Gpu,
        rng: &mut Rng,
        blocks: usize,
        chunk_blocks: usize,
        n_layers: usize,
        kv_dim: usize,
    ) -> (Self, Vec<f32>) {
        let block_elems = n_layers * 2 * 16 * kv_dim;
        let host: Vec<f32> = rng
            .vec(blocks * block_elems, 1.0)
            .into_iter()
            .map(round_bf16)
            .collect();
        let mut chunks = Vec::new();
        for c in host.chunks(chunk_blocks * block_elems) {
            chunks.push(g.upload(&bf16(c), "pool chunk", ADVICE).unwrap());
        }
        let ptrs: Vec<u64> = chunks.iter().map(Buffer::ptr).collect();
        let table_buf = g.upload(&ptrs, "chunk table", ADVICE).unwrap();
        let layout = KvLayout {
            chunks: table_buf.ptr(),
            chunk_blocks,
            n_layers,
            kv_dim,
        };
        (
            Self {
                chunks,
                table_buf,
                layout,
                block_elems,
            },
            host,
        )
    }

    fn read(&self, g: &Gpu) -> Vec<f32> {
        let _ = &self.table_buf;
        self.chunks
            .iter()
            .flat_map(|c| read_bf16(g, c))
            .collect::<Vec<_>>()[..]
            .to_vec()
    }
}

/// Offset of (block, layer, keys/values, slot) in the pool's host copy.
fn kv_at(
    block_elems: usize,
    kv_dim: usize,
    block: usize,
    layer: usize,
    values: bool,
    slot: usize,
) -> usize {
    block * block_elems + ((layer * 2 + usize::from(values)) * 16 + slot) * kv_dim
}

/// How many spans attention splits a row seeing `visible` positions into (attention.cu's
/// `splits_of`): rounds of 256, at most 16 spans of equally many whole rounds.
fn spans(visible: usize) -> usize {
    let rounds = visible.div_ceil(256);
    if rounds <= 1 {
        return 1;
    }
    rounds.div_ceil(rounds.div_ceil(16))
}

#[test]
fn rope_kv_write_and_paged_attention_match_the_cpu_for_ragged_batches_and_gqa() {
    let g = gpu();
    let mut rng = Rng::new(4);
    // (n_heads, n_kv, head_dim, window): GQA ratios 1, 6 and 7, small and large heads.
    for (nh, nkv, hd, window) in [
        (4, 4, 64, 0),
        (12, 2, 128, 0),
        (28, 4, 128, 0),
        (7, 1, 16, 0),
        (6, 1, 64, 5),
        // A window past 256 positions: the rows seeing 257..300 of them are split.
        (6, 1, 64, 300),
    ] {
        let (n_layers, layer) = (3, 1);
        let kv_dim = nkv * hd;
        let q_dim = nh * hd;
        let qkv_dim = q_dim + 2 * kv_dim;
        // Ragged sequences: (cached positions, new tokens). Rows past 256 positions are split
        // (rows crossing 256 in one sequence, 3 splits of 256, and past 16 rounds of 256 the
        // 9 splits of 512 of a 4,201-position row).
        let seqs = [
            (0usize, 5usize),
            (37, 1),
            (16, 6),
            (100, 3),
            (3, 1),
            (250, 10),
            (700, 2),
            (4200, 1),
        ];
        let used: Vec<usize> = seqs.iter().map(|&(s, n)| (s + n).div_ceil(16)).collect();
        let width = used.iter().copied().max().unwrap();
        let blocks: usize = used.iter().sum();
        let (pool, mut host) = TestPool::new(&g, &mut rng, blocks, 7, n_layers, kv_dim);
        // Block tables: a shuffled assignment of the pool's blocks (unused entries 0).
        let mut ids: Vec<usize> = (0..blocks).collect();
        for i in (1..ids.len()).rev() {
            ids.swap(i, rng.below(i + 1));
        }
        let mut tables = vec![0i32; seqs.len() * width];
        let mut next = ids.into_iter();
        for (si, &u) in used.iter().enumerate() {
            for t in &mut tables[si * width..si * width + u] {
                *t = next.next().unwrap() as i32;
            }
        }
        let (mut pos, mut slot, mut row_seq, mut row_len) = (vec![], vec![], vec![], vec![]);
        for (si, &(start, n)) in seqs.iter().enumerate() {
            for i in 0..n {
                let p = start + i;
                pos.push(p as i32);
                slot.push(tables[si * width + p / 16] * 16 + (p % 16) as i32);
                row_seq.push(si as i32);
                row_len.push((p + 1) as i32);
            }
        }
        // Two padding rows at the end.
        for _ in 0..2 {
            pos.push(0);
            slot.push(-1);
            row_seq.push(-1);
            row_len.push(0);
        }
        let rows = pos.len();
        let qkv = rng.vec(rows * qkv_dim, 2.0);
        let theta = 10000f64;
        let inv_freq: Vec<f64> = (0..hd / 2)
            .map(|i| 1.0 / theta.powf(2.0 * i as f64 / hd as f64))
            .collect();
        let cs: Vec<f32> = (0..4224)
            .flat_map(|p| {
                inv_freq
                    .iter()
                    .flat_map(move |&f| [(p as f64 * f).cos() as f32, (p as f64 * f).sin() as f32])
            })
            .collect();
        for interleaved in [false, true] {
            let qkv_buf = g.upload(&qkv, "qkv", ADVICE).unwrap();
            let cs_buf = g.upload(&cs, "cos_sin", ADVICE).unwrap();
            let b = |v: &Vec<i32>| g.upload(v, "meta", ADVICE).unwrap();
            let (pos_b, slot_b, seq_b, len_b, tab_b) =
                (b(&pos), b(&slot), b(&row_seq), b(&row_len), b(&tables));
            g.rope_store_kv(&RopeArgs {
                qkv: qkv_buf.ptr(),
                rows,
                n_heads: nh,
                n_kv: nkv,
                head_dim: hd,
                cos_sin: cs_buf.ptr(),
                pos: pos_b.ptr(),
                slot: slot_b.ptr(),
                interleaved,
                kv: pool.layout,
                layer,
            })
            .unwrap();
            // CPU: rotate, write the new keys and values into the host pool copy.
            let mut want_qkv = qkv.clone();
            let positions: Vec<usize> = pos.iter().map(|&p| p as usize).collect();
            let tabs = cpu::rope_tables(&positions, &inv_freq);
            cpu::apply_rope(&mut want_qkv, qkv_dim, 0, nh, &tabs, interleaved);
            cpu::apply_rope(&mut want_qkv, qkv_dim, q_dim, nkv, &tabs, interleaved);
            for r in 0..rows {
                if slot[r] < 0 {
                    continue;
                }
                let (blk, s) = (slot[r] as usize / 16, slot[r] as usize % 16);
                let row = &want_qkv[r * qkv_dim..(r + 1) * qkv_dim];
                for (vals, off) in [(false, q_dim), (true, q_dim + kv_dim)] {
                    let at = kv_at(pool.block_elems, kv_dim, blk, layer, vals, s);
                    for c in 0..kv_dim {
                        host[at + c] = round_bf16(row[off + c]);
                    }
                }
            }
            let got_qkv = read_f32(&g, &qkv_buf);
            for r in 0..rows {
                let range = r * qkv_dim..r * qkv_dim + q_dim;
                let (got, want) = (&got_qkv[range.clone()], &want_qkv[range]);
                if slot[r] < 0 {
                    assert_eq!(
                        got,
                        &qkv[r * qkv_dim..r * qkv_dim + q_dim],
                        "padding row {r} untouched"
                    );
                } else {
                    assert!(
                        rel_err(got, want, "rotated queries") < 1e-6,
                        "rotated queries, row {r}"
                    );
                }
            }
            let got_pool = pool.read(&g);
            assert_bf16_close(&got_pool, &host, 1.0, &format!("pool after the KV write (nh {nh}, nkv {nkv}, hd {hd}, interleaved {interleaved})"));

            // Attention over the pool as the GPU holds it, against the CPU kernel per row: a
            // row's splits as CTAs of their own (twice: the split counters must be back at
            // zero after a launch), then all in one CTA, the same bit for bit.
            // NaNs, so that the slots the split CTAs write show.
            let partials = g
                .upload(
                    &vec![f32::NAN; AttentionScratch::floats(rows, nh, hd)],
                    "partials",
                    ADVICE,
                )
                .unwrap();
            let counters = g
                .alloc::<u32>(AttentionScratch::counters(rows, nh), "counters", ADVICE)
                .unwrap();
            let scratch = AttentionScratch {
                partials: partials.ptr(),
                partial_floats: partials.len(),
                counters: counters.ptr(),
                counter_len: counters.len(),
            };
            assert_eq!(
                AttentionScratch::grid_splits(Some(&scratch), rows, nh, hd, width * 16),
                16,
                "a launch of {rows} rows splits its rows over CTAs"
            );
            let attend = |splits: Option<AttentionScratch>| {
                let out = poisoned_bf16(&g, rows * q_dim);
                g.paged_attention(&AttentionArgs {
                    q: qkv_buf.ptr(),
                    q_stride: qkv_dim,
                    kv: pool.layout,
                    layer,
                    row_seq: seq_b.ptr(),
                    row_kv_len: len_b.ptr(),
                    tables: tab_b.ptr(),
                    table_width: width,
                    rows,
                    n_heads: nh,
                    n_kv: nkv,
                    head_dim: hd,
                    scale: 1.0 / (hd as f32).sqrt(),
                    window,
                    splits,
                    out: out.ptr(),
                })
                .unwrap();
                read_bf16(&g, &out)
            };
            let got = attend(Some(scratch));
            // The split rows went through CTAs of their own: each of their splits' slots was
            // written (its max is a number), and no slot past a row's splits, nor any slot of
            // an unsplit row (those stay in one CTA).
            let parts = read_f32(&g, &partials);
            let (stride, most) = (2 + hd, AttentionScratch::MAX_SPLITS);
            let mut split_rows = 0;
            for r in 0..rows {
                if row_seq[r] < 0 {
                    continue;
                }
                let len = row_len[r] as usize;
                let n = spans(if window > 0 { len.min(window) } else { len });
                split_rows += usize::from(n > 1);
                for h in 0..nh {
                    for z in 0..most {
                        let written = !parts[((r * nh + h) * most + z) * stride].is_nan();
                        assert_eq!(
                            written,
                            n > 1 && z < n,
                            "row {r} (len {len}) head {h}: slot {z} of its {n} splits"
                        );
                    }
                }
            }
            if window == 0 || window > 256 {
                assert_eq!(split_rows, 7, "rows split over CTAs");
            }
            assert!(
                g.read::<u32>(counters.ptr(), counters.len())
                    .unwrap()
                    .iter()
                    .all(|&c| c == 0),
                "split counters back at zero"
            );
            let again = attend(Some(scratch));
            let one_cta = attend(None);
            for (r, ((a, b), c)) in got
                .chunks(q_dim)
                .zip(again.chunks(q_dim))
                .zip(one_cta.chunks(q_dim))
                .enumerate()
            {
                let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(a), bits(b), "row {r}: split CTAs, second launch");
                assert_eq!(
                    bits(a),
                    bits(c),
                    "row {r}: split CTAs vs one CTA (len {})",
                    row_len[r]
                );
            }
            let shape = AttentionShape {
                n_heads: nh,
                n_kv_heads: nkv,
                head_dim: hd,
                sliding_window: (window > 0).then_some(window),
            };
            for r in 0..rows {
                let o = &got[r * q_dim..(r + 1) * q_dim];
                if row_seq[r] < 0 {
                    assert!(
                        o.iter().all(|&v| v == 0.0),
                        "padding row {r} attends to nothing"
                    );
                    continue;
                }
                let si = row_seq[r] as usize;
                let len = row_len[r] as usize;
                let mut keys: Vec<Vec<f32>> = Vec::new();
                let mut values: Vec<Vec<f32>> = Vec::new();
                for bi in 0..len.div_ceil(16) {
                    let blk = tables[si * width + bi] as usize;
                    let n = (len - bi * 16).min(16);
                    let k0 = kv_at(pool.block_elems, kv_dim, blk, layer, false, 0);
                    let v0 = kv_at(pool.block_elems, kv_dim, blk, layer, true, 0);
                    keys.push(got_pool[k0..k0 + n * kv_dim].to_vec());
                    values.push(got_pool[v0..v0 + n * kv_dim].to_vec());
                }
                let kr: Vec<&[f32]> = keys.iter().map(Vec::as_slice).collect();
                let vr: Vec<&[f32]> = values.iter().map(Vec::as_slice).collect();
                let q = &got_qkv[r * qkv_dim..r * qkv_dim + q_dim];
                let mut want = vec![0f32; q_dim];
                cpu::attention(
                    q,
                    len - 1,
                    KvChunks {
                        keys: &kr,
                        values: &vr,
                    },
                    shape,
                    &mut want,
                    &Serial,
                );
                let e = rel_err(o, &want, "attention");
                assert!(e < 1e-2, "attention row {r} (seq {si}, len {len}, nh {nh}, nkv {nkv}, hd {hd}, window {window}): relative error {e}");
            }
        }
    }
}

#[test]
fn argmax_greedy_acceptance_softmax_and_rejection_sampling_match_the_cpu() {
    let g = gpu();
    let mut rng = Rng::new(5);
    let vocab = 5003;
    let rows = 9;
    let mut logits = rng.vec(rows * vocab, 8.0);
    // A tie in row 2: the lowest index wins.
    logits[2 * vocab + 100] = 50.0;
    logits[2 * vocab + 4000] = 50.0;
    let lb = g.upload(&logits, "logits", ADVICE).unwrap();
    let tok = g.upload(&vec![-7i32; rows], "tok", ADVICE).unwrap();
    let prob = poisoned_f32(&g, rows);
    let scratch = poisoned_f32(&g, Gpu::argmax_scratch_floats(vocab, rows));
    g.argmax_rows(
        lb.ptr(),
        vocab,
        vocab,
        rows,
        tok.ptr(),
        prob.ptr(),
        scratch.ptr(),
    )
    .unwrap();
    let toks: Vec<i32> = g.read(tok.ptr(), rows).unwrap();
    let probs = read_f32(&g, &prob);
    for r in 0..rows {
        let (t, p) = sample::argmax_prob(&logits[r * vocab..(r + 1) * vocab]);
        assert_eq!(toks[r] as u32, t, "argmax row {r}");
        assert!(
            (probs[r] - p).abs() <= 1e-5 * p.max(1e-3),
            "top probability row {r}: {} vs {p}",
            probs[r]
        );
    }
    assert_eq!(toks[2], 100);

    // A real vocabulary spans many of the kernel's chunks: ties across chunks keep the lowest
    // index, and a maximum in the last, partial chunk is found.
    let big = 152_064;
    let mut wide = rng.vec(3 * big, 8.0);
    wide[5000] = 60.0;
    wide[100_000] = 60.0;
    wide[big + big - 3] = 61.0;
    wide[2 * big + 4095] = 30.0;
    wide[2 * big + 4096] = 30.0;
    let wb = g.upload(&wide, "logits", ADVICE).unwrap();
    let wt = g.upload(&[-7i32; 3], "tok", ADVICE).unwrap();
    let wp = poisoned_f32(&g, 3);
    let ws = poisoned_f32(&g, Gpu::argmax_scratch_floats(big, 3));
    g.argmax_rows(wb.ptr(), big, big, 3, wt.ptr(), wp.ptr(), ws.ptr())
        .unwrap();
    let (wtoks, wprobs): (Vec<i32>, Vec<f32>) = (g.read(wt.ptr(), 3).unwrap(), read_f32(&g, &wp));
    assert_eq!(
        wtoks,
        [5000, big as i32 - 3, 4095],
        "argmax over {big} logits"
    );
    for r in 0..3 {
        let (t, p) = sample::argmax_prob(&wide[r * big..(r + 1) * big]);
        assert_eq!(wtoks[r] as u32, t, "argmax row {r} of {big}");
        assert!(
            (wprobs[r] - p).abs() <= 1e-5 * p.max(1e-3),
            "top probability row {r} of {big}: {} vs {p}",
            wprobs[r]
        );
    }

    // The argmax rows looked up in an id map (a drafter's reduced head: row r is id map[r]),
    // written past a prefix of the output that must stay as it was.
    let map: Vec<i32> = (0..vocab as i32).map(|r| 7 * r + 3).collect();
    let mapb = g.upload(&map, "id map", ADVICE).unwrap();
    let looked = g.upload(&vec![-1i32; rows + 2], "ids", ADVICE).unwrap();
    g.lookup_ids(mapb.ptr(), tok.ptr(), rows, looked.at(2))
        .unwrap();
    let got: Vec<i32> = g.read(looked.ptr(), rows + 2).unwrap();
    let want: Vec<i32> = [-1, -1]
        .into_iter()
        .chain(toks.iter().map(|&t| map[t as usize]))
        .collect();
    assert_eq!(got, want, "argmax rows looked up as ids");

    // Greedy acceptance over three sequences of 4, 1 and 4 rows.
    let mut ids: Vec<i32> = (0..rows).map(|_| rng.below(vocab) as i32).collect();
    ids[1] = toks[0]; // seq 0: first draft accepted
    ids[2] = toks[1]; // second too; the third is random (almost surely rejected)
    ids[6] = toks[5]; // seq 2: first draft accepted
    ids[7] = toks[6];
    ids[8] = toks[7]; // all accepted
    let (first, n) = (vec![0, 4, 5], vec![4, 1, 4]);
    let bufs = |v: &Vec<i32>| g.upload(v, "meta", ADVICE).unwrap();
    let (ib, fb, nb) = (bufs(&ids), bufs(&first), bufs(&n));
    let out = g.upload(&[-1i32; 6], "out", ADVICE).unwrap();
    g.accept_greedy(tok.ptr(), ib.ptr(), fb.ptr(), nb.ptr(), 3, out.ptr())
        .unwrap();
    let got: Vec<i32> = g.read(out.ptr(), 6).unwrap();
    for s in 0..3 {
        let (f, k) = (first[s] as usize, n[s] as usize);
        let idu: Vec<u32> = ids[f..f + k].iter().map(|&x| x as u32).collect();
        let ch: Vec<u32> = toks[f..f + k].iter().map(|&x| x as u32).collect();
        let (a, next) = sample::accept_greedy(&idu, &ch);
        assert_eq!(
            (got[2 * s] as usize, got[2 * s + 1] as u32),
            (a, next),
            "greedy verdict of sequence {s}"
        );
    }
    assert_eq!(got[4], 3, "sequence 2 keeps all three drafts");

    // Softmax with a temperature per row, into another buffer and in place.
    let inv_temps: Vec<f32> = (0..rows).map(|r| 1.0 / (0.4 + 0.3 * r as f32)).collect();
    let tb = g
        .upload(&inv_temps, "inverse temperatures", ADVICE)
        .unwrap();
    let pb = poisoned_f32(&g, rows * vocab);
    g.softmax_rows(lb.ptr(), vocab, vocab, tb.ptr(), rows, pb.ptr())
        .unwrap();
    let p = read_f32(&g, &pb);
    for r in 0..rows {
        let want = sample::softmax(&logits[r * vocab..(r + 1) * vocab], inv_temps[r]);
        let e = rel_err(&p[r * vocab..(r + 1) * vocab], &want, "softmax");
        assert!(e < 1e-5, "softmax row {r}: {e}");
    }
    let in_place = g.upload(&logits, "logits", ADVICE).unwrap();
    g.softmax_rows(in_place.ptr(), vocab, vocab, tb.ptr(), rows, in_place.ptr())
        .unwrap();
    assert_eq!(read_f32(&g, &in_place), p, "softmax in place");

    // Rejection sampling, with the GPU's own probabilities as input to both sides, for many
    // uniforms: drafts drawn from q (one-hot for sequence 1), so that both branches happen.
    let q = {
        let mut ql = rng.vec(rows * vocab, 8.0);
        ql.iter_mut()
            .zip(&logits)
            .for_each(|(a, &b)| *a = 0.5 * *a + b);
        let mut qp = Vec::new();
        for r in 0..rows {
            qp.extend(sample::softmax(&ql[r * vocab..(r + 1) * vocab], 1.0));
        }
        qp
    };
    let qb = g.upload(&q, "q", ADVICE).unwrap();
    let qrow = vec![0, -1, 5];
    let qrb = bufs(&qrow);
    let ustride = 4;
    let mut mismatches = 0;
    let trials = 200;
    for trial in 0..trials {
        let mut ids = ids.clone();
        for s in [0usize, 2] {
            for i in 1..n[s] as usize {
                let row = first[s] as usize + i - 1;
                let u = rng.unit();
                ids[first[s] as usize + i] =
                    sample::draw(vocab, |j| q[row * vocab + j], u).unwrap() as i32;
            }
        }
        let u: Vec<f32> = (0..3 * ustride).map(|_| rng.unit()).collect();
        let (ib, ub) = (bufs(&ids), g.upload(&u, "u", ADVICE).unwrap());
        let out = g.upload(&[-1i32; 6], "out", ADVICE).unwrap();
        g.rejection_sample(&RejectionArgs {
            p: pb.ptr(),
            vocab,
            q: qb.ptr(),
            ids: ib.ptr(),
            first: fb.ptr(),
            n: nb.ptr(),
            qrow: qrb.ptr(),
            u: ub.ptr(),
            ustride,
            seqs: 3,
            out: out.ptr(),
        })
        .unwrap();
        let got: Vec<i32> = g.read(out.ptr(), 6).unwrap();
        for s in 0..3 {
            let (f, k) = (first[s] as usize, n[s] as usize);
            let prow: Vec<&[f32]> = (f..f + k).map(|r| &p[r * vocab..(r + 1) * vocab]).collect();
            let qrows: Option<Vec<&[f32]>> = (qrow[s] >= 0).then(|| {
                (0..k - 1)
                    .map(|i| &q[(qrow[s] as usize + i) * vocab..(qrow[s] as usize + i + 1) * vocab])
                    .collect()
            });
            let idu: Vec<u32> = ids[f..f + k].iter().map(|&x| x as u32).collect();
            let want = sample::rejection_sample(&prow, qrows.as_deref(), &idu, &u[s * ustride..]);
            if (got[2 * s] as usize, got[2 * s + 1] as u32) != want {
                mismatches += 1;
                eprintln!(
                    "trial {trial} sequence {s}: GPU {:?}, CPU {want:?}",
                    (got[2 * s], got[2 * s + 1])
                );
            }
        }
    }
    assert_eq!(
        mismatches, 0,
        "rejection sampling disagreed with the CPU reference"
    );
}

#[test]
fn a_captured_graph_replays_the_same_launches() {
    let g = gpu();
    let mut rng = Rng::new(6);
    let (n, k, rows) = (256, 512, 3);
    let (_wbuf, view, _) = upload_matrix(&g, &mut rng, None, n, k);
    let xbuf = g
        .upload(&bf16(&rng.vec(rows * k, 1.0)), "x", ADVICE)
        .unwrap();
    let direct = poisoned_f32(&g, rows * n);
    let args = |y| MatmulArgs {
        w: view,
        x: xbuf.ptr(),
        xq: 0,
        xq_ready: false,
        y,
        bias: 0,
        rows,
        ldy: n,
    };
    g.matmul_rows(&args(direct.ptr())).unwrap();
    let replayed = poisoned_f32(&g, rows * n);
    let graph = g.capture(|| g.matmul_rows(&args(replayed.ptr()))).unwrap();
    assert!(
        read_f32(&g, &replayed).iter().all(|v| v.is_nan()),
        "capture must not run the launches"
    );
    g.replay(&graph).unwrap();
    g.synchronize().unwrap();
    assert_eq!(read_f32(&g, &replayed), read_f32(&g, &direct));
}

#[test]
fn a_gpu_that_does_not_exist_is_a_clear_error() {
    let e = Gpu::open(999).unwrap_err().to_string();
    assert!(e.contains("cuda:999") && e.contains("CUDA device"), "{e}");
}
