//! The kernels of `kernels/cuda`, loaded once per GPU, and one launch function each.
//!
//! - this module: the kernels' modules and functions, loaded once per GPU ([`Kernels`]).
//! - `launch`: a launch itself: its arguments, its grid, and programmatic dependent launch.
//! - `matmul`: the products `y = x · wᵀ`: the row kernels and the prefill GEMM.
//! - `rows`: launches row by row: embedding lookup, residual add and RMSNorm, the SiLU gate,
//!   gathering rows.
//! - `attention`: rotary embedding with the paged KV write, and paged attention.
//! - `sample`: argmax, greedy acceptance, softmax and rejection sampling.
//!
//! The products over 8-bit activations are launched from `qdot.rs`, beside this module.

mod attention;
mod launch;
mod matmul;
mod rows;
mod sample;

use std::sync::Arc;

use cudarc::driver::{sys, CudaContext, CudaFunction};
use cudarc::nvrtc::Ptx;

use super::args::{MatmulKernel, WeightFormat};
use super::qdot::DotKernels;
use super::{GpuError, GpuResult};
use matmul::GEMM_SHARED_BYTES;

pub(super) use launch::{grid, to_i32, Args};

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
    lookup_ids: CudaFunction,
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
            lookup_ids: f(&sample, "lookup_ids")?,
            accept_greedy: f(&sample, "accept_greedy")?,
            softmax_rows: f(&sample, "softmax_rows")?,
            rejection_sample: f(&sample, "rejection_sample")?,
        })
    }
}
