//! The CUDA backend's names in a build without the `cuda` feature: choosing a GPU is a clear
//! error, and nothing else needs a `cfg` (candle's pattern).

use std::convert::Infallible;

use super::config::ModelConfig;
use super::device::GpuStats;
use super::glide::GlideHost;
use super::host_weights::HostWeights;
use super::llama::{ForwardOut, GlideInput, HiddenRows, SeqInput, Top, Wanted};
use crate::error::{Error, Result};
use crate::kv::{BlockTable, KvPool};

fn not_compiled() -> Error {
    Error::Device(
        "this specd was built without CUDA: build it with `scripts/gpu/build` (cargo build \
         --release --features cuda), or run with --device cpu"
            .into(),
    )
}

/// No product kernels without CUDA.
pub(crate) fn matmul_kernels() -> Vec<String> {
    Vec::new()
}

/// A model on a GPU (never constructed without the `cuda` feature).
#[derive(Debug)]
pub(crate) struct CudaModel {
    never: Infallible,
}

impl CudaModel {
    pub(crate) fn load(
        _: &ModelConfig,
        _: HostWeights,
        _tied: bool,
        _ordinal: usize,
    ) -> Result<Self> {
        Err(not_compiled())
    }

    pub(crate) fn load_glide(
        target: &CudaModel,
        _: &ModelConfig,
        _: GlideHost,
        _vocab_ids: &[u32],
        _target_layer: usize,
    ) -> Result<Self> {
        match target.never {}
    }

    pub(crate) fn head_is_quantized(&self) -> bool {
        match self.never {}
    }

    pub(crate) fn layers_quantized(&self) -> bool {
        match self.never {}
    }

    pub(crate) fn ordinal(&self) -> usize {
        match self.never {}
    }

    pub(crate) fn kv_storage(&self, _max_blocks: usize) -> GpuBlocks {
        match self.never {}
    }

    pub(crate) fn memory_free(&self) -> Result<usize> {
        match self.never {}
    }

    pub(crate) fn set_graphs(&self, _on: bool) {
        match self.never {}
    }

    pub(crate) fn stats(&self) -> GpuStats {
        match self.never {}
    }

    pub(crate) fn profiler_range(&self, _on: bool) -> Result<()> {
        match self.never {}
    }

    pub(crate) fn copy_bandwidth(&self) -> Result<f64> {
        match self.never {}
    }

    pub(crate) fn set_matmul(&self, _name: &str) -> Result<()> {
        match self.never {}
    }

    pub(crate) fn forward(
        &self,
        _: &mut KvPool,
        _: &mut [SeqInput<'_>],
        _: Wanted<'_, '_>,
        _head_rows: usize,
        _: Option<GlideInput<'_>>,
    ) -> Result<(ForwardOut, Option<HiddenRows>)> {
        match self.never {}
    }

    pub(crate) fn draft_chain(
        &self,
        _: &mut KvPool,
        _: &mut [SeqInput<'_>],
        _counts: &[usize],
        _head_rows: usize,
        _: GlideInput<'_>,
    ) -> Result<Vec<Vec<Top>>> {
        match self.never {}
    }
}

/// KV blocks in GPU memory (never constructed without the `cuda` feature).
#[derive(Debug)]
pub(crate) struct GpuBlocks {
    never: Infallible,
}

impl GpuBlocks {
    pub(crate) fn ordinal(&self) -> usize {
        match self.never {}
    }

    pub(crate) fn allocated(&self) -> usize {
        match self.never {}
    }

    pub(crate) fn block_bytes(&self) -> usize {
        match self.never {}
    }

    pub(crate) fn grow(&mut self) -> Result<u32> {
        match self.never {}
    }

    pub(crate) fn snapshot(&self, _: &BlockTable, _layer: usize) -> (Vec<f32>, Vec<f32>) {
        match self.never {}
    }

    pub(crate) fn try_clone(&self) -> Result<Self> {
        match self.never {}
    }
}
