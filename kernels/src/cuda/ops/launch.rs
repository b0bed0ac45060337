//! A kernel launch: the arguments as the driver reads them, a one-dimensional grid, and the
//! launch on the GPU's stream with programmatic dependent launch.

use std::ffi::c_void;
use std::marker::PhantomData;

use cudarc::driver::{sys, CudaFunction, DeviceRepr, LaunchConfig};

use crate::cuda::{Gpu, GpuError, GpuResult};

pub(in crate::cuda) fn grid(blocks: usize, threads: u32) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (blocks.max(1) as u32, 1, 1),
        block_dim: (threads, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// A kernel's arguments: pointers to values that outlive the launch call (as the driver reads
/// them during `cuLaunchKernelEx`).
#[derive(Default)]
pub(in crate::cuda) struct Args<'a> {
    ptrs: Vec<*mut c_void>,
    _values: PhantomData<&'a ()>,
}

impl<'a> Args<'a> {
    pub(in crate::cuda) fn arg<T: DeviceRepr>(&mut self, v: &'a T) -> &mut Self {
        self.ptrs.push(v as *const T as *mut c_void);
        self
    }
}

impl Gpu {
    /// Launches `f` on the stream. With programmatic dependent launch (on unless
    /// `SPECD_PDL=0`), the next kernel may be scheduled while this one drains: every kernel
    /// starts with `griddepcontrol.wait` (kernels/cuda/reductions.cuh), so none reads its inputs
    /// before the kernel before it has finished and its writes are visible.
    pub(in crate::cuda) fn launch(
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
pub(super) fn stride_blocks(n: usize) -> usize {
    n.div_ceil(256).clamp(1, 4096)
}

pub(in crate::cuda) fn to_i32(v: usize) -> i32 {
    i32::try_from(v).expect("a size that fits the kernels' 32-bit indices")
}
