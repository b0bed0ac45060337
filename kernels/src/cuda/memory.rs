//! Device memory: buffers freed on their stream, copies to, from and on the GPU, and the
//! prefill GEMM's dequantization scratch.

use std::marker::PhantomData;
use std::sync::Arc;

use cudarc::driver::sys;
use cudarc::driver::{result, CudaStream, DeviceRepr};

use super::{DevicePtr, Gpu, GpuError, GpuResult};

impl Gpu {
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
    pub(super) fn dequant_scratch(&self) -> (DevicePtr, usize) {
        let d = self.dequant.lock().unwrap_or_else(|e| e.into_inner());
        d.as_ref().map_or((0, 0), |b| (b.ptr(), b.len()))
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
