//! Whether this CPU's AMX-INT8 tiles are usable here, and what one tile product costs at the
//! shapes a verification forward's quantized products would give them: `M` input rows (5: a
//! round of four drafts and the token), 16 weight rows (a tile of the AVX-512 kernels, whose
//! transposed block layout is the B operand's), and `K` = 64, 32 or 16 weights (a Q4_K
//! sub-block is 32, a Q6_K one 16: their scales would be applied between products).
//!
//! `cargo run --release -p specd-kernels --example amx_probe`
//!
//! Asks Linux for the tile data state (`arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA)`),
//! checks `tdpbsud` (signed rows × unsigned weights, as the kernels' `vpdpbusd` with the
//! operands swapped) against a scalar sum, then times independent products. Inline assembly:
//! stable Rust has no AMX intrinsics.

#[cfg(target_arch = "x86_64")]
mod probe {
    use std::arch::asm;
    use std::time::Instant;

    /// The tile configuration `ldtilecfg` reads (palette 1).
    #[repr(C, align(64))]
    struct TileConfig {
        palette: u8,
        start_row: u8,
        reserved: [u8; 14],
        colsb: [u16; 16],
        rows: [u8; 16],
    }

    const N: usize = 16;
    const ARCH_REQ_XCOMP_PERM: libc::c_long = 0x1023;
    const XFEATURE_XTILEDATA: libc::c_long = 18;

    pub fn run() {
        // CPUID leaf 7: EDX bit 24 is AMX-TILE, bit 25 AMX-INT8 (std's detection of them is
        // not stable).
        let edx = std::arch::x86_64::__cpuid_count(7, 0).edx;
        if edx & (3 << 24) != 3 << 24 {
            println!("no AMX-INT8 on this CPU");
            return;
        }
        // SAFETY: a plain system call with integer arguments.
        let r = unsafe {
            libc::syscall(
                libc::SYS_arch_prctl,
                ARCH_REQ_XCOMP_PERM,
                XFEATURE_XTILEDATA,
            )
        };
        if r != 0 {
            println!(
                "the kernel refused the tile state: {}",
                std::io::Error::last_os_error()
            );
            return;
        }
        for (m, k) in [(5, 64), (5, 32), (5, 16), (16, 64)] {
            product(m, k);
        }
    }

    /// One `m × k` by `k × 16` product checked against the scalar sum, then timed.
    fn product(m: usize, k: usize) {
        let a: Vec<i8> = (0..m * k)
            .map(|i| ((i * 37 + 11) % 255) as u8 as i8)
            .collect();
        let b: Vec<u8> = (0..k * N).map(|i| ((i * 53 + 7) % 64) as u8).collect();
        let mut c = vec![0i32; m * N];
        let mut cfg = TileConfig {
            palette: 1,
            start_row: 0,
            reserved: [0; 14],
            colsb: [0; 16],
            rows: [0; 16],
        };
        // tmm0 and tmm3..tmm5: results; tmm1: the rows; tmm2: the weights, four k a row.
        for t in [0, 3, 4, 5] {
            (cfg.colsb[t], cfg.rows[t]) = ((N * 4) as u16, m as u8);
        }
        (cfg.colsb[1], cfg.rows[1]) = (k as u16, m as u8);
        (cfg.colsb[2], cfg.rows[2]) = ((N * 4) as u16, (k / 4) as u8);
        let iters = 4_000_000u64;
        let start;
        // SAFETY: the tile state was granted above; every tile used is configured, and the
        // loads and the store stay within `a`, `b` and `c` (rows × stride bytes each).
        unsafe {
            asm!("ldtilecfg [{}]", in(reg) &cfg as *const TileConfig);
            asm!("tilezero tmm0");
            asm!("tileloadd tmm1, [{p} + {s} * 1]", p = in(reg) a.as_ptr(), s = in(reg) k);
            asm!("tileloadd tmm2, [{p} + {s} * 1]", p = in(reg) b.as_ptr(), s = in(reg) N * 4);
            asm!("tdpbsud tmm0, tmm1, tmm2");
            asm!("tilestored [{p} + {s} * 1], tmm0", p = in(reg) c.as_mut_ptr(), s = in(reg) N * 4);
            asm!("tilezero tmm3", "tilezero tmm4", "tilezero tmm5");
            start = Instant::now();
            for _ in 0..iters / 4 {
                asm!(
                    "tdpbsud tmm0, tmm1, tmm2",
                    "tdpbsud tmm3, tmm1, tmm2",
                    "tdpbsud tmm4, tmm1, tmm2",
                    "tdpbsud tmm5, tmm1, tmm2"
                );
            }
            asm!("tilerelease");
        }
        let secs = start.elapsed().as_secs_f64();
        let exact = (0..m * N).all(|i| {
            let (r, n) = (i / N, i % N);
            let sum: i32 = (0..k)
                .map(|j| a[r * k + j] as i32 * b[(j / 4) * N * 4 + n * 4 + j % 4] as i32)
                .sum();
            sum == c[i]
        });
        let macs = (m * k * N) as f64;
        println!(
            "tdpbsud {m} rows x {k} k x {N} columns: equals the scalar sum: {exact}; {:.2} ns a product, \
             {:.0} multiply-adds a ns (one vpdpbusd a cycle: 64 a cycle)",
            secs / iters as f64 * 1e9,
            macs * iters as f64 / secs / 1e9
        );
    }
}

fn main() {
    #[cfg(target_arch = "x86_64")]
    probe::run();
    #[cfg(not(target_arch = "x86_64"))]
    println!("AMX is an x86-64 extension");
}
