//! The kernels of `kernels/cuda`, loaded once per GPU, and one launch function each.

use std::sync::Arc;

use std::ffi::c_void;
use std::marker::PhantomData;

use cudarc::driver::{sys, CudaContext, CudaFunction, DeviceRepr, LaunchConfig};
use cudarc::nvrtc::Ptx;

use super::args::{
    AttentionArgs, AttentionScratch, MatmulArgs, MatmulKernel, RejectionArgs, RopeArgs,
    WeightFormat, WeightView,
};
use super::qdot::DotKernels;
use super::{DevicePtr, Gpu, GpuError, GpuResult};

// Fat binaries from build.rs: sm_90 machine code, and PTX for newer GPUs' drivers to compile.
const MATMUL: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/matmul.fatbin"));
const GEMM: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/gemm.fatbin"));
const QDOT: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/qdot.fatbin"));
const QMMA: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/qmma.fatbin"));
const QGEMM: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/qgemm.fatbin"));
const NORM: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/norm.fatbin"));
const ROPE_KV: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/rope_kv.fatbin"));
const ATTENTION: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/attention.fatbin"));
const SAMPLE: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/sample.fatbin"));

pub(super) fn kernel_index(k: MatmulKernel) -> usize {
    MatmulKernel::CHOICES
        .iter()
        .position(|&x| x == k)
        .expect("every kernel is in CHOICES")
}

/// Positions per KV block (kernels/cuda/attention.cu's BLOCK_SLOTS).
const KV_BLOCK_SLOTS: usize = 16;
const FORMATS: [&str; 5] = ["bf16", "q4k", "q6k", "q8_0", "q5_0"];

pub(super) struct Kernels {
    /// By (kernel, format index): the function, and how many CTAs of it the GPU holds at once.
    matmul: std::collections::HashMap<(MatmulKernel, usize), (CudaFunction, usize)>,
    /// By format index: the 8-bit-activation products (qdot.cu, qmma.cu, qgemm.cu).
    pub(super) dot: std::collections::HashMap<usize, DotKernels>,
    /// The GPU's multiprocessors.
    pub(super) sms: usize,
    pub(super) quantize_rows: CudaFunction,
    embed_rows: CudaFunction,
    gemm_bf16: CudaFunction,
    dequantize_rows: CudaFunction,
    add_rms_norm: CudaFunction,
    silu_mul: CudaFunction,
    gather_rows: CudaFunction,
    rope_store_kv: CudaFunction,
    /// For head dims 64 and 128 (fully unrolled), and any other.
    paged_attention: [CudaFunction; 3],
    argmax_partial: CudaFunction,
    argmax_finish: CudaFunction,
    accept_greedy: CudaFunction,
    softmax_rows: CudaFunction,
    rejection_sample: CudaFunction,
}

impl Kernels {
    pub(super) fn load(ctx: &Arc<CudaContext>) -> GpuResult<Self> {
        // SPECD_KERNELS_DIR: fat binaries (or cubins) built elsewhere, `<stem>.fatbin`, take the
        // place of the built-in ones that have a file there: a kernel change compiled with nvcc
        // on the GPU machine runs without rebuilding specd.
        let override_dir = std::env::var_os("SPECD_KERNELS_DIR").map(std::path::PathBuf::from);
        let module = |stem: &str, built_in: &[u8]| {
            let bin = match &override_dir {
                Some(dir) if dir.join(format!("{stem}.fatbin")).exists() => {
                    let path = dir.join(format!("{stem}.fatbin"));
                    eprintln!("specd: kernels {stem} from {}", path.display());
                    std::fs::read(&path).map_err(|source| GpuError::KernelFile {
                        path: path.display().to_string(),
                        source,
                    })?
                }
                _ => built_in.to_vec(),
            };
            ctx.load_module(Ptx::from_binary(bin))
                .map_err(GpuError::driver(
                    "loading specd's kernels (is the driver new enough?)",
                ))
        };
        let (mm, gemm, qdot, qmma, qgemm, norm, rope, att, sample) = (
            module("matmul", MATMUL)?,
            module("gemm", GEMM)?,
            module("qdot", QDOT)?,
            module("qmma", QMMA)?,
            module("qgemm", QGEMM)?,
            module("norm", NORM)?,
            module("rope_kv", ROPE_KV)?,
            module("attention", ATTENTION)?,
            module("sample", SAMPLE)?,
        );
        let f = |m: &Arc<cudarc::driver::CudaModule>, name: &str| {
            m.load_function(name)
                .map_err(GpuError::driver("finding a kernel in specd's PTX"))
        };
        let sms = ctx
            .attribute(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)
            .map_err(GpuError::driver("reading the number of multiprocessors"))?
            .max(1) as usize;
        let mut matmul = std::collections::HashMap::new();
        for kernel in MatmulKernel::ALL {
            let (_, threads) = kernel.launch_shape(1, 1);
            for (fi, fmt) in FORMATS.iter().enumerate() {
                let name = format!("matmul_{fmt}_{}", kernel.name());
                let function = f(&mm, &name)?;
                let per_sm = function
                    .occupancy_max_active_blocks_per_multiprocessor(threads, 0, None)
                    .map_err(GpuError::driver("reading a kernel's occupancy"))?;
                matmul.insert((kernel, fi), (function, sms * per_sm.max(1) as usize));
            }
        }
        let mut dot = std::collections::HashMap::new();
        for format in WeightFormat::ALL.into_iter().filter(|w| w.has_dot()) {
            let kernels = DotKernels::load(&qdot, &qmma, &qgemm, FORMATS[format.index()], format)?;
            dot.insert(format.index(), kernels);
        }
        let gemm_bf16 = f(&gemm, "gemm_bf16")?;
        gemm_bf16
            .set_attribute(
                sys::CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                GEMM_SHARED_BYTES as i32,
            )
            .map_err(GpuError::driver(
                "giving the prefill GEMM its shared memory (a GPU before Hopper?)",
            ))?;
        Ok(Self {
            matmul,
            dot,
            sms,
            quantize_rows: f(&qdot, "quantize_rows")?,
            embed_rows: f(&mm, "embed_rows")?,
            gemm_bf16,
            dequantize_rows: f(&gemm, "dequantize_rows")?,
            add_rms_norm: f(&norm, "add_rms_norm")?,
            silu_mul: f(&norm, "silu_mul")?,
            gather_rows: f(&norm, "gather_rows")?,
            rope_store_kv: f(&rope, "rope_store_kv")?,
            paged_attention: [
                f(&att, "paged_attention_64")?,
                f(&att, "paged_attention_128")?,
                f(&att, "paged_attention")?,
            ],
            argmax_partial: f(&sample, "argmax_partial")?,
            argmax_finish: f(&sample, "argmax_finish")?,
            accept_greedy: f(&sample, "accept_greedy")?,
            softmax_rows: f(&sample, "softmax_rows")?,
            rejection_sample: f(&sample, "rejection_sample")?,
        })
    }
}

pub(super) fn grid(blocks: usize, threads: u32) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (blocks.max(1) as u32, 1, 1),
        block_dim: (threads, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// A kernel's arguments: pointers to values that outlive the launch call (as the driver reads
/// them during `cuLaunchKernelEx`).
#[derive(Default)]
pub(super) struct Args<'a> {
    ptrs: Vec<*mut c_void>,
    _values: PhantomData<&'a ()>,
}

impl<'a> Args<'a> {
    pub(super) fn arg<T: DeviceRepr>(&mut self, v: &'a T) -> &mut Self {
        self.ptrs.push(v as *const T as *mut c_void);
        self
    }
}

impl Gpu {
    /// Launches `f` on the stream. With programmatic dependent launch (on unless
    /// `SPECD_PDL=0`), the next kernel may be scheduled while this one drains: every kernel
    /// starts with `griddepcontrol.wait` (kernels/cuda/reductions.cuh), so none reads its inputs
    /// before the kernel before it has finished and its writes are visible.
    pub(super) fn launch(
        &self,
        f: &CudaFunction,
        cfg: LaunchConfig,
        args: Args<'_>,
    ) -> GpuResult<()> {
        self.count_launch();
        let mut attr = sys::CUlaunchAttribute {
            id: sys::CUlaunchAttributeID::CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION,
            pad: [0; 4],
            value: sys::CUlaunchAttributeValue {
                programmaticStreamSerializationAllowed: 1,
            },
        };
        let config = sys::CUlaunchConfig {
            gridDimX: cfg.grid_dim.0,
            gridDimY: cfg.grid_dim.1,
            gridDimZ: cfg.grid_dim.2,
            blockDimX: cfg.block_dim.0,
            blockDimY: cfg.block_dim.1,
            blockDimZ: cfg.block_dim.2,
            sharedMemBytes: cfg.shared_mem_bytes,
            hStream: self.stream.cu_stream(),
            attrs: &mut attr,
            numAttrs: u32::from(self.pdl),
        };
        let mut params = args.ptrs;
        self.ctx
            .bind_to_thread()
            .map_err(GpuError::driver("binding the context"))?;
        // SAFETY: `params` points at values of the types and order of the kernel's parameters
        // (each launch function pushes them in the signature's order), alive until this returns;
        // the device buffers they name are the caller's, valid for the stream's work.
        unsafe {
            sys::cuLaunchKernelEx(
                &config,
                f.cu_function(),
                params.as_mut_ptr(),
                std::ptr::null_mut(),
            )
        }
        .result()
        .map_err(GpuError::driver("launching a kernel"))
    }
}

/// Blocks for a grid-stride loop over `n` elements.
fn stride_blocks(n: usize) -> usize {
    n.div_ceil(256).clamp(1, 4096)
}

/// The prefill GEMM's output tile (GEMM_BM, GEMM_BN in gemm.cu) and its dynamic shared memory
/// (GEMM_SHARED: three stages of two 64 x 288 bf16 tiles).
const GEMM_TILE: usize = 64;
const GEMM_SHARED_BYTES: u32 = 3 * 2 * 64 * 288 * 2;

/// Logits per CTA of `argmax_partial` (ARGMAX_CHUNK in sample.cu).
const ARGMAX_CHUNK: usize = 4096;

pub(super) fn to_i32(v: usize) -> i32 {
    i32::try_from(v).expect("a size that fits the kernels' 32-bit indices")
}

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

    /// Floats of scratch that [`Gpu::argmax_rows`] needs for `rows` rows of `vocab` logits.
    pub fn argmax_scratch_floats(vocab: usize, rows: usize) -> usize {
        4 * vocab.div_ceil(ARGMAX_CHUNK) * rows
    }

    /// `tok[r]` = argmax of logits row r (lowest index on ties), `prob[r]` its softmax
    /// probability; `ld` floats between rows. `scratch` holds
    /// [`Gpu::argmax_scratch_floats`] floats (per-chunk partial results).
    #[allow(clippy::too_many_arguments)]
    pub fn argmax_rows(
        &self,
        logits: DevicePtr,
        vocab: usize,
        ld: usize,
        rows: usize,
        tok: DevicePtr,
        prob: DevicePtr,
        scratch: DevicePtr,
    ) -> GpuResult<()> {
        if rows == 0 {
            return Ok(());
        }
        let chunks = vocab.div_ceil(ARGMAX_CHUNK);
        let f = &self.kernels().argmax_partial;
        let (v, l, nc) = (to_i32(vocab), to_i32(ld), to_i32(chunks));
        let mut b = Args::default();
        b.arg(&logits).arg(&v).arg(&l).arg(&scratch);
        let cfg = LaunchConfig {
            grid_dim: (chunks as u32, rows as u32, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        };
        self.launch(f, cfg, b)?;
        let f = &self.kernels().argmax_finish;
        let mut b = Args::default();
        b.arg(&scratch).arg(&nc).arg(&tok).arg(&prob);
        self.launch(f, grid(rows, 32), b)
    }

    /// Greedy acceptance of `seqs` sequences' drafts against the target's choices.
    pub fn accept_greedy(
        &self,
        argmax: DevicePtr,
        ids: DevicePtr,
        first: DevicePtr,
        n: DevicePtr,
        seqs: usize,
        out: DevicePtr,
    ) -> GpuResult<()> {
        if seqs == 0 {
            return Ok(());
        }
        let f = &self.kernels().accept_greedy;
        let s = to_i32(seqs);
        let mut b = Args::default();
        b.arg(&argmax)
            .arg(&ids)
            .arg(&first)
            .arg(&n)
            .arg(&s)
            .arg(&out);
        self.launch(f, grid(seqs.div_ceil(128), 128), b)
    }

    /// `probs[r] = softmax(logits[r] · inv_temp[r])` (`inv_temp`: f32 per row, the inverse
    /// temperature); `probs` may be `logits` when `ld == vocab` (in place).
    pub fn softmax_rows(
        &self,
        logits: DevicePtr,
        vocab: usize,
        ld: usize,
        inv_temp: DevicePtr,
        rows: usize,
        probs: DevicePtr,
    ) -> GpuResult<()> {
        if rows == 0 {
            return Ok(());
        }
        let f = &self.kernels().softmax_rows;
        let (v, l) = (to_i32(vocab), to_i32(ld));
        let mut b = Args::default();
        b.arg(&logits).arg(&v).arg(&l).arg(&inv_temp).arg(&probs);
        self.launch(f, grid(rows, 1024), b)
    }

    /// Speculative rejection sampling, one CTA per sequence.
    pub fn rejection_sample(&self, a: &RejectionArgs) -> GpuResult<()> {
        if a.seqs == 0 {
            return Ok(());
        }
        let f = &self.kernels().rejection_sample;
        let (v, us) = (to_i32(a.vocab), to_i32(a.ustride));
        let mut b = Args::default();
        b.arg(&a.p)
            .arg(&v)
            .arg(&a.q)
            .arg(&a.ids)
            .arg(&a.first)
            .arg(&a.n);
        b.arg(&a.qrow).arg(&a.u).arg(&us).arg(&a.out);
        self.launch(f, grid(a.seqs, 1024), b)
    }
}
