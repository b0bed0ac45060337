//! The launches of the products over 8-bit activations (kernels/cuda/qdot.cu, qmma.cu,
//! qgemm.cu): the activations' 8-bit copy, and which kernel takes a product by its rows and
//! width ([`DotChoice::of`]).

use std::sync::Arc;

use cudarc::driver::{CudaFunction, CudaModule};

use super::args::{MatmulArgs, WeightFormat, WeightView};
use super::ops::{grid, to_i32, Args};
use super::{DevicePtr, Gpu, GpuError, GpuResult, MatmulKernel};

/// The 8-bit-activation products of one weight format (qdot.cu, qmma.cu, qgemm.cu).
pub(super) struct DotKernels {
    /// dp4a, a warp per column, up to 1, 2, 4 and 8 rows a pass; `split`: the same with two warps
    /// a column, each taking half of k's blocks.
    warp: [CudaFunction; 4],
    split: [CudaFunction; 4],
    /// Two warps a column and two columns a warp (`_s2_c2`), 4 and 8 rows a pass.
    split_pair: [CudaFunction; 2],
    /// A lane per column (for the widest matrices; see `Gpu::dotc_min_cols`,
    /// `Gpu::dotc_q6k_min_cols` and `Gpu::dotc_max_rows`), 1, 2, 4 and 8 rows a pass.
    lane_per_column: Option<[CudaFunction; 4]>,
    /// int8 mma, 16 columns a CTA, 8 and 16 rows a pass.
    mma: [CudaFunction; 2],
    /// The tiled GEMM, 32 columns by 32 and 64 rows a CTA.
    gemm: [CudaFunction; 2],
}

impl DotKernels {
    /// The kernels of `format` (named `fmt` in the kernels' names) from the two modules.
    pub(super) fn load(
        qdot: &Arc<CudaModule>,
        qmma: &Arc<CudaModule>,
        qgemm: &Arc<CudaModule>,
        fmt: &str,
        format: WeightFormat,
    ) -> GpuResult<Self> {
        let f = |m: &Arc<CudaModule>, name: &str| {
            m.load_function(name)
                .map_err(GpuError::driver("finding a kernel in specd's PTX"))
        };
        let g = |rg: usize| f(qdot, &format!("dot_{fmt}_r{rg}"));
        let g2 = |rg: usize| f(qdot, &format!("dot_{fmt}_r{rg}_s2"));
        let g2c2 = |rg: usize| f(qdot, &format!("dot_{fmt}_r{rg}_s2_c2"));
        let m = |rt: usize| f(qmma, &format!("mdot_{fmt}_t{rt}"));
        let t = |wm: usize| f(qgemm, &format!("qgemm_{fmt}_m{wm}"));
        Ok(Self {
            warp: [g(1)?, g(2)?, g(4)?, g(8)?],
            split: [g2(1)?, g2(2)?, g2(4)?, g2(8)?],
            split_pair: [g2c2(4)?, g2c2(8)?],
            // Q4_K and Q6_K also have kernels with a lane per column (dotc; Q4_K's one-row
            // kernel is its own).
            lane_per_column: match format {
                WeightFormat::Q4K => Some([
                    f(qdot, "dotc_q4k")?,
                    f(qdot, "dotc_q4k_r2")?,
                    f(qdot, "dotc_q4k_r4")?,
                    f(qdot, "dotc_q4k_r8")?,
                ]),
                WeightFormat::Q6K => Some([
                    f(qdot, "dotc_q6k_r1")?,
                    f(qdot, "dotc_q6k_r2")?,
                    f(qdot, "dotc_q6k_r4")?,
                    f(qdot, "dotc_q6k_r8")?,
                ]),
                _ => None,
            },
            mma: [m(1)?, m(2)?],
            gemm: [t(1)?, t(2)?],
        })
    }
}

/// Which 8-bit-activation kernel takes a product (they all add in one order, so the choice
/// changes speed only), and its launch shape.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum DotChoice {
    /// dp4a, a warp per output column (qdot.cu `dot_*_r{rows}`), up to `rows` rows a pass (1,
    /// 2, 4 or 8); `split`: two warps a column (`_s2`), for a long k; `groups`: the CTAs a
    /// column's rows spread over (grid y, at most 65,535: CTA y takes passes y, y + groups, ...);
    /// `pair`: two columns a warp (`_s2_c2`, split, 4 or 8 rows a pass).
    Warp {
        rows: usize,
        split: bool,
        groups: usize,
        pair: bool,
    },
    /// Q4_K or Q6_K, a lane per output column, up to `rows` rows a pass, passes enough for all
    /// (1, 2, 4 or 8:
    /// `dotc_q4k`, `dotc_q4k_r{rows}`, `dotc_q6k_r{rows}`).
    LanePerColumn { rows: usize },
    /// int8 mma, 16 columns a CTA, 8 (`t1`) or 16 (`t2`) rows a pass.
    Mma { pass: usize },
    /// The tiled GEMM, 32 columns by `32 · wm` rows a CTA (`m1`, `m2`).
    Gemm { wm: usize },
}

/// The settings [`DotChoice::of`] reads for a product of one weight format ([`Gpu::dot_mma_from`],
/// [`Gpu::dot_gemm_from`], the format's [`Gpu::dotc_min_cols`] or [`Gpu::dotc_q6k_min_cols`],
/// [`Gpu::dotc_max_rows`], the GPU's multiprocessors).
#[derive(Clone, Copy, Debug)]
pub(super) struct DotSettings {
    pub(super) mma_from: usize,
    /// The fewest rows a product at least `dotc_min_cols` wide takes int8 mma (fewer than
    /// `mma_from`; `usize::MAX`: none).
    pub(super) mma_wide_from: usize,
    pub(super) gemm_from: usize,
    /// The fewest columns for the lane-per-column kernels (of this format).
    pub(super) dotc_min_cols: usize,
    /// The most rows the lane-per-column kernels take, and take in one pass (a power of two).
    pub(super) dotc_max_rows: usize,
    pub(super) dotc_pass_rows: usize,
    /// The shortest k for which the dp4a kernels take two warps a column.
    pub(super) split_from_k: usize,
    /// The most rows a CTA of the dp4a kernels takes of a product narrower than
    /// `dotc_min_cols` (more spread over the grid's y).
    pub(super) warp_rows: usize,
    /// The fewest rows such a product takes with two columns a warp (4 or 8 rows a pass).
    pub(super) warp_pair_from: usize,
    /// The GEMM's rows a CTA in tiles of 32 (1 or 2), or 0: chosen by the grid's size.
    pub(super) gemm_wm: usize,
    pub(super) sms: usize,
}

/// Output columns per CTA of the 8-bit-activation products: a warp each for dp4a (DOT_WARPS in
/// qdot.cu), a lane each for one row of Q4_K (DOTC_COLS), 16 for int8 mma (MDOT_COLS in
/// qmma.cu), 32 for the GEMM (QG_COLS in qgemm.cu).
const DOT_WARPS: usize = 8;
const DOTC_COLS: usize = 32;
const MDOT_COLS: usize = 16;
const QG_COLS: usize = 32;
/// The rows a pass of a kernel takes for a setting of at most `rows`: the largest of 1, 2, 4
/// and 8 not above it (1 for 0).
pub(super) fn pass_rows(rows: usize) -> usize {
    1 << rows.clamp(1, 8).ilog2()
}

/// The most CTAs a launch's grid holds in y.
const MAX_GRID_Y: usize = 65_535;

impl DotChoice {
    /// The kernel for `rows` rows of a product with `n` output columns; `lane_per_column`
    /// whether the format has those kernels (Q4_K, Q6_K). The GEMM takes `gemm_from` rows and
    /// more, in CTAs of 64 rows unless that leaves fewer CTAs than twice the multiprocessors
    /// (then 32, for the narrow products of a short prompt).
    pub(super) fn of(
        rows: usize,
        n: usize,
        k: usize,
        lane_per_column: bool,
        s: DotSettings,
    ) -> Self {
        // A pass of `pass` rows (1, 2, 4 or 8): a narrow product's rows spread over CTAs of at
        // most `warp_rows` rows each, so that its few columns fill more of the GPU.
        let warp = |pass: usize| {
            let (split, narrow) = (k >= s.split_from_k, n < s.dotc_min_cols);
            let pass = if narrow {
                pass.min(pass_rows(s.warp_rows))
            } else {
                pass
            };
            DotChoice::Warp {
                rows: pass,
                split,
                // A wide product's passes stay in one CTA: CTAs of a later grid row would find
                // its weights gone from L2.
                groups: if narrow { rows.div_ceil(pass) } else { 1 },
                pair: split && pass >= 4 && narrow && rows >= s.warp_pair_from,
            }
        };
        match rows {
            // The GEMM's CTAs take one row tile each (grid y at most 65,535 tiles of 64 rows);
            // more rows than that take int8 mma, whose CTAs loop over row passes.
            r if r >= s.gemm_from.max(1) && r <= MAX_GRID_Y * 64 => {
                let ctas = n.div_ceil(QG_COLS) * rows.div_ceil(64);
                let wm = match s.gemm_wm {
                    1 | 2 if r <= MAX_GRID_Y * 32 * s.gemm_wm => s.gemm_wm,
                    _ if ctas >= 2 * s.sms || r > MAX_GRID_Y * 32 => 2,
                    _ => 1,
                };
                DotChoice::Gemm { wm }
            }
            r if lane_per_column && n >= s.dotc_min_cols && r <= s.dotc_max_rows.min(8) => {
                DotChoice::LanePerColumn {
                    rows: r.next_power_of_two().min(s.dotc_pass_rows),
                }
            }
            1 => warp(1),
            // The wide products (as wide as the lane-per-column kernels take) may start
            // earlier than the others.
            r if r <= 8
                && (r >= s.mma_from || (r >= s.mma_wide_from.max(2) && n >= s.dotc_min_cols)) =>
            {
                DotChoice::Mma { pass: 8 }
            }
            r if r >= s.mma_from => DotChoice::Mma { pass: 16 },
            2 => warp(2),
            3 | 4 => warp(4),
            _ => warp(8),
        }
    }

    /// The launch: (grid x, grid y, threads a CTA) for `rows` rows and `n` columns.
    fn shape(self, rows: usize, n: usize) -> (usize, usize, u32) {
        match self {
            DotChoice::Warp {
                split: false,
                groups,
                ..
            } => (n.div_ceil(DOT_WARPS), groups, 256),
            DotChoice::Warp {
                split: true,
                groups,
                pair,
                ..
            } => (
                n.div_ceil(DOT_WARPS / if pair { 1 } else { 2 }),
                groups,
                256,
            ),
            DotChoice::LanePerColumn { .. } => (n.div_ceil(DOTC_COLS), 1, 256),
            // The mma kernels' row passes spread over the grid's rows too.
            DotChoice::Mma { pass } => (n.div_ceil(MDOT_COLS), rows.div_ceil(pass), 256),
            DotChoice::Gemm { wm } => (n.div_ceil(QG_COLS), rows.div_ceil(32 * wm), 64 * wm as u32),
        }
    }
}

impl Gpu {
    /// Whether [`Gpu::matmul_rows`] over `rows` rows of `w` reads x's 8-bit copy
    /// ([`MatmulArgs::xq`]).
    pub fn reads_q8(&self, w: &WeightView, rows: usize) -> bool {
        let kernel = self.matmul_kernel().resolve(rows, w.rows, w.cols, w.format);
        kernel == MatmulKernel::Dot
    }

    /// x's 8-bit copy: `rows` rows of `k` bf16 activations at `x` quantized to int8 per 32
    /// values into `xq` ([`super::q8_bytes`]`(rows, k)` bytes; see qdot.cu).
    pub fn quantize_rows(
        &self,
        x: DevicePtr,
        rows: usize,
        k: usize,
        xq: DevicePtr,
    ) -> GpuResult<()> {
        if rows == 0 {
            return Ok(());
        }
        let meta = xq + (rows * k) as u64;
        let (ri, ki) = (to_i32(rows), to_i32(k));
        let mut b = Args::default();
        b.arg(&x).arg(&ri).arg(&ki).arg(&xq).arg(&meta);
        let chunks = rows * k / 32;
        self.launch(
            &self.kernels().quantize_rows,
            grid(chunks.div_ceil(8), 256),
            b,
        )
    }

    /// The product over 8-bit activations (qdot.cu), quantizing x first unless the caller has.
    pub(super) fn dot_product(&self, a: &MatmulArgs) -> GpuResult<()> {
        if a.xq == 0 {
            return Err(GpuError::MissingBuffer {
                what: "room for the activations' 8-bit copy (MatmulArgs::xq)",
            });
        }
        let (n, k) = (a.w.rows, a.w.cols);
        if !a.xq_ready {
            self.quantize_rows(a.x, a.rows, k, a.xq)?;
        }
        let fns = &self.kernels().dot[&a.w.format.index()];
        let lane_per_column = fns.lane_per_column.is_some();
        let choice = DotChoice::of(a.rows, n, k, lane_per_column, self.dot_settings(a.w.format));
        let f = match choice {
            DotChoice::Warp {
                rows, split, pair, ..
            } => {
                let i = rows.trailing_zeros().min(3) as usize;
                if split && pair && i >= 2 {
                    &fns.split_pair[i - 2]
                } else if split {
                    &fns.split[i]
                } else {
                    &fns.warp[i]
                }
            }
            DotChoice::LanePerColumn { rows } => match &fns.lane_per_column {
                Some(lanes) => &lanes[rows.trailing_zeros().min(3) as usize],
                None => &fns.warp[0],
            },
            DotChoice::Mma { pass: 8 } => &fns.mma[0],
            DotChoice::Mma { .. } => &fns.mma[1],
            DotChoice::Gemm { wm } => &fns.gemm[wm.min(2) - 1],
        };
        let (w, rb, xq, y, bias) = (a.w.ptr, a.w.row_bytes(), a.xq, a.y, a.bias);
        let meta = xq + (a.rows * k) as u64;
        let (rows, ni, ki, ldy) = (to_i32(a.rows), to_i32(n), to_i32(k), to_i32(a.ldy));
        let mut b = Args::default();
        b.arg(&w).arg(&rb).arg(&xq).arg(&meta).arg(&y).arg(&bias);
        b.arg(&rows).arg(&ni).arg(&ki).arg(&ldy);
        let (gx, gy, threads) = choice.shape(a.rows, n);
        let mut cfg = grid(gx, threads);
        cfg.grid_dim.1 = gy.clamp(1, 65_535) as u32;
        self.launch(f, cfg, b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const H100: DotSettings = DotSettings {
        mma_from: 8,
        mma_wide_from: 5,
        gemm_from: 64,
        dotc_min_cols: 8192,
        dotc_max_rows: 4,
        dotc_pass_rows: 8,
        split_from_k: 0,
        warp_rows: 4,
        warp_pair_from: 5,
        gemm_wm: 0,
        sms: 132,
    };

    fn warp(rows: usize, split: bool) -> DotChoice {
        DotChoice::Warp {
            rows,
            split,
            groups: 1,
            pair: false,
        }
    }

    /// 5 to 7 rows of a narrow product: two CTAs of up to 4 rows, two columns a warp if split.
    fn two_fours(split: bool) -> DotChoice {
        DotChoice::Warp {
            rows: 4,
            split,
            groups: 2,
            pair: split,
        }
    }

    #[test]
    fn each_row_count_takes_its_kernel() {
        let of = |rows, n| DotChoice::of(rows, n, 1536, true, H100);
        assert_eq!(of(1, 17_920), DotChoice::LanePerColumn { rows: 1 });
        assert_eq!(of(3, 17_920), DotChoice::LanePerColumn { rows: 4 });
        assert_eq!(of(5, 17_920), DotChoice::Mma { pass: 8 });
        assert_eq!(of(1, 1536), warp(1, true));
        assert_eq!(DotChoice::of(1, 151_936, 1536, false, H100), warp(1, true));
        assert_eq!(of(2, 1536), warp(2, true));
        assert_eq!(of(3, 1536), warp(4, true));
        assert_eq!(of(5, 1536), two_fours(true));
        assert_eq!(of(8, 1536), DotChoice::Mma { pass: 8 });
        assert_eq!(of(63, 1536), DotChoice::Mma { pass: 16 });
        // A short prompt's narrow product: 48 x 2 CTAs of 64 rows would leave SMs idle.
        assert_eq!(of(64, 1536), DotChoice::Gemm { wm: 1 });
        assert_eq!(of(128, 1536), DotChoice::Gemm { wm: 1 });
        assert_eq!(of(512, 1536), DotChoice::Gemm { wm: 2 });
        assert_eq!(of(128, 17_920), DotChoice::Gemm { wm: 2 });
        let (gx, _, _) = warp(1, true).shape(1, 1536);
        assert_eq!(gx, 384);
    }

    #[test]
    fn the_widest_products_take_int8_mma_from_the_rows_asked() {
        let of = |rows, n| DotChoice::of(rows, n, 1536, true, H100);
        // Up to the lane-per-column kernels' 4 rows they keep the gate and up products; from 5
        // rows int8 mma takes them, while the narrow products keep dp4a until mma_from.
        assert_eq!(of(4, 17_920), DotChoice::LanePerColumn { rows: 4 });
        for rows in 5..=8 {
            assert_eq!(of(rows, 17_920), DotChoice::Mma { pass: 8 });
        }
        assert_eq!(of(5, 1536), two_fours(true));
        assert_eq!(of(7, 1536), two_fours(true));
        assert_eq!(of(9, 17_920), DotChoice::Mma { pass: 16 });
        // Off: the gate and up products keep dp4a up to mma_from.
        let off = DotSettings {
            mma_wide_from: usize::MAX,
            ..H100
        };
        assert_eq!(DotChoice::of(5, 17_920, 1536, true, off), warp(8, true));
        // One row stays with dp4a or the lane-per-column kernel whatever the setting.
        let low = DotSettings {
            mma_wide_from: 0,
            dotc_max_rows: 0,
            ..H100
        };
        assert_eq!(DotChoice::of(1, 17_920, 1536, true, low), warp(1, true));
        assert_eq!(
            DotChoice::of(2, 17_920, 1536, true, low),
            DotChoice::Mma { pass: 8 }
        );
    }

    #[test]
    fn a_narrow_products_rows_can_spread_over_ctas() {
        let at_most = |warp_rows| DotSettings {
            warp_rows,
            warp_pair_from: usize::MAX,
            ..H100
        };
        let of = |rows, n, s| DotChoice::of(rows, n, 1536, true, s);
        let spread = |rows, groups| DotChoice::Warp {
            rows,
            split: true,
            groups,
            pair: false,
        };
        for (cap, pass, groups) in [
            (8, 8, 1),
            (4, 4, 2),
            (3, 2, 3),
            (2, 2, 3),
            (1, 1, 5),
            (0, 1, 5),
        ] {
            assert_eq!(of(5, 1536, at_most(cap)), spread(pass, groups));
        }
        assert_eq!(of(3, 1536, at_most(2)), spread(2, 2));
        assert_eq!(of(2, 1536, at_most(1)), spread(1, 2));
        assert_eq!(of(1, 1536, at_most(1)), spread(1, 1));
        // Not the wide products (the Q6_K head: its weights would be read again from memory).
        let q6k = DotSettings {
            mma_wide_from: usize::MAX,
            ..at_most(1)
        };
        assert_eq!(DotChoice::of(5, 151_936, 1536, false, q6k), spread(8, 1));
        let no_mma = DotSettings {
            mma_from: usize::MAX,
            ..q6k
        };
        assert_eq!(
            DotChoice::of(20, 151_936, 1536, false, no_mma),
            spread(8, 1)
        );
        assert_eq!(DotChoice::of(20, 1536, 1536, false, no_mma), spread(1, 20));
        let (gx, gy, _) = spread(1, 5).shape(5, 1536);
        assert_eq!((gx, gy), (384, 5));
        // Two columns a warp from the rows asked, in passes of 4 or 8 rows, split products only.
        let pairs = DotSettings {
            warp_pair_from: 3,
            warp_rows: 8,
            ..H100
        };
        let paired = |rows, groups| DotChoice::Warp {
            rows,
            split: true,
            groups,
            pair: true,
        };
        assert_eq!(of(5, 1536, pairs), paired(8, 1));
        assert_eq!(of(3, 1536, pairs), paired(4, 1));
        assert_eq!(of(2, 1536, pairs), spread(2, 1));
        assert_eq!(
            of(
                5,
                1536,
                DotSettings {
                    warp_rows: 4,
                    ..pairs
                }
            ),
            paired(4, 2)
        );
        assert_eq!(
            of(
                5,
                1536,
                DotSettings {
                    warp_rows: 2,
                    ..pairs
                }
            ),
            spread(2, 3)
        );
        let unsplit = DotSettings {
            split_from_k: usize::MAX,
            ..pairs
        };
        assert_eq!(of(5, 1536, unsplit), warp(8, false));
        let (gx, _, _) = paired(8, 1).shape(5, 1536);
        assert_eq!(gx, 192);
    }

    #[test]
    fn verification_rows_of_the_widest_q4k_products_can_take_a_lane_per_column() {
        let lanes = DotSettings {
            dotc_max_rows: 8,
            ..H100
        };
        let of = |rows, n, q4k| DotChoice::of(rows, n, 1536, q4k, lanes);
        for (rows, pass) in [(1, 1), (2, 2), (3, 4), (4, 4), (5, 8), (8, 8)] {
            assert_eq!(
                of(rows, 17_920, true),
                DotChoice::LanePerColumn { rows: pass }
            );
            // Not the narrow products, nor a format without the kernel.
            assert_ne!(
                of(rows, 1536, true),
                DotChoice::LanePerColumn { rows: pass }
            );
            assert_ne!(
                of(rows, 17_920, false),
                DotChoice::LanePerColumn { rows: pass }
            );
        }
        assert_eq!(of(9, 17_920, true), DotChoice::Mma { pass: 16 });
        let (gx, gy, _) = DotChoice::LanePerColumn { rows: 8 }.shape(5, 17_920);
        assert_eq!((gx, gy), (560, 1));
        // Passes of at most 4 rows: 5 rows take the 4-row kernel, which walks them twice.
        let passes = DotSettings {
            dotc_pass_rows: 4,
            ..lanes
        };
        for (rows, pass) in [(1, 1), (3, 4), (5, 4), (8, 4)] {
            assert_eq!(
                DotChoice::of(rows, 17_920, 1536, true, passes),
                DotChoice::LanePerColumn { rows: pass }
            );
        }
    }

    #[test]
    fn two_warps_a_column_from_the_k_asked() {
        let long = DotSettings {
            split_from_k: 4096,
            ..H100
        };
        // The down projection (k = 8,960) splits, the 1,536-deep products do not.
        for (rows, rg) in [(1, 1), (2, 2), (4, 4)] {
            assert_eq!(DotChoice::of(rows, 1536, 8960, true, long), warp(rg, true));
            assert_eq!(DotChoice::of(rows, 1536, 1536, true, long), warp(rg, false));
        }
        assert_eq!(DotChoice::of(5, 1536, 8960, true, long), two_fours(true));
        assert_eq!(DotChoice::of(5, 1536, 1536, true, long), two_fours(false));
        assert_eq!(
            DotChoice::of(8, 1536, 8960, true, long),
            DotChoice::Mma { pass: 8 }
        );
        let (gx, _, _) = warp(1, false).shape(1, 1536);
        assert_eq!(gx, 192);
    }

    #[test]
    fn the_gemm_can_take_every_row_count_and_the_grid_covers_the_product() {
        let all = DotSettings {
            gemm_from: 0,
            ..H100
        };
        for rows in [1, 2, 5, 33, 64, 65, 130, 4096] {
            for n in [8, 31, 33, 1536, 151_936] {
                let c = DotChoice::of(rows, n, 1536, true, all);
                let DotChoice::Gemm { wm } = c else {
                    panic!("{rows} rows of {n}: {c:?}, not the GEMM");
                };
                let (gx, gy, threads) = c.shape(rows, n);
                assert!(gx * QG_COLS >= n && gy * 32 * wm >= rows);
                assert_eq!(threads, 64 * wm as u32);
            }
        }
        // Settings of 0 or 1 rows for the mma kernels still leave one row to dp4a.
        let mma = DotSettings {
            mma_from: 0,
            gemm_from: usize::MAX,
            ..H100
        };
        assert_eq!(
            DotChoice::of(2, 64, 256, false, mma),
            DotChoice::Mma { pass: 8 }
        );
        assert_eq!(DotChoice::of(1, 64, 256, false, mma), warp(1, true));
    }

    #[test]
    fn the_gemm_rows_a_cta_follow_the_setting_and_the_grid_limit() {
        let of =
            |rows, n, gemm_wm| DotChoice::of(rows, n, 1536, true, DotSettings { gemm_wm, ..H100 });
        assert_eq!(of(128, 1536, 2), DotChoice::Gemm { wm: 2 });
        assert_eq!(of(128, 17_920, 1), DotChoice::Gemm { wm: 1 });
        // Past 65,535 tiles of 32 rows a CTA takes 64; past 65,535 of 64, int8 mma (its CTAs
        // loop over row passes).
        assert_eq!(of(65_535 * 32 + 1, 1536, 1), DotChoice::Gemm { wm: 2 });
        assert_eq!(of(65_535 * 64, 1536, 0), DotChoice::Gemm { wm: 2 });
        assert_eq!(of(65_535 * 64 + 1, 1536, 0), DotChoice::Mma { pass: 16 });
        let (_, gy, _) = DotChoice::Gemm { wm: 2 }.shape(65_535 * 64, 1536);
        assert_eq!(gy, 65_535);
    }
}
