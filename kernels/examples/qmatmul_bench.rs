//! Times `quant_matmul` against candle 0.11.1 on the weight shapes of Qwen2.5-Coder 1.5B/0.5B,
//! for 1 to 16 input rows, on 1 and 2 threads.
//!
//! `cargo run --release -p specd-kernels --example qmatmul_bench [-- --quick] [-- --threads N]`
//! (`--shape I` runs only the I-th shape, `--rows M` one row count, any up to the kernels' 16,
//! `--ours` skips candle).
//!
//! Candle sizes its thread pool once per process from `CANDLE_NUM_THREADS`, so each thread
//! count runs in a child process of its own. Weight blocks are random bytes (with sane block
//! scales): speed does not depend on the values. Each matrix is cycled through enough copies to
//! exceed the last-level cache, as a model's layers do during a forward pass. Every time is the
//! best of several passes over the copies (per call), which filters out other load on a shared
//! machine; passes alternate between the implementations, with a short pause between them so
//! that candle's workers stop spinning before ours run.

use std::cell::UnsafeCell;
use std::ops::Range;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use candle_core::quantized::ggml_file::qtensor_from_ggml;
use candle_core::quantized::k_quants::{self, BlockQ4K, BlockQ5_0, BlockQ6K, BlockQ8_0, GgmlType};
use candle_core::quantized::{GgmlDType, QMatMul};
use candle_core::{Device, Module, Tensor};
use specd_kernels::cpu::qmatmul::quant_matmul_with;
use specd_kernels::cpu::{ParallelFor, QuantFormat, QuantKernel, QuantMatrix, Serial};

const ROWS: [usize; 7] = [1, 2, 4, 5, 6, 8, 16];
/// Bytes of weights cycled through per measurement (twice a 32 MiB L3).
const FOOTPRINT: usize = 128 << 20;

struct Shape {
    name: &'static str,
    format: QuantFormat,
    n: usize,
    k: usize,
}

const SHAPES: [Shape; 5] = [
    Shape {
        name: "ffn gate/up 1.5B",
        format: QuantFormat::Q4K,
        n: 8960,
        k: 1536,
    },
    Shape {
        name: "ffn down 1.5B",
        format: QuantFormat::Q6K,
        n: 1536,
        k: 8960,
    },
    Shape {
        name: "lm head 1.5B",
        format: QuantFormat::Q6K,
        n: 151_936,
        k: 1536,
    },
    Shape {
        name: "ffn 0.5B",
        format: QuantFormat::Q8_0,
        n: 4864,
        k: 896,
    },
    Shape {
        name: "ffn 0.5B",
        format: QuantFormat::Q5_0,
        n: 4864,
        k: 896,
    },
];

/// Command-line options.
struct Opts {
    quick: bool,
    shape: Option<usize>,
    rows: Option<usize>,
    ours_only: bool,
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let value = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .and_then(|v| v.parse::<usize>().ok())
    };
    let opts = Opts {
        quick: args.iter().any(|a| a == "--quick"),
        shape: value("--shape"),
        rows: value("--rows"),
        ours_only: args.iter().any(|a| a == "--ours"),
    };
    match value("--threads") {
        Some(t) => {
            if std::env::var_os("CANDLE_NUM_THREADS").is_none() {
                // Before candle's first product, which sizes its pool.
                std::env::set_var("CANDLE_NUM_THREADS", t.to_string());
            }
            run(t, &opts)
        }
        None => {
            for t in [1, 2] {
                let mut cmd = std::process::Command::new(std::env::current_exe().unwrap());
                cmd.args(&args[1..]).arg("--threads").arg(t.to_string());
                let status = cmd
                    .env("CANDLE_NUM_THREADS", t.to_string())
                    .status()
                    .unwrap();
                assert!(status.success(), "child for {t} threads failed");
            }
        }
    }
}

fn ggml(format: QuantFormat) -> GgmlDType {
    match format {
        QuantFormat::Q4K => GgmlDType::Q4K,
        QuantFormat::Q6K => GgmlDType::Q6K,
        QuantFormat::Q8_0 => GgmlDType::Q8_0,
        QuantFormat::Q5_0 => GgmlDType::Q5_0,
    }
}

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// Random blocks whose f16 scales are small positive normals.
fn random_blocks(format: QuantFormat, n: usize, k: usize, rng: &mut Rng) -> Vec<u8> {
    let bytes = format.block_bytes();
    let mut data: Vec<u8> = (0..n * k / format.block_len() * bytes)
        .map(|_| (rng.next() >> 32) as u8)
        .collect();
    let scale_offsets: &[usize] = match format {
        QuantFormat::Q4K => &[0, 2],
        QuantFormat::Q6K => &[208],
        QuantFormat::Q8_0 | QuantFormat::Q5_0 => &[0],
    };
    for blk in data.chunks_exact_mut(bytes) {
        for &o in scale_offsets {
            let h = 0x1800u16 | (rng.next() >> 54) as u16;
            blk[o..o + 2].copy_from_slice(&h.to_le_bytes());
        }
    }
    data
}

/// The bytes as candle blocks of `T` (an aligned copy).
fn as_blocks<T: GgmlType>(bytes: &[u8]) -> Vec<T> {
    let size = std::mem::size_of::<T>();
    assert_eq!(bytes.len() % size, 0);
    let mut v = vec![T::zeros(); bytes.len() / size];
    // SAFETY: `v` holds exactly `bytes.len()` bytes of plain-data blocks (`repr(C)` structs of
    // integers and halves, valid for any bit pattern).
    unsafe {
        std::ptr::copy_nonoverlapping(bytes.as_ptr(), v.as_mut_ptr().cast::<u8>(), bytes.len())
    };
    v
}

/// Candle's product over the weights as stored (`k_quants::matmul`), per block type.
enum Compact {
    Q4K(Vec<BlockQ4K>),
    Q6K(Vec<BlockQ6K>),
    Q8_0(Vec<BlockQ8_0>),
    Q5_0(Vec<BlockQ5_0>),
}

impl Compact {
    fn new(format: QuantFormat, bytes: &[u8]) -> Self {
        match format {
            QuantFormat::Q4K => Self::Q4K(as_blocks(bytes)),
            QuantFormat::Q6K => Self::Q6K(as_blocks(bytes)),
            QuantFormat::Q8_0 => Self::Q8_0(as_blocks(bytes)),
            QuantFormat::Q5_0 => Self::Q5_0(as_blocks(bytes)),
        }
    }

    fn matmul(&self, mkn: (usize, usize, usize), x: &[f32], out: &mut [f32]) {
        match self {
            Self::Q4K(b) => k_quants::matmul(mkn, x, b, out),
            Self::Q6K(b) => k_quants::matmul(mkn, x, b, out),
            Self::Q8_0(b) => k_quants::matmul(mkn, x, b, out),
            Self::Q5_0(b) => k_quants::matmul(mkn, x, b, out),
        }
        .unwrap()
    }
}

/// Time per call, in ms, of one pass of `calls` calls.
fn time_pass(calls: usize, mut f: impl FnMut(usize)) -> f64 {
    let t = Instant::now();
    for c in 0..calls {
        f(c);
    }
    t.elapsed().as_secs_f64() * 1e3 / calls as f64
}

fn run(threads: usize, opts: &Opts) {
    let rows: Vec<usize> = match opts.rows {
        Some(m) => vec![m],
        None => ROWS.to_vec(),
    };
    let pool = (threads > 1).then(|| SpinPool::new(threads));
    let par: &dyn ParallelFor = match &pool {
        Some(p) => p,
        None => &Serial,
    };
    let best = QuantKernel::detect();
    let kernels: Vec<QuantKernel> = [best, QuantKernel::Avx2]
        .into_iter()
        .filter(|k| k.is_available())
        .fold(Vec::new(), |mut v, k| {
            if !v.contains(&k) {
                v.push(k);
            }
            v
        });
    println!("\n## {threads} thread(s); our kernels: {kernels:?}; best of passes, ms per call\n");
    let mut rng = Rng(0x2545_f491_4f6c_dd1d);
    for (si, s) in SHAPES.iter().enumerate() {
        if opts.shape.is_some_and(|i| i != si) {
            continue;
        }
        let bytes_per = s.n * s.k / s.format.block_len() * s.format.block_bytes();
        let copies = FOOTPRINT.div_ceil(bytes_per).max(1);
        let passes = if opts.quick {
            3
        } else if copies == 1 {
            6
        } else {
            8
        };
        let data: Vec<Vec<u8>> = (0..copies)
            .map(|_| random_blocks(s.format, s.n, s.k, &mut rng))
            .collect();
        let mats: Vec<QuantMatrix> = data
            .iter()
            .map(|d| QuantMatrix::new(s.format, d, s.n, s.k).unwrap())
            .collect();
        let xs: Vec<f32> = (0..16 * s.k)
            .map(|_| (rng.next() >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0)
            .collect();
        let mut out = vec![0f32; 16 * s.n];

        let compact: Vec<Compact> = if opts.ours_only {
            Vec::new()
        } else {
            data.iter().map(|d| Compact::new(s.format, d)).collect()
        };
        let qmms: Vec<QMatMul> = if opts.ours_only {
            Vec::new()
        } else {
            data.iter()
                .map(|d| {
                    let q =
                        qtensor_from_ggml(ggml(s.format), d, vec![s.n, s.k], &Device::Cpu).unwrap();
                    QMatMul::from_qtensor(q).unwrap()
                })
                .collect()
        };
        let n_impls = kernels.len() + if opts.ours_only { 0 } else { 2 };
        // best[impl][row count]
        let mut best = vec![vec![f64::INFINITY; rows.len()]; n_impls];
        for (i, &m) in rows.iter().enumerate() {
            let x = &xs[..m * s.k];
            let xt = Tensor::from_vec(x.to_vec(), (m, s.k), &Device::Cpu).unwrap();
            let out = &mut out[..m * s.n];
            // Passes alternate between implementations, so that a change of load on the
            // machine hits all of them; a pause lets candle's workers stop spinning first.
            for pass in 0..=passes {
                for (im, best) in best.iter_mut().enumerate() {
                    let t = if im < kernels.len() {
                        time_pass(copies, |c| {
                            quant_matmul_with(kernels[im], &mats[c], x, out, par)
                        })
                    } else if im == kernels.len() {
                        time_pass(copies, |c| {
                            qmms[c].forward(&xt).unwrap();
                        })
                    } else {
                        time_pass(copies, |c| compact[c].matmul((m, s.k, s.n), x, out))
                    };
                    if pass > 0 {
                        best[i] = best[i].min(t);
                    }
                    std::thread::sleep(std::time::Duration::from_millis(3));
                }
            }
        }
        let ours = &best[..kernels.len()];
        let candle = (!opts.ours_only)
            .then(|| (best[kernels.len()].clone(), best[kernels.len() + 1].clone()));
        print_table(s, bytes_per, copies, &kernels, &rows, ours, candle.as_ref());
    }
}
fn print_table(
    s: &Shape,
    bytes_per: usize,
    copies: usize,
    kernels: &[QuantKernel],
    rows: &[usize],
    ours: &[Vec<f64>],
    candle: Option<&(Vec<f64>, Vec<f64>)>,
) {
    {
        println!(
            "### {:?} [{} x {}] {} ({:.1} MB, {copies} copies)\n",
            s.format,
            s.n,
            s.k,
            s.name,
            bytes_per as f64 / 1e6
        );
        let mut head = String::from("| m |");
        let mut rule = String::from("|---|");
        for k in kernels {
            head += &format!(" ours {k:?} | / m=1 |");
            rule += "---|---|";
        }
        if candle.is_some() {
            head += " candle QMatMul | candle k_quants::matmul | best candle / ours |";
            rule += "---|---|---|";
        }
        println!("{head}\n{rule}");
        for (i, m) in rows.iter().enumerate() {
            let mut line = format!("| {m} |");
            for o in ours {
                line += &format!(" {:.3} | {:.2}x |", o[i], o[i] / o[0]);
            }
            if let Some((qmm, compact)) = candle {
                let cbest = qmm[i].min(compact[i]);
                line += &format!(
                    " {:.3} | {:.3} | {:.2}x |",
                    qmm[i],
                    compact[i],
                    cbest / ours[0][i]
                );
            }
            println!("{line}");
        }
        println!();
    }
}

/// A persistent pool for the threaded numbers: the caller runs the first range, `n - 1`
/// workers (spinning briefly, then parked between calls) the others. Spawning threads per call
/// would cost more than a small product.
struct SpinPool {
    shared: Arc<PoolShared>,
    workers: Vec<std::thread::JoinHandle<()>>,
}

/// A job's closure, its lifetime erased (see `for_each_range`).
type Job = &'static (dyn Fn(Range<usize>) + Sync);

struct PoolShared {
    /// The current job and the length of the range it splits.
    job: UnsafeCell<Option<(Job, usize)>>,
    threads: usize,
    generation: AtomicUsize,
    done: AtomicUsize,
    stop: std::sync::atomic::AtomicBool,
}

// SAFETY: `job` is written by the caller only while every worker waits for the next
// generation, and read by workers only between the generation bump and their `done` increment.
unsafe impl Sync for PoolShared {}

impl SpinPool {
    fn new(threads: usize) -> Self {
        let shared = Arc::new(PoolShared {
            job: UnsafeCell::new(None),
            threads,
            generation: AtomicUsize::new(0),
            done: AtomicUsize::new(0),
            stop: std::sync::atomic::AtomicBool::new(false),
        });
        let workers = (1..threads)
            .map(|t| {
                let shared = Arc::clone(&shared);
                std::thread::spawn(move || worker(&shared, t))
            })
            .collect();
        Self { shared, workers }
    }
}

fn split(n: usize, parts: usize, i: usize) -> Range<usize> {
    n * i / parts..n * (i + 1) / parts
}

fn worker(shared: &PoolShared, t: usize) {
    let mut seen = 0;
    loop {
        let mut spins = 0u32;
        while shared.generation.load(Ordering::Acquire) == seen {
            if shared.stop.load(Ordering::Acquire) {
                return;
            }
            spins += 1;
            if spins < 200_000 {
                std::hint::spin_loop();
            } else {
                std::thread::park_timeout(std::time::Duration::from_micros(200));
            }
        }
        seen = shared.generation.load(Ordering::Acquire);
        // SAFETY: the job was published before the generation bump we just observed.
        let (f, n) = unsafe { (*shared.job.get()).unwrap() };
        f(split(n, shared.threads, t));
        shared.done.fetch_add(1, Ordering::AcqRel);
    }
}

impl ParallelFor for SpinPool {
    fn for_each_range(&self, n: usize, f: &(dyn Fn(Range<usize>) + Sync)) {
        let s = &self.shared;
        // SAFETY: the reference only lives until every worker has reported `done` below, which
        // is before `f` goes out of scope.
        let f_static: Job = unsafe { std::mem::transmute(f) };
        // SAFETY: all workers finished the previous job (we waited for them) and wait now.
        unsafe { *s.job.get() = Some((f_static, n)) };
        s.done.store(0, Ordering::Release);
        s.generation.fetch_add(1, Ordering::AcqRel);
        for w in &self.workers {
            w.thread().unpark();
        }
        f(split(n, s.threads, 0));
        while s.done.load(Ordering::Acquire) != s.threads - 1 {
            std::hint::spin_loop();
        }
    }
}

impl Drop for SpinPool {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
        for w in self.workers.drain(..) {
            w.thread().unpark();
            w.join().unwrap();
        }
    }
}
