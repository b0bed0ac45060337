//! KV cache of one sequence.
//!
//! Keys and values are stored token-major: one row of `n_kv_heads * head_dim` floats per token
//! and layer, exactly the row layout the paged cache's blocks will hold. The forward talks to the
//! cache only through [`SequenceCache`]'s methods and reads rows as chunks
//! ([`specd_kernels::cpu::KvChunks`]), so a block-table implementation can replace the
//! contiguous buffers without touching the model.

/// The cached keys and values of one sequence, for every layer.
#[derive(Debug, Clone)]
pub struct SequenceCache {
    layers: Vec<LayerRows>,
    row: usize,
    len: usize,
}

#[derive(Debug, Clone, Default)]
struct LayerRows {
    keys: Vec<f32>,
    values: Vec<f32>,
}

impl SequenceCache {
    /// An empty cache for a model with `num_layers` layers and `row` floats per token and layer.
    pub fn new(num_layers: usize, row: usize) -> Self {
        Self {
            layers: vec![LayerRows::default(); num_layers],
            row,
            len: 0,
        }
    }

    /// Number of committed token positions.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether no position is cached.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Drops every position from `len` on (rollback after rejected drafts). Cheap: no memory is
    /// released, so re-appending reuses it.
    pub fn truncate(&mut self, len: usize) {
        let len = len.min(self.len);
        for l in &mut self.layers {
            l.keys.truncate(len * self.row);
            l.values.truncate(len * self.row);
        }
        self.len = len;
    }

    /// Releases all memory held by the cache.
    pub fn free(&mut self) {
        for l in &mut self.layers {
            *l = LayerRows::default();
        }
        self.len = 0;
    }

    /// Bytes of memory the cache holds (capacity, not only length).
    pub fn allocated_bytes(&self) -> usize {
        self.layers
            .iter()
            .map(|l| (l.keys.capacity() + l.values.capacity()) * std::mem::size_of::<f32>())
            .sum()
    }

    /// Writes rows for new positions of `layer`, after the committed ones. They become visible
    /// to [`SequenceCache::layer_chunks`] at once and part of the length on [`Self::commit`].
    pub(crate) fn write(&mut self, layer: usize, keys: &[f32], values: &[f32]) {
        let l = &mut self.layers[layer];
        l.keys.extend_from_slice(keys);
        l.values.extend_from_slice(values);
    }

    /// Every row written for `layer`, committed or not, as key and value chunks.
    pub(crate) fn layer_rows(&self, layer: usize) -> (&[f32], &[f32]) {
        let l = &self.layers[layer];
        (&l.keys, &l.values)
    }

    /// Makes `n` written positions part of the sequence.
    pub(crate) fn commit(&mut self, n: usize) {
        self.len += n;
        debug_assert!(self
            .layers
            .iter()
            .all(|l| l.keys.len() == self.len * self.row && l.values.len() == self.len * self.row));
    }

    /// Forgets rows written but not committed (a failed forward).
    pub(crate) fn discard_uncommitted(&mut self) {
        self.truncate(self.len);
    }

    /// The stored rows of `layer` for positions `0..len`, for tests comparing caches.
    pub fn layer_snapshot(&self, layer: usize) -> (Vec<f32>, Vec<f32>) {
        let (k, v) = self.layer_rows(layer);
        (
            k[..self.len * self.row].to_vec(),
            v[..self.len * self.row].to_vec(),
        )
    }
}
