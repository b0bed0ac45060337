//! The CUDA side of the kernels (feature `cuda`): one [`Gpu`] per device with its context, one
//! stream and the PTX modules built from `kernels/cuda/*.cu`, device buffers, and the launches.
//!
//! Everything runs on one stream from one thread (the engine's executor), so buffers are plain
//! allocations addressed by raw device pointers, and a sequence of launches can be captured into
//! a CUDA graph and replayed. Each kernel has a CPU reference in [`crate::cpu`] that the tests
//! compare against.

mod args;
mod error;
mod graph;
mod memory;
mod ops;
mod qdot;
mod settings;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use cudarc::driver::sys;
use cudarc::driver::{result, CudaContext, CudaStream};

pub use args::{
    q8_bytes, AttentionArgs, AttentionScratch, KvLayout, MatmulArgs, MatmulKernel, RejectionArgs,
    RopeArgs, WeightFormat, WeightView,
};
pub use error::{GpuError, GpuResult};
pub use graph::{GpuTimer, Graph};
pub use memory::{bf16_to_f32, f32_to_bf16, Buffer};
use settings::env_usize;
pub use settings::{
    DOTC_MAX_ROWS, DOTC_MIN_COLS, DOTC_PASS_ROWS, DOTC_Q6K_MIN_COLS, DOT_GEMM_FROM, DOT_MMA_FROM,
    DOT_MMA_WIDE_FROM, DOT_SPLIT_FROM_K, DOT_WARP_PAIR_FROM, DOT_WARP_ROWS,
};

/// A raw device address.
pub type DevicePtr = u64;

/// The oldest driver the PTX of `kernels/cuda` loads on (CUDA 13.0, PTX ISA 9.0).
const MIN_DRIVER: i32 = 13000;

/// What every user of one device shares: the context and the loaded kernels.
struct Shared {
    name: String,
    ctx: Arc<CudaContext>,
    kernels: ops::Kernels,
}

/// One GPU as one user sees it (a model and its KV pools): the shared context and kernels, and
/// a stream of its own, so that models used from different threads never meet inside a graph
/// capture.
pub struct Gpu {
    shared: Arc<Shared>,
    ordinal: usize,
    name: String,
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    /// Index into [`MatmulKernel::CHOICES`].
    matmul_kernel: std::sync::atomic::AtomicUsize,
    /// The fewest rows [`MatmulKernel::Dot`] gives its int8 mma kernels (fewer take dp4a):
    /// `SPECD_DOT_MMA_FROM`, default [`DOT_MMA_FROM`].
    dot_mma_from: std::sync::atomic::AtomicUsize,
    /// The fewest rows a wide Q4_K product takes int8 mma: `SPECD_DOT_MMA_WIDE_FROM`, default
    /// [`DOT_MMA_WIDE_FROM`].
    dot_mma_wide_from: std::sync::atomic::AtomicUsize,
    /// The fewest rows [`MatmulKernel::Dot`] gives its tiled GEMM: `SPECD_DOT_GEMM_FROM`,
    /// default [`DOT_GEMM_FROM`].
    dot_gemm_from: std::sync::atomic::AtomicUsize,
    /// The shortest k for which the dp4a products take two warps a column:
    /// `SPECD_DOT_SPLIT_FROM_K`, default [`DOT_SPLIT_FROM_K`].
    dot_split_from_k: std::sync::atomic::AtomicUsize,
    /// The most rows a CTA of the dp4a products takes of a narrow product: `SPECD_DOT_WARP_ROWS`,
    /// default [`DOT_WARP_ROWS`].
    dot_warp_rows: std::sync::atomic::AtomicUsize,
    /// The fewest rows a narrow product's split dp4a kernels take two columns a warp:
    /// `SPECD_DOT_WARP_PAIR_FROM`, default [`DOT_WARP_PAIR_FROM`].
    dot_warp_pair_from: std::sync::atomic::AtomicUsize,
    /// The tiled GEMM's rows a CTA in tiles of 32 (1 or 2; 0: by the grid's size):
    /// `SPECD_DOT_GEMM_WM`, default 0.
    dot_gemm_wm: std::sync::atomic::AtomicUsize,
    /// The fewest output columns a one-row Q4_K product needs to take the lane-per-column
    /// kernel (`SPECD_DOTC_MIN_COLS`, default [`DOTC_MIN_COLS`]).
    dotc_min_cols: std::sync::atomic::AtomicUsize,
    /// The most rows a product takes through the lane-per-column kernels (`SPECD_DOTC_MAX_ROWS`,
    /// default [`DOTC_MAX_ROWS`], at most 8).
    dotc_max_rows: std::sync::atomic::AtomicUsize,
    /// The most rows a pass of those kernels takes (`SPECD_DOTC_PASS_ROWS`, default
    /// [`DOTC_PASS_ROWS`]).
    dotc_pass_rows: std::sync::atomic::AtomicUsize,
    /// The fewest output columns a Q6_K product needs to take the lane-per-column kernels
    /// (`SPECD_DOTC_Q6K_MIN_COLS`, default [`DOTC_Q6K_MIN_COLS`]).
    dotc_q6k_min_cols: std::sync::atomic::AtomicUsize,
    launches: AtomicU64,
    /// Launch kernels with programmatic dependent launch (`SPECD_PDL=0` turns it off).
    pdl: bool,
    /// Where the prefill GEMM dequantizes quantized weights (bf16), if reserved.
    dequant: Mutex<Option<Buffer<u16>>>,
}

impl std::fmt::Debug for Gpu {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gpu")
            .field("ordinal", &self.ordinal)
            .field("name", &self.name)
            .finish()
    }
}

impl Gpu {
    /// The GPU `cuda:ordinal` with a new stream. The context and the kernels are created once
    /// per process and shared.
    pub fn open(ordinal: usize) -> GpuResult<Arc<Gpu>> {
        static OPEN: OnceLock<Mutex<HashMap<usize, Arc<Shared>>>> = OnceLock::new();
        let shared = {
            let mut open = OPEN
                .get_or_init(Default::default)
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            match open.get(&ordinal) {
                Some(s) => s.clone(),
                None => {
                    let s = Arc::new(Self::create(ordinal)?);
                    open.insert(ordinal, s.clone());
                    s
                }
            }
        };
        shared
            .ctx
            .bind_to_thread()
            .map_err(GpuError::driver("binding the context"))?;
        let stream = shared
            .ctx
            .new_stream()
            .map_err(GpuError::driver("creating a stream"))?;
        Ok(Arc::new(Gpu {
            ordinal,
            name: shared.name.clone(),
            ctx: shared.ctx.clone(),
            stream,
            matmul_kernel: std::sync::atomic::AtomicUsize::new(ops::kernel_index(
                std::env::var("SPECD_MATMUL")
                    .ok()
                    .and_then(|n| MatmulKernel::from_name(&n))
                    .unwrap_or(MatmulKernel::DEFAULT),
            )),
            dot_mma_from: env_usize("SPECD_DOT_MMA_FROM", DOT_MMA_FROM).into(),
            dot_mma_wide_from: env_usize("SPECD_DOT_MMA_WIDE_FROM", DOT_MMA_WIDE_FROM).into(),
            dot_gemm_from: env_usize("SPECD_DOT_GEMM_FROM", DOT_GEMM_FROM).into(),
            dot_split_from_k: env_usize("SPECD_DOT_SPLIT_FROM_K", DOT_SPLIT_FROM_K).into(),
            dot_warp_rows: env_usize("SPECD_DOT_WARP_ROWS", DOT_WARP_ROWS).into(),
            dot_warp_pair_from: env_usize("SPECD_DOT_WARP_PAIR_FROM", DOT_WARP_PAIR_FROM).into(),
            dot_gemm_wm: env_usize("SPECD_DOT_GEMM_WM", 0).into(),
            dotc_min_cols: env_usize("SPECD_DOTC_MIN_COLS", DOTC_MIN_COLS).into(),
            dotc_max_rows: env_usize("SPECD_DOTC_MAX_ROWS", DOTC_MAX_ROWS).into(),
            dotc_pass_rows: env_usize("SPECD_DOTC_PASS_ROWS", DOTC_PASS_ROWS).into(),
            dotc_q6k_min_cols: env_usize("SPECD_DOTC_Q6K_MIN_COLS", DOTC_Q6K_MIN_COLS).into(),
            launches: AtomicU64::new(0),
            pdl: std::env::var("SPECD_PDL").map_or(true, |v| v != "0"),
            dequant: Mutex::new(None),
            shared,
        }))
    }

    fn create(ordinal: usize) -> GpuResult<Shared> {
        // SAFETY: only probes whether the driver library can be loaded.
        if !unsafe { sys::is_culib_present() } {
            return Err(GpuError::NoDriver);
        }
        result::init().map_err(GpuError::driver("cuInit"))?;
        let mut version = 0;
        // SAFETY: writes one int; the symbol exists in every driver.
        unsafe { sys::cuDriverGetVersion(&mut version) }
            .result()
            .map_err(GpuError::driver("cuDriverGetVersion"))?;
        if version < MIN_DRIVER {
            return Err(GpuError::DriverTooOld {
                found_major: version / 1000,
                found_minor: version % 1000 / 10,
                need_major: MIN_DRIVER / 1000,
                need_minor: MIN_DRIVER % 1000 / 10,
            });
        }
        let count = CudaContext::device_count().map_err(GpuError::driver("cuDeviceGetCount"))?;
        if ordinal >= count.max(0) as usize {
            return Err(GpuError::NoSuchDevice {
                ordinal,
                count: count.max(0) as usize,
            });
        }
        let ctx = CudaContext::new(ordinal).map_err(GpuError::driver("creating the context"))?;
        let name = ctx.name().unwrap_or_else(|_| "unknown GPU".into());
        let (major, minor) = ctx
            .compute_capability()
            .map_err(GpuError::driver("reading the compute capability"))?;
        if major < 9 {
            return Err(GpuError::UnsupportedDevice {
                ordinal,
                name,
                major,
                minor,
            });
        }
        // Each user keeps to its own stream and thread: no per-buffer events (they would also
        // break graph capture). SAFETY: set before any buffer exists.
        unsafe { ctx.disable_event_tracking() };
        let kernels = ops::Kernels::load(&ctx)?;
        Ok(Shared { name, ctx, kernels })
    }

    fn kernels(&self) -> &ops::Kernels {
        &self.shared.kernels
    }

    /// The device index.
    pub fn ordinal(&self) -> usize {
        self.ordinal
    }

    /// The device's name (e.g. "NVIDIA H200").
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Free and total device memory in bytes.
    pub fn memory(&self) -> GpuResult<(usize, usize)> {
        self.ctx
            .mem_get_info()
            .map_err(GpuError::driver("cuMemGetInfo"))
    }

    /// Kernel launches issued so far (graph replays count the launches they hold once, when
    /// captured).
    pub fn launches(&self) -> u64 {
        self.launches.load(Ordering::Relaxed)
    }

    /// Makes this GPU's context current on the calling thread.
    pub fn bind(&self) -> GpuResult<()> {
        self.ctx
            .bind_to_thread()
            .map_err(GpuError::driver("binding the context"))
    }

    /// Starts (`on`) or stops the range a profiler started with its collection off (Nsight
    /// Compute's `--profile-from-start off`) collects, after the work queued so far has run.
    pub fn profiler_range(&self, on: bool) -> GpuResult<()> {
        self.synchronize()?;
        self.bind()?;
        // SAFETY: both calls take no arguments and only mark the context's current range.
        let code = unsafe {
            if on {
                sys::cuProfilerStart()
            } else {
                sys::cuProfilerStop()
            }
        };
        code.result()
            .map_err(GpuError::driver("cuProfilerStart/cuProfilerStop"))
    }

    /// Waits until everything queued on the stream has run; reports a failed kernel.
    pub fn synchronize(&self) -> GpuResult<()> {
        self.stream
            .synchronize()
            .map_err(GpuError::driver("a kernel of this step"))
    }

    fn count_launch(&self) {
        self.launches.fetch_add(1, Ordering::Relaxed);
    }
}
