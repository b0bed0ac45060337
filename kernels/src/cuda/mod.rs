//! The CUDA side of the kernels (feature `cuda`): one [`Gpu`] per device with its context, one
//! stream and the PTX modules built from `kernels/cuda/*.cu`, device buffers, and the launches.
//!
//! Everything runs on one stream from one thread (the engine's executor), so buffers are plain
//! allocations addressed by raw device pointers, and a sequence of launches can be captured into
//! a CUDA graph and replayed. Each kernel has a CPU reference in [`crate::cpu`] that the tests
//! compare against.

mod args;
mod error;
mod ops;
mod qdot;

use std::collections::HashMap;
use std::marker::PhantomData;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use cudarc::driver::sys::{self, CUstreamCaptureMode};
use cudarc::driver::{result, CudaContext, CudaGraph, CudaStream, DeviceRepr};

pub use args::{
    q8_bytes, AttentionArgs, AttentionScratch, KvLayout, MatmulArgs, MatmulKernel, RejectionArgs,
    RopeArgs, WeightFormat, WeightView,
};
pub use error::{GpuError, GpuResult};

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

/// The fewest rows the 8-bit-activation products take on the tensor cores by default: on the
/// 1.5B's shapes (H100, BENCHMARKS.md, session 20) dp4a was faster up to 5 rows a product and
/// int8 mma from 8 (and for prefill).
pub const DOT_MMA_FROM: usize = 8;

/// The fewest rows the 8-bit-activation products take in the tiled GEMM by default (qgemm.cu:
/// 32 columns by 32 or 64 rows a CTA, the next stage's loads in flight while the tensor cores
/// work), the rows of prefill and of large batches; fewer take int8 mma or dp4a. On the 1.5B's
/// shapes (H100, BENCHMARKS.md, session 22) a forward of 32 rows took 10.6 ms through it
/// against 6.5 through int8 mma, 64 rows the same (11.3 / 11.0), 128 rows 13.3 against 19.3.
pub const DOT_GEMM_FROM: usize = 64;

/// The shortest k for which the dp4a products (up to 7 rows) take two warps an output column by
/// default, each walking half of every 8 blocks: every k. On the 1.5B's shapes (H100,
/// BENCHMARKS.md, session 22) a decode step took 1.446 ms with every product split, 1.484 with
/// only the down projections (k = 8,960) and 1.545 with none; five rows 2.49 / 2.62 / 2.81.
pub const DOT_SPLIT_FROM_K: usize = 0;

/// The fewest output columns for which one row of a Q4_K product takes the lane-per-column
/// kernel by default: on the 1.5B's shapes (H100, session 20) it gained 4 % of a decode step
/// on the gate and up products (17,920 columns) and lost on the narrow ones (1,536 and 2,048
/// columns: 48 to 64 CTAs of 32 columns do not fill the GPU).
pub const DOTC_MIN_COLS: usize = 8192;

/// The number in the environment variable `name`, or `default` when unset or not a number.
fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
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
    /// The fewest rows [`MatmulKernel::Dot`] gives its tiled GEMM: `SPECD_DOT_GEMM_FROM`,
    /// default [`DOT_GEMM_FROM`].
    dot_gemm_from: std::sync::atomic::AtomicUsize,
    /// The shortest k for which the dp4a products take two warps a column:
    /// `SPECD_DOT_SPLIT_FROM_K`, default [`DOT_SPLIT_FROM_K`].
    dot_split_from_k: std::sync::atomic::AtomicUsize,
    /// The tiled GEMM's rows a CTA in tiles of 32 (1 or 2; 0: by the grid's size):
    /// `SPECD_DOT_GEMM_WM`, default 0.
    dot_gemm_wm: std::sync::atomic::AtomicUsize,
    /// The fewest output columns a one-row Q4_K product needs to take the lane-per-column
    /// kernel (`SPECD_DOTC_MIN_COLS`, default [`DOTC_MIN_COLS`]).
    dotc_min_cols: std::sync::atomic::AtomicUsize,
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
            dot_gemm_from: env_usize("SPECD_DOT_GEMM_FROM", DOT_GEMM_FROM).into(),
            dot_split_from_k: env_usize("SPECD_DOT_SPLIT_FROM_K", DOT_SPLIT_FROM_K).into(),
            dot_gemm_wm: env_usize("SPECD_DOT_GEMM_WM", 0).into(),
            dotc_min_cols: env_usize("SPECD_DOTC_MIN_COLS", DOTC_MIN_COLS).into(),
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

    /// The row-product kernel `matmul_rows` uses (`SPECD_MATMUL=16x8`, `simple`, ... picks
    /// another; see [`MatmulKernel`]).
    pub fn matmul_kernel(&self) -> MatmulKernel {
        MatmulKernel::CHOICES[self.matmul_kernel.load(Ordering::Relaxed)]
    }

    /// Switches the row-product kernel (graphs captured before keep the old one).
    pub fn set_matmul_kernel(&self, k: MatmulKernel) {
        self.matmul_kernel
            .store(ops::kernel_index(k), Ordering::Relaxed);
    }

    /// The fewest rows the 8-bit-activation products take on the tensor cores (int8 mma) rather
    /// than dp4a (qdot.cu); both add in one order, so this changes speed only.
    pub fn dot_mma_from(&self) -> usize {
        self.dot_mma_from.load(Ordering::Relaxed).max(2)
    }

    /// The fewest rows the 8-bit-activation products take in the tiled GEMM (qgemm.cu); the
    /// same bits as the other kernels.
    pub fn dot_gemm_from(&self) -> usize {
        self.dot_gemm_from.load(Ordering::Relaxed)
    }

    /// Sets [`Gpu::dot_gemm_from`] (graphs captured before keep the old choice).
    pub fn set_dot_gemm_from(&self, rows: usize) {
        self.dot_gemm_from.store(rows, Ordering::Relaxed);
    }

    /// Sets the shortest k for which the dp4a products take two warps a column (the same bits
    /// either way; graphs captured before keep the old choice).
    pub fn set_dot_split_from_k(&self, k: usize) {
        self.dot_split_from_k.store(k, Ordering::Relaxed);
    }

    /// Sets the tiled GEMM's rows a CTA in tiles of 32 (1 or 2; 0: by the grid's size, the
    /// default). The same bits either way; graphs captured before keep the old choice.
    pub fn set_dot_gemm_wm(&self, wm: usize) {
        self.dot_gemm_wm.store(wm, Ordering::Relaxed);
    }

    /// What picks an 8-bit-activation product's kernel.
    fn dot_settings(&self) -> qdot::DotSettings {
        qdot::DotSettings {
            mma_from: self.dot_mma_from(),
            gemm_from: self.dot_gemm_from(),
            dotc_min_cols: self.dotc_min_cols(),
            split_from_k: self.dot_split_from_k.load(Ordering::Relaxed),
            gemm_wm: self.dot_gemm_wm.load(Ordering::Relaxed),
            sms: self.kernels().sms,
        }
    }

    /// The fewest output columns for which a one-row Q4_K product takes the kernel with a lane
    /// per column rather than a warp per column (the same bits either way).
    pub fn dotc_min_cols(&self) -> usize {
        self.dotc_min_cols.load(Ordering::Relaxed)
    }

    /// Sets [`Gpu::dotc_min_cols`] (graphs captured before keep the old choice).
    pub fn set_dotc_min_cols(&self, cols: usize) {
        self.dotc_min_cols.store(cols, Ordering::Relaxed);
    }

    /// Sets [`Gpu::dot_mma_from`] (graphs captured before keep the old choice).
    pub fn set_dot_mma_from(&self, rows: usize) {
        self.dot_mma_from.store(rows, Ordering::Relaxed);
    }

    /// Reserves `elems` bf16 values of scratch for products of many rows over quantized
    /// weights, which dequantize a slice of the matrix at a time (as many 64-row tiles as fit)
    /// and run the prefill GEMM over it; without it they take the row kernel. Call it before
    /// capturing graphs: a larger reservation replaces the buffer those graphs point at.
    pub fn reserve_dequant_scratch(&self, elems: usize) -> GpuResult<()> {
        let mut d = self.dequant.lock().unwrap_or_else(|e| e.into_inner());
        if d.as_ref().is_some_and(|b| b.len() >= elems) {
            return Ok(());
        }
        *d = Some(self.alloc::<u16>(
            elems,
            "the prefill dequantization scratch",
            "use a smaller model or bf16 weights",
        )?);
        Ok(())
    }

    /// The dequantization scratch's address and length (0 and 0 when none is reserved).
    fn dequant_scratch(&self) -> (DevicePtr, usize) {
        let d = self.dequant.lock().unwrap_or_else(|e| e.into_inner());
        d.as_ref().map_or((0, 0), |b| (b.ptr(), b.len()))
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

    /// Waits until everything queued on the stream has run; reports a failed kernel.
    pub fn synchronize(&self) -> GpuResult<()> {
        self.stream
            .synchronize()
            .map_err(GpuError::driver("a kernel of this step"))
    }

    /// A zeroed buffer of `len` elements. `what` and `advice` go into the error when the
    /// memory is not there.
    pub fn alloc<T: DeviceRepr>(
        &self,
        len: usize,
        what: &str,
        advice: &'static str,
    ) -> GpuResult<Buffer<T>> {
        let bytes = len.max(1) * std::mem::size_of::<T>();
        let oom = |free, total| GpuError::OutOfMemory {
            what: what.to_string(),
            bytes,
            free,
            total,
            ordinal: self.ordinal,
            advice,
        };
        self.bind()?;
        let (free, total) = self.memory()?;
        if bytes > free {
            return Err(oom(free, total));
        }
        // SAFETY: the memory is zeroed below (and waited for) before anything reads it.
        let ptr = match unsafe { result::malloc_async(self.stream.cu_stream(), bytes) } {
            Ok(p) => p,
            Err(e) if e.0 == sys::cudaError_enum::CUDA_ERROR_OUT_OF_MEMORY => {
                let (free, total) = self.memory()?;
                return Err(oom(free, total));
            }
            Err(e) => return Err(GpuError::driver("cuMemAllocAsync")(e)),
        };
        let buf = Buffer {
            ptr,
            len,
            stream: self.stream.clone(),
            _marker: PhantomData,
        };
        // SAFETY: `ptr` holds `bytes` bytes on this stream.
        unsafe { result::memset_d8_async(ptr, 0, bytes, self.stream.cu_stream()) }
            .map_err(GpuError::driver("cuMemsetD8Async"))?;
        Ok(buf)
    }

    /// A new buffer holding `data`.
    pub fn upload<T: DeviceRepr>(
        &self,
        data: &[T],
        what: &str,
        advice: &'static str,
    ) -> GpuResult<Buffer<T>> {
        let buf = self.alloc::<T>(data.len(), what, advice)?;
        self.write(&buf, 0, data)?;
        Ok(buf)
    }

    /// A new byte buffer holding the raw bytes of `data` (any plain-old-data element type,
    /// e.g. bf16 weights as `half::bf16`), without an intermediate copy.
    pub fn upload_raw<T: Copy>(
        &self,
        data: &[T],
        what: &str,
        advice: &'static str,
    ) -> GpuResult<Buffer<u8>> {
        // SAFETY: `T: Copy` plain data is read as the bytes it is made of; the slice outlives
        // the copy, which the driver stages before returning.
        let bytes = unsafe {
            std::slice::from_raw_parts(data.as_ptr().cast::<u8>(), std::mem::size_of_val(data))
        };
        self.upload(bytes, what, advice)
    }

    /// Copies `data` into `dst` from element `offset` on.
    pub fn write<T: DeviceRepr>(
        &self,
        dst: &Buffer<T>,
        offset: usize,
        data: &[T],
    ) -> GpuResult<()> {
        assert!(
            offset + data.len() <= dst.len,
            "write past the end of a device buffer"
        );
        self.write_raw(dst.at(offset), data)
    }

    /// Copies `data` to the device address `dst`.
    pub fn write_raw<T: DeviceRepr>(&self, dst: DevicePtr, data: &[T]) -> GpuResult<()> {
        if data.is_empty() {
            return Ok(());
        }
        self.bind()?;
        // SAFETY: the caller's buffer holds the destination range; pageable sources are staged
        // by the driver before the call returns.
        unsafe { result::memcpy_htod_async(dst, data, self.stream.cu_stream()) }
            .map_err(GpuError::driver("copying to the GPU"))
    }

    /// Copies `len` elements from the device address `src` back, after the stream's work.
    pub fn read<T: DeviceRepr + Default + Clone>(
        &self,
        src: DevicePtr,
        len: usize,
    ) -> GpuResult<Vec<T>> {
        let mut out = vec![T::default(); len];
        if len == 0 {
            return Ok(out);
        }
        self.bind()?;
        // SAFETY: `src` holds `len` elements (the caller's buffer); the copy completes before
        // `synchronize` returns.
        unsafe { result::memcpy_dtoh_async(&mut out, src, self.stream.cu_stream()) }
            .map_err(GpuError::driver("copying from the GPU"))?;
        self.synchronize()?;
        Ok(out)
    }

    /// Copies `bytes` bytes between device addresses.
    pub fn copy(&self, dst: DevicePtr, src: DevicePtr, bytes: usize) -> GpuResult<()> {
        if bytes == 0 {
            return Ok(());
        }
        self.bind()?;
        // SAFETY: both ranges lie in live buffers (the caller's).
        unsafe { result::memcpy_dtod_async(dst, src, bytes, self.stream.cu_stream()) }
            .map_err(GpuError::driver("copying on the GPU"))
    }

    /// Records the launches `f` makes into a graph instead of running them. The launches must
    /// not allocate, copy from the host or synchronize. An error of `f` ends the capture and is
    /// returned as it is.
    pub fn capture<E: From<GpuError>>(
        &self,
        f: impl FnOnce() -> Result<(), E>,
    ) -> Result<Graph, E> {
        self.bind()?;
        self.stream
            .begin_capture(CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL)
            .map_err(GpuError::driver("beginning a graph capture"))?;
        let body = f();
        let ended = self
            .stream
            .end_capture(sys::CUgraphInstantiate_flags(0))
            .map_err(GpuError::driver("instantiating a captured graph"));
        body?;
        match ended? {
            Some(graph) => Ok(Graph { graph }),
            None => Err(GpuError::Driver {
                context: "capturing a graph (nothing was captured)",
                error: cudarc::driver::DriverError(
                    sys::cudaError_enum::CUDA_ERROR_STREAM_CAPTURE_INVALIDATED,
                ),
            }
            .into()),
        }
    }

    /// Runs a captured graph on the stream.
    pub fn replay(&self, graph: &Graph) -> GpuResult<()> {
        graph
            .graph
            .launch()
            .map_err(GpuError::driver("replaying a graph"))
    }

    fn count_launch(&self) {
        self.launches.fetch_add(1, Ordering::Relaxed);
    }

    /// Two timing events on this GPU, to time work queued on its stream ([`GpuTimer`]).
    pub fn timer(&self) -> GpuResult<GpuTimer> {
        let event = || {
            self.ctx
                .new_event(Some(sys::CUevent_flags::CU_EVENT_DEFAULT))
                .map_err(GpuError::driver("creating a timing event"))
        };
        Ok(GpuTimer {
            start: event()?,
            end: event()?,
        })
    }

    /// Records `timer`'s start on the stream: after the work queued so far.
    pub fn mark_start(&self, timer: &GpuTimer) -> GpuResult<()> {
        self.record(&timer.start)
    }

    /// Records `timer`'s end on the stream.
    pub fn mark_end(&self, timer: &GpuTimer) -> GpuResult<()> {
        self.record(&timer.end)
    }

    fn record(&self, event: &cudarc::driver::CudaEvent) -> GpuResult<()> {
        event
            .record(&self.stream)
            .map_err(GpuError::driver("recording a timing event"))
    }
}

/// A start and an end event on a GPU's stream: the GPU's time between the work queued before
/// each ([`Gpu::mark_start`], [`Gpu::mark_end`]), for diagnostics (recording costs the host a few microseconds).
#[derive(Debug)]
pub struct GpuTimer {
    start: cudarc::driver::CudaEvent,
    end: cudarc::driver::CudaEvent,
}

impl GpuTimer {
    /// Microseconds from the start mark to the end mark (waits for the end).
    pub fn elapsed_us(&self) -> GpuResult<f64> {
        self.start
            .elapsed_ms(&self.end)
            .map(|ms| f64::from(ms) * 1e3)
            .map_err(GpuError::driver("reading a timing event"))
    }
}

/// A captured sequence of launches.
pub struct Graph {
    graph: CudaGraph,
}

// SAFETY: a graph is only launched from the thread that owns the engine's models (the executor);
// it moves between threads only while unused.
unsafe impl Send for Graph {}

impl std::fmt::Debug for Graph {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Graph")
    }
}

/// A device allocation of `len` elements of `T`, freed (on its stream) when dropped.
pub struct Buffer<T> {
    ptr: DevicePtr,
    len: usize,
    stream: Arc<CudaStream>,
    _marker: PhantomData<T>,
}

impl<T> std::fmt::Debug for Buffer<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Buffer({} × {})", self.len, std::any::type_name::<T>())
    }
}

impl<T> Buffer<T> {
    /// The device address of the first element.
    pub fn ptr(&self) -> DevicePtr {
        self.ptr
    }

    /// The device address of element `i` (`i` may equal the length).
    pub fn at(&self, i: usize) -> DevicePtr {
        debug_assert!(i <= self.len);
        self.ptr + (i * std::mem::size_of::<T>()) as u64
    }

    /// Elements.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the buffer holds no elements.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Bytes.
    pub fn bytes(&self) -> usize {
        self.len * std::mem::size_of::<T>()
    }
}

impl<T> Drop for Buffer<T> {
    fn drop(&mut self) {
        // The dropping thread may not have the context current yet.
        let _ = self.stream.context().bind_to_thread();
        // SAFETY: the allocation came from malloc_async on this stream; work queued before the
        // free still sees it.
        let _ = unsafe { result::free_async(self.ptr, self.stream.cu_stream()) };
    }
}

/// `f32` to bf16 bits, rounding to nearest even (what the kernels' `__float2bfloat16` does).
pub fn f32_to_bf16(x: f32) -> u16 {
    let bits = x.to_bits();
    if x.is_nan() {
        return ((bits >> 16) as u16) | 0x40;
    }
    let round = 0x7fff + ((bits >> 16) & 1);
    (bits.wrapping_add(round) >> 16) as u16
}

/// bf16 bits to `f32` (exact).
pub fn bf16_to_f32(b: u16) -> f32 {
    f32::from_bits(u32::from(b) << 16)
}
