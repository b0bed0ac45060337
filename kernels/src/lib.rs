//! specd-kernels: the compute kernels of specd's forward pass that candle does not provide in the
//! shape speculation needs.
//!
//! - [`cpu`]: plain-Rust implementations over `f32` slices. They are the CPU path of the engine
//!   and the reference every future GPU kernel (behind the `cuda` feature) is tested against:
//!   ragged causal attention over a KV cache stored as chunks of token rows (the layout the paged
//!   cache uses), rotary embeddings at arbitrary positions, and the SwiGLU gate.

pub mod cpu;
