//! A forward's metadata for the kernels: token ids, positions, KV slots, the rows' sequences
//! and lengths, wanted rows, block tables (and, for a GLIDE drafter, what each row sees of the
//! target's cache and the target's block tables), padded to the shapes CUDA graphs are captured
//! for, and where each section lies in the device buffer.

use specd_kernels::cuda::{Buffer, DevicePtr};

use crate::kv::{BlockTable, BLOCK_SIZE};
use crate::model::llama::{Logits, SeqInput};

/// Rows (and wanted logit rows) a captured graph covers at most; larger forwards (long prompt
/// chunks) launch their kernels directly.
pub(super) const GRAPH_MAX_ROWS: usize = 256;

/// The padded sizes of a forward: what its kernels are launched for. Graphs are captured per
/// shape; rows past the real ones are padding that writes nowhere it matters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) struct Shape {
    /// Token rows.
    pub rows: usize,
    /// Rows of logits.
    pub logit_rows: usize,
    /// Sequences.
    pub seqs: usize,
    /// Block-table entries per sequence.
    pub width: usize,
    /// Target block-table entries per sequence of a GLIDE drafter's cross-attention (0: a
    /// forward without one).
    pub cross_width: usize,
}

/// A count rounded up to the sizes graphs are captured for: exact up to 16, then steps of an
/// eighth of the next power of two (17..32 by 4, 33..64 by 8, ...).
fn bucket(n: usize) -> usize {
    if n <= 16 {
        return n;
    }
    let p = n.next_power_of_two();
    let step = p / 8;
    n.div_ceil(step) * step
}

impl Shape {
    /// The exact shape, or (for graphs) the bucketed one. `cross_width` is `None` for a
    /// forward without cross-attention.
    fn of(
        rows: usize,
        logit_rows: usize,
        seqs: usize,
        width: usize,
        cross_width: Option<usize>,
        padded: bool,
    ) -> Self {
        if !padded {
            return Self {
                rows,
                logit_rows,
                seqs,
                width: width.max(1),
                cross_width: cross_width.map_or(0, |w| w.max(1)),
            };
        }
        let table = |w: usize| w.max(4).next_power_of_two();
        Self {
            rows: bucket(rows),
            logit_rows: bucket(logit_rows),
            seqs: bucket(seqs),
            width: table(width),
            cross_width: cross_width.map_or(0, table),
        }
    }

    /// The largest shape a graph is captured for, with block tables `width` entries wide (and
    /// the cross-attention's as wide, for a GLIDE drafter: `cross`).
    pub fn largest_graphed(width: usize, cross: bool) -> Self {
        let n = GRAPH_MAX_ROWS;
        Self::of(n, n, n, width, cross.then_some(width), true)
    }

    /// i32 values of the metadata: ids, positions, slots, row sequences, row lengths (one
    /// each per row), selected rows, sequence first rows and row counts, block tables; with a
    /// cross-attention, the target positions each row sees and the target's block tables.
    pub fn ints(&self) -> usize {
        let cross = if self.cross_width > 0 {
            self.rows + self.seqs * self.cross_width
        } else {
            0
        };
        5 * self.rows + self.logit_rows + 2 * self.seqs + self.seqs * self.width + cross
    }

    fn offsets(&self) -> [usize; 11] {
        let r = self.rows;
        let sel = 5 * r;
        let first = sel + self.logit_rows;
        let n = first + self.seqs;
        let tables = n + self.seqs;
        let cross_len = tables + self.seqs * self.width;
        [
            0,
            r,
            2 * r,
            3 * r,
            4 * r,
            sel,
            first,
            n,
            tables,
            cross_len,
            cross_len + r,
        ]
    }
}

/// The host side of a forward's metadata.
#[derive(Debug)]
pub(super) struct Plan {
    pub shape: Shape,
    /// Real wanted rows and sequences.
    pub logit_rows: usize,
    pub seqs: usize,
    pub meta: Vec<i32>,
}

impl Plan {
    /// Lays out `batch` (slots already reserved in `kv`'s tables). `cross[i]`, for a GLIDE
    /// drafter, is sequence `i`'s table in the target's pool: a row at position `p` sees target
    /// positions `0..min(p, V)` of its `V` verified ones (model/glide/).
    pub fn new(batch: &[SeqInput<'_>], cross: Option<&[&BlockTable]>, padded: bool) -> Self {
        let rows: usize = batch.iter().map(|s| s.tokens.len()).sum();
        let logit_rows: usize = batch.iter().map(|s| s.logits.rows(s.tokens.len())).sum();
        let width = batch
            .iter()
            .map(|s| s.table.blocks().len())
            .max()
            .unwrap_or(1);
        // Only the blocks holding verified positions are read.
        let cross_blocks = |t: &BlockTable| t.len().div_ceil(BLOCK_SIZE);
        let cross_width = cross.map(|c| c.iter().map(|t| cross_blocks(t)).max().unwrap_or(1));
        let shape = Shape::of(rows, logit_rows, batch.len(), width, cross_width, padded);
        let mut meta = vec![0i32; shape.ints()];
        let o = shape.offsets();
        let (mut row, mut sel) = (0, 0);
        for (si, s) in batch.iter().enumerate() {
            let start = s.table.len();
            let blocks = s.table.blocks();
            // A sequence's rows for the verdict kernels; a rider (no rows wanted) gets a
            // padding sequence's one row, and its verdict is not read.
            let (first, n) = match s.logits {
                Logits::None => (0, 1),
                _ => (row, s.tokens.len()),
            };
            meta[o[6] + si] = first as i32;
            meta[o[7] + si] = n as i32;
            for (j, &b) in blocks.iter().enumerate() {
                meta[o[8] + si * shape.width + j] = b as i32;
            }
            let target = cross.map(|c| c[si]);
            if let Some(t) = target {
                for (j, &b) in t.blocks()[..cross_blocks(t)].iter().enumerate() {
                    meta[o[10] + si * shape.cross_width + j] = b as i32;
                }
            }
            for (i, &t) in s.tokens.iter().enumerate() {
                let p = start + i;
                meta[o[0] + row] = t as i32;
                meta[o[1] + row] = p as i32;
                meta[o[2] + row] =
                    (blocks[p / BLOCK_SIZE] as usize * BLOCK_SIZE + p % BLOCK_SIZE) as i32;
                meta[o[3] + row] = si as i32;
                meta[o[4] + row] = (p + 1) as i32;
                if let Some(t) = target {
                    meta[o[9] + row] = p.min(t.len()) as i32;
                }
                let wanted = match s.logits {
                    Logits::All => true,
                    Logits::Last => i + 1 == s.tokens.len(),
                    Logits::None => false,
                };
                if wanted {
                    meta[o[5] + sel] = row as i32;
                    sel += 1;
                }
                row += 1;
            }
        }
        // Padding rows write no KV and attend to nothing; padding sequences own one row.
        for r in rows..shape.rows {
            meta[o[2] + r] = -1;
            meta[o[3] + r] = -1;
        }
        for si in batch.len()..shape.seqs {
            meta[o[7] + si] = 1;
        }
        Self {
            shape,
            logit_rows,
            seqs: batch.len(),
            meta,
        }
    }
}

/// Device addresses of the metadata sections of a shape in the `meta` buffer.
#[derive(Debug, Clone, Copy)]
pub(super) struct MetaPtrs {
    pub ids: DevicePtr,
    pub pos: DevicePtr,
    pub slot: DevicePtr,
    pub row_seq: DevicePtr,
    pub row_len: DevicePtr,
    pub sel: DevicePtr,
    pub first: DevicePtr,
    pub n: DevicePtr,
    pub tables: DevicePtr,
    /// Target positions each row sees, and the target's block tables (cross-attention only).
    pub cross_len: DevicePtr,
    pub cross_tables: DevicePtr,
}

impl MetaPtrs {
    pub fn new(meta: &Buffer<i32>, shape: &Shape) -> Self {
        let o = shape.offsets();
        let cross = shape.cross_width > 0;
        Self {
            ids: meta.at(o[0]),
            pos: meta.at(o[1]),
            slot: meta.at(o[2]),
            row_seq: meta.at(o[3]),
            row_len: meta.at(o[4]),
            sel: meta.at(o[5]),
            first: meta.at(o[6]),
            n: meta.at(o[7]),
            tables: meta.at(o[8]),
            cross_len: if cross { meta.at(o[9]) } else { 0 },
            cross_tables: if cross { meta.at(o[10]) } else { 0 },
        }
    }
}
