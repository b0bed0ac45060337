//! specd-kernels: the compute kernels of specd's forward pass that candle does not provide in the
//! shape speculation needs.
//!
//! - [`cpu`]: plain-Rust implementations over `f32` slices. They are the CPU path of the engine
//!   and the reference every GPU kernel is tested against: ragged causal attention over a KV
//!   cache stored as chunks of token rows (the layout the paged cache uses), rotary embeddings at
//!   arbitrary positions, RMSNorm, the SwiGLU gate, the small-batch quantized products, and the
//!   decisions taken from logits (argmax, greedy and stochastic acceptance).
//! - `cuda` (feature `cuda`): the same operations as CUDA kernels (`kernels/cuda/*.cu`, compiled
//!   to PTX for sm_90 at build time and loaded once per GPU through cudarc), with device
//!   buffers and CUDA-graph capture.

pub mod cpu;
#[cfg(feature = "cuda")]
pub mod cuda;
