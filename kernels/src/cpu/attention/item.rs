//! One work item of a batched attention call: a block of new rows of one sequence, the query
//! heads of one key/value head, each cached key and value row read once for all of them.

use std::ops::Range;

use super::lanes::{accumulate, prefetch, Lanes, Portable};
#[cfg(target_arch = "x86_64")]
use super::lanes::{Avx2, Avx512};
use super::lanes::{PREFETCH_ROWS, VALUE_TILE};
use super::{AttentionShape, KvElem, SeqView, Simd, ROW_BLOCK};

/// Rows `rows` of sequence `seq`, query heads `kv_head · group ..` of the group.
#[derive(Debug, Clone)]
pub(super) struct Item {
    pub(super) seq: usize,
    pub(super) kv_head: usize,
    pub(super) rows: Range<usize>,
}

/// Buffers an item needs, reused by the items one thread runs.
pub(super) struct ItemScratch<'a, T> {
    /// The item's key/value head's rows over its span of positions.
    keys: Vec<&'a [T]>,
    values: Vec<&'a [T]>,
    /// Per (row, head) of the item, over the span: scores, then softmax weights.
    weights: Vec<f32>,
}

impl<T> Default for ItemScratch<'_, T> {
    fn default() -> Self {
        Self {
            keys: Vec::new(),
            values: Vec::new(),
            weights: Vec::new(),
        }
    }
}

impl Item {
    pub(super) fn run<'a, T: KvElem>(
        &self,
        simd: Simd,
        v: &SeqView<'a, T>,
        shape: AttentionShape,
        scratch: &mut ItemScratch<'a, T>,
    ) {
        match simd {
            Simd::Portable => self.compute::<Portable, T>(v, shape, scratch),
            // SAFETY: `Simd::detect` found the features.
            #[cfg(target_arch = "x86_64")]
            Simd::Avx2 => unsafe { self.compute_avx2(v, shape, scratch) },
            // SAFETY: as above.
            #[cfg(target_arch = "x86_64")]
            Simd::Avx512 => unsafe { self.compute_avx512(v, shape, scratch) },
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn compute_avx2<'a, T: KvElem>(
        &self,
        v: &SeqView<'a, T>,
        shape: AttentionShape,
        scratch: &mut ItemScratch<'a, T>,
    ) {
        self.compute::<Avx2, T>(v, shape, scratch)
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma,avx512f")]
    unsafe fn compute_avx512<'a, T: KvElem>(
        &self,
        v: &SeqView<'a, T>,
        shape: AttentionShape,
        scratch: &mut ItemScratch<'a, T>,
    ) {
        self.compute::<Avx512, T>(v, shape, scratch)
    }

    /// The item's outputs, with the reductions of `L`.
    ///
    /// Only [`Item::run`] calls it, with an `L` whose instruction set the CPU has.
    #[inline(always)]
    fn compute<'a, L: Lanes, T: KvElem>(
        &self,
        v: &SeqView<'a, T>,
        shape: AttentionShape,
        sc: &mut ItemScratch<'a, T>,
    ) {
        let Some(span) = self.span(v, shape) else {
            return;
        };
        self.gather(v, &span, sc);
        self.scores::<L, T>(v, &span, sc);
        softmax::<L>(&span, &mut sc.weights);
        self.weigh(v, &span, sc);
    }

    /// Which gathered positions each row of the block sees (`None` for an empty block).
    #[inline(always)]
    fn span<T>(&self, v: &SeqView<'_, T>, shape: AttentionShape) -> Option<Span> {
        let nr = self.rows.len();
        debug_assert!(nr <= ROW_BLOCK);
        if nr == 0 {
            return None;
        }
        let (mut lo, mut end) = ([0usize; ROW_BLOCK], [0usize; ROW_BLOCK]);
        for (tl, t) in self.rows.clone().enumerate() {
            let pos = v.start + t;
            end[tl] = pos + 1;
            lo[tl] = shape
                .sliding_window
                .map_or(0, |w| (pos + 1).saturating_sub(w));
        }
        let first = lo[0];
        for tl in 0..nr {
            (lo[tl], end[tl]) = (lo[tl] - first, end[tl] - first);
        }
        Some(Span {
            nr,
            group: shape.n_heads / shape.n_kv_heads,
            hd: shape.head_dim,
            kv_row: shape.n_kv_heads * shape.head_dim,
            scale: 1.0 / (shape.head_dim as f32).sqrt(),
            first,
            len: end[nr - 1],
            lo,
            end,
        })
    }

    /// This key/value head's rows of the span's positions, into `sc.keys` and `sc.values`.
    #[inline(always)]
    fn gather<'a, T>(&self, v: &SeqView<'a, T>, s: &Span, sc: &mut ItemScratch<'a, T>) {
        sc.keys.clear();
        sc.values.clear();
        let (at, kv_row, hd) = (self.kv_head * s.hd, s.kv_row, s.hd);
        for (c, (keys, values)) in v.kv.keys.iter().zip(v.kv.values).enumerate() {
            let c0 = v.chunk_starts[c];
            let rows = c0.max(s.first)..(c0 + keys.len() / kv_row).min(s.first + s.len);
            for r in rows.map(|r| r - c0) {
                sc.keys.push(&keys[r * kv_row + at..][..hd]);
                sc.values.push(&values[r * kv_row + at..][..hd]);
            }
        }
        debug_assert_eq!(sc.keys.len(), s.len);
    }

    /// Scaled scores into `sc.weights` (per (row, head), over the span), four positions at a
    /// time: their key rows stay in cache for every row and head of the item, and one query
    /// load serves four dots. A row's scores past its own positions are computed with the rest
    /// of the four and never read.
    #[inline(always)]
    fn scores<L: Lanes, T: KvElem>(
        &self,
        v: &SeqView<'_, T>,
        s: &Span,
        sc: &mut ItemScratch<'_, T>,
    ) {
        let (group, hd, span) = (s.group, s.hd, s.len);
        let h0 = self.kv_head * group;
        let query = |tl: usize, hh: usize| {
            let t = self.rows.start + tl;
            &v.q[t * v.q_stride + (h0 + hh) * hd..][..hd]
        };
        sc.weights.clear();
        sc.weights.resize(s.nr * group * span, 0.0);
        let mut i = 0;
        while i < span {
            let n = 4.min(span - i);
            if let Some(next) = sc.keys.get(i + PREFETCH_ROWS..i + PREFETCH_ROWS + n) {
                next.iter().for_each(|k| prefetch(k));
            }
            for tl in (0..s.nr).filter(|&tl| s.lo[tl] < i + n && i < s.end[tl]) {
                for hh in 0..group {
                    let w = &mut sc.weights[(tl * group + hh) * span + i..][..n];
                    let q = query(tl, hh);
                    if n == 4 {
                        let k = [sc.keys[i], sc.keys[i + 1], sc.keys[i + 2], sc.keys[i + 3]];
                        // SAFETY: `run` picked `L` for this CPU; key rows are `hd` long.
                        let d = unsafe { L::score4(q, k) };
                        for (w, d) in w.iter_mut().zip(d) {
                            *w = d * s.scale;
                        }
                    } else {
                        for (w, k) in w.iter_mut().zip(&sc.keys[i..]) {
                            // SAFETY: as above.
                            *w = unsafe { L::score(q, k) } * s.scale;
                        }
                    }
                }
            }
            i += n;
        }
    }

    /// The weighted values into the outputs, a tile of positions at a time so that the tile's
    /// value rows stay in cache for every row and head.
    #[inline(always)]
    fn weigh<T: KvElem>(&self, v: &SeqView<'_, T>, s: &Span, sc: &ItemScratch<'_, T>) {
        let (group, hd, span) = (s.group, s.hd, s.len);
        let h0 = self.kv_head * group;
        for tl in 0..s.nr {
            for hh in 0..group {
                self.out(v, tl, h0 + hh, hd).fill(0.0);
            }
        }
        for tile in (0..span).step_by(VALUE_TILE) {
            let tile_end = span.min(tile + VALUE_TILE);
            for tl in 0..s.nr {
                let (a, b) = (s.lo[tl].max(tile), s.end[tl].min(tile_end));
                if a >= b {
                    continue;
                }
                for hh in 0..group {
                    let w = &sc.weights[(tl * group + hh) * span..][a..b];
                    // The first pass over the tile fetches its rows ahead of use.
                    let ahead = match (tl, hh) {
                        (0, 0) => &sc.values[(a + PREFETCH_ROWS).min(span)..],
                        _ => &[],
                    };
                    accumulate(self.out(v, tl, h0 + hh, hd), w, &sc.values[a..b], ahead);
                }
            }
        }
    }

    /// Head `h` of the item's row `tl` in the sequence's output.
    #[allow(clippy::mut_from_ref)]
    #[inline(always)]
    fn out<'o, T>(&self, v: &'o SeqView<'_, T>, tl: usize, h: usize, hd: usize) -> &'o mut [f32] {
        let t = self.rows.start + tl;
        let q_row = v.q_row;
        // SAFETY: row `t` < n and head `h` < n_heads lie inside the sequence's `[n, q_row]`
        // output; no other item writes this (row, head), and no caller holds two slices of the
        // same (row, head) at once (see `SharedOut`).
        unsafe { std::slice::from_raw_parts_mut(v.out.0.add(t * q_row + h * hd), hd) }
    }
}

/// An item's rows over the positions it gathered: row `tl` of the block sees gathered
/// positions `lo[tl]..end[tl]` (cache positions `first + lo[tl] ..`).
struct Span {
    nr: usize,
    group: usize,
    hd: usize,
    kv_row: usize,
    scale: f32,
    first: usize,
    len: usize,
    lo: [usize; ROW_BLOCK],
    end: [usize; ROW_BLOCK],
}

/// Scores to softmax weights, each (row, head) over its own positions.
#[inline(always)]
fn softmax<L: Lanes>(s: &Span, weights: &mut [f32]) {
    for tl in 0..s.nr {
        for hh in 0..s.group {
            let l = tl * s.group + hh;
            let w = &mut weights[l * s.len + s.lo[tl]..l * s.len + s.end[tl]];
            let m = w.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x));
            for x in w.iter_mut() {
                *x = crate::cpu::exp(*x - m);
            }
            // SAFETY: `Item::run` picked `L` for this CPU.
            let inv = 1.0 / unsafe { L::sum(w) };
            for x in w.iter_mut() {
                *x *= inv;
            }
        }
    }
}
