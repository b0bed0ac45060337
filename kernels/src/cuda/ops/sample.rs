//! The launches over logits: argmax with its probability, picks looked up as token ids, greedy
//! acceptance of drafts, softmax with a per-row temperature, and speculative rejection sampling.

use cudarc::driver::LaunchConfig;

use super::launch::{grid, to_i32, Args};
use crate::cuda::{DevicePtr, Gpu, GpuResult, RejectionArgs};

/// Logits per CTA of `argmax_partial` (ARGMAX_CHUNK in sample.cu).
const ARGMAX_CHUNK: usize = 4096;

impl Gpu {
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

    /// `out[i] = table[idx[i]]` for `i < n` (i32 each): a drafter's picks on its reduced head
    /// turned into token ids on the device.
    pub fn lookup_ids(
        &self,
        table: DevicePtr,
        idx: DevicePtr,
        n: usize,
        out: DevicePtr,
    ) -> GpuResult<()> {
        if n == 0 {
            return Ok(());
        }
        let f = &self.kernels().lookup_ids;
        let nn = to_i32(n);
        let mut b = Args::default();
        b.arg(&table).arg(&idx).arg(&nn).arg(&out);
        self.launch(f, grid(n.div_ceil(128), 128), b)
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
