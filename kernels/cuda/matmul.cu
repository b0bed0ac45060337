// Row products `y = x · Wᵀ (+ bias)` for any number of rows, on the tensor cores.
//
// One kernel serves decode (1 row), verification (k + 1 rows per sequence, many sequences) and
// prefill: rows go through in passes of 16-row m16n8k16 tiles, and every output element is
// accumulated in the same order whatever the number of rows, so a row's result is bit-identical
// alone or in a batch (batch invariance). A CTA owns a few n8 tiles of output columns; its warps
// split K into interleaved 32-wide chunks and their partial sums are added in warp order.
//
// The k index inside an mma tile is permuted so that each lane reads 8 consecutive weights (one
// 16-byte load for bf16) and the same 8 consecutive activations: the product sums over k, so any
// permutation applied to both operands gives the same mathematical result, and the hardware's
// order for a given lane layout is fixed.
#include "mma.cuh"
#include "weight_formats.cuh"

#define UNROLL_MAX 8

__device__ __forceinline__ uint4 load_x8(const bf16* x, int rows, int r, int k, int kk) {
    if (r >= rows) return make_uint4(0, 0, 0, 0);
    return *reinterpret_cast<const uint4*>(x + (size_t)r * k + kk);
}

// This lane's 4 values of an m16n8 accumulator (n8-tile j) into a [16][COLS + 1] table of
// partial sums: rows g and g + 8, columns 8j + 2t and 8j + 2t + 1.
template <int COLS>
__device__ __forceinline__ void store_fragment(float (*table)[COLS + 1], const float acc[4], int g,
                                               int t, int j) {
    table[g][8 * j + 2 * t] = acc[0];
    table[g][8 * j + 2 * t + 1] = acc[1];
    table[g + 8][8 * j + 2 * t] = acc[2];
    table[g + 8][8 * j + 2 * t + 1] = acc[3];
}

// The output at row `rr`, column `col` of PARTS partial-sum tables: their sum in table order
// from 0.f, then the bias. Every row kernel ends this way, which is half of what keeps their
// results bit-identical (the other half: each table adds its chunks in the same order).
template <int PARTS, int COLS>
__device__ __forceinline__ float ordered_sum(const float (*tables)[16][COLS + 1], int rr, int col,
                                             const float* bias, int nn) {
    float s = 0.f;
#pragma unroll
    for (int i = 0; i < PARTS; ++i) s += tables[i][rr][col];
    if (bias) s += bias[nn];
    return s;
}

// Writes the outputs of one 16-row m-tile from the warps' partial-sum tables, which every warp
// has just stored its fragments into (rows row0.., columns n0..): the barriers before and after
// keep the tables whole while they are read and free for the next tile's fragments.
template <int KWARPS, int COLS>
__device__ __forceinline__ void write_tile(const float (*part)[16][COLS + 1], int row0, int rows,
                                           int n0, int n, float* __restrict__ y, int ldy,
                                           const float* __restrict__ bias) {
    __syncthreads();
    for (int o = threadIdx.x; o < 16 * COLS; o += blockDim.x) {
        const int rr = o / COLS, col = o % COLS;
        const int row = row0 + rr, nn = n0 + col;
        if (row < rows && nn < n)
            y[(size_t)row * ldy + nn] = ordered_sum<KWARPS, COLS>(part, rr, col, bias, nn);
    }
    __syncthreads();
}

// NTL n8-tiles per warp (a CTA owns 8·NTL output columns), KWARPS warps splitting K, MTILES
// 16-row m-tiles per pass, UNROLL chunks of weights loaded ahead. None of these changes the
// order in which one output element is accumulated for a given KWARPS. (Loading the next round
// while the current one computes, in a second register buffer, was slower in every shape: GPU
// run 6 in BENCHMARKS.md.)
template <int F, int NTL, int KWARPS, int MTILES, int UNROLL>
__device__ __forceinline__ void matmul_body(const uint8_t* __restrict__ w, size_t row_bytes,
                                            const bf16* __restrict__ x, float* __restrict__ y,
                                            const float* __restrict__ bias, int rows, int n, int k,
                                            int ldy) {
    constexpr int COLS = 8 * NTL;
    constexpr int STEP = KWARPS * UNROLL;
    __shared__ float part[KWARPS][16][COLS + 1];
    const int lane = threadIdx.x % WARP, warp = threadIdx.x / WARP;
    const int g = lane / 4, t = lane % 4;
    const int n0 = blockIdx.x * COLS;
    // The last tile may hang over the matrix: its extra lanes read the last row, and their
    // results are never written.
    int wrow[NTL];
#pragma unroll
    for (int j = 0; j < NTL; ++j) wrow[j] = min(n0 + 8 * j + g, n - 1);
    const int chunks = k / 32;
    for (int r0 = 0; r0 < rows; r0 += 16 * MTILES) {
        float acc[MTILES][NTL][4];
#pragma unroll
        for (int m = 0; m < MTILES; ++m)
#pragma unroll
            for (int j = 0; j < NTL; ++j) acc[m][j][0] = acc[m][j][1] = acc[m][j][2] = acc[m][j][3] = 0.f;
        const int tiles = min(MTILES, (rows - r0 + 15) / 16);
        // A round: this warp's chunks c0, c0 + KWARPS, ... (UNROLL of them), in that order.
        auto load = [&](uint32_t (&b)[UNROLL][NTL][4], int c0) {
#pragma unroll
            for (int u = 0; u < UNROLL; ++u) {
                const int c = c0 + u * KWARPS;
                if (c < chunks) {
#pragma unroll
                    for (int j = 0; j < NTL; ++j) Fmt<F>::load8(w, row_bytes, wrow[j], c * 32 + t * 8, b[u][j]);
                }
            }
        };
        auto compute = [&](const uint32_t (&b)[UNROLL][NTL][4], int c0) {
#pragma unroll
            for (int u = 0; u < UNROLL; ++u) {
                const int c = c0 + u * KWARPS;
                if (c >= chunks) break;
                const int kk = c * 32 + t * 8;
#pragma unroll
                for (int m = 0; m < MTILES; ++m) {
                    if (m >= tiles) break;
                    const int ra = r0 + m * 16 + g;
                    const uint4 xa = load_x8(x, rows, ra, k, kk);
                    const uint4 xb = load_x8(x, rows, ra + 8, k, kk);
#pragma unroll
                    for (int j = 0; j < NTL; ++j) {
                        mma_bf16(acc[m][j], xa.x, xb.x, xa.y, xb.y, b[u][j][0], b[u][j][1]);
                        mma_bf16(acc[m][j], xa.z, xb.z, xa.w, xb.w, b[u][j][2], b[u][j][3]);
                    }
                }
            }
        };
        for (int c0 = warp; c0 < chunks; c0 += STEP) {
            uint32_t b[UNROLL][NTL][4];
            load(b, c0);
            compute(b, c0);
        }
        // The warps' partial sums, one m-tile at a time, added in warp order.
#pragma unroll
        for (int m = 0; m < MTILES; ++m) {
            if (m >= tiles) break;
#pragma unroll
            for (int j = 0; j < NTL; ++j) store_fragment<COLS>(part[warp], acc[m][j], g, t, j);
            write_tile<KWARPS, COLS>(part, r0 + m * 16, rows, n0, n, y, ldy, bias);
        }
    }
}

// y[rows, n] (row stride ldy) = x[rows, k] · W[n, k]ᵀ + bias. W has `row_bytes` per row; k is a
// multiple of 32 (and of the format's block). One kernel per weight format and tile shape:
// matmul_<fmt>_<cols>x<warps>; grid ceil(n / cols) CTAs of 32·warps threads.
#define MATMUL_KERNEL(FMTNAME, F, TAG, NTL, KWARPS, MTILES, UNROLL)                                \
    extern "C" __global__ void __launch_bounds__(KWARPS * 32) matmul_##FMTNAME##_##TAG(           \
        const uint8_t* __restrict__ w, unsigned long long row_bytes, const bf16* __restrict__ x, \
        float* __restrict__ y, const float* __restrict__ bias, int rows, int n, int k, int ldy) { \
        grid_dependency();                                                                        \
        matmul_body<F, NTL, KWARPS, MTILES, UNROLL>(w, (size_t)row_bytes, x, y, bias, rows, n, k,  \
                                                    ldy);                                         \
    }

// The tile shapes measured by scripts/gpu/bench (BENCHMARKS.md): output columns per CTA x warps.
// The u-shapes load 8 or 16 chunks per lane ahead (a 7B layer's K = 3584 is 14 chunks per warp
// of 8), trading registers (fewer CTAs per SM) for bytes in flight; 32x8m4 takes 64 rows per
// pass over the weights (prefill). Keep in step with MatmulKernel::ALL (args.rs).
#define MATMUL_SHAPES(FMTNAME, F)                    \
    MATMUL_KERNEL(FMTNAME, F, 8x8, 1, 8, 4, 4)       \
    MATMUL_KERNEL(FMTNAME, F, 16x8, 2, 8, 4, 4)      \
    MATMUL_KERNEL(FMTNAME, F, 32x8, 4, 8, 2, 2)      \
    MATMUL_KERNEL(FMTNAME, F, 16x4, 2, 4, 4, 4)      \
    MATMUL_KERNEL(FMTNAME, F, 32x4, 4, 4, 2, 4)      \
    MATMUL_KERNEL(FMTNAME, F, 8x8u8, 1, 8, 2, 8)     \
    MATMUL_KERNEL(FMTNAME, F, 8x8u16, 1, 8, 2, 16)   \
    MATMUL_KERNEL(FMTNAME, F, 16x8u8, 2, 8, 2, 8)    \
    MATMUL_KERNEL(FMTNAME, F, 8x4u16, 1, 4, 2, 16)   \
    MATMUL_KERNEL(FMTNAME, F, 32x8m4, 4, 8, 4, 2)
MATMUL_SHAPES(bf16, F_BF16)
MATMUL_SHAPES(q4k, F_Q4K)
MATMUL_SHAPES(q6k, F_Q6K)
MATMUL_SHAPES(q8_0, F_Q8_0)
MATMUL_SHAPES(q5_0, F_Q5_0)

// The 8x8 tile of 8 warps with the weights staged through shared memory: each K slab of SLAB
// chunks (32 weights each) of the CTA's 8 weight rows is copied in with 16-byte loads that cover
// the rows' bytes contiguously (cp.async into STAGES buffers: STAGES - 1 slabs in flight while
// one computes), and the lanes decode their mma fragments from the copy. The row kernels above load
// each lane's 8 weights straight from global memory, a few bytes from each of 8 rows per
// instruction, which spends the load pipeline on many partly used lines. Warp w still adds
// chunks c ≡ w (mod 8) in increasing order (a slab holds a multiple of 8 chunks) and the warps'
// partial sums meet as above, so the results are those of every 8-warp kernel, bit for bit.
//
// A CTA takes the column tiles blockIdx.x, blockIdx.x + gridDim.x, ...: 8x8s launches one CTA a
// tile, 8x8p as many as the GPU holds at once (a persistent grid), so that a CTA's copies of its
// next tile are in flight while it finishes one (the slabs of all its tiles are one pipeline),
// instead of each small CTA waiting out a whole memory latency before its first product.
#define STAGE_SLAB 32
#define STAGE_PAD 48
// The most static shared memory the stages of one CTA take (bf16 slabs are the largest).
#define STAGE_BYTES_MAX 40960

__device__ __forceinline__ void cp_async16(void* smem, const void* gmem) {
    const unsigned s = (unsigned)__cvta_generic_to_shared(smem);
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(s), "l"(gmem) : "memory");
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
template <int N>
__device__ __forceinline__ void cp_async_wait() { asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory"); }

template <int F, int MTILES, int STAGES_WANTED>
__device__ __forceinline__ void matmul_staged_body(const uint8_t* __restrict__ w, size_t row_bytes,
                                                   const bf16* __restrict__ x, float* __restrict__ y,
                                                   const float* __restrict__ bias, int rows, int n,
                                                   int k, int ldy) {
    constexpr int KWARPS = 8, COLS = 8, THREADS = KWARPS * WARP;
    static_assert(STAGES_WANTED >= 2, "one buffer computes while the next ones arrive");
    constexpr int SLAB_K = STAGE_SLAB * 32;  // weights of a slab, a multiple of every block
    constexpr int SLAB_BYTES = SLAB_K / Fmt<F>::BLOCK * Fmt<F>::BYTES;
    // A row's slab with room for its start's offset in a 16-byte piece and the last piece; the
    // stride keeps the 8 rows in different banks.
    constexpr int SEG = ((SLAB_BYTES + 32 + 15) / 16) * 16 + 16;
    constexpr int FIT = STAGE_BYTES_MAX / (COLS * SEG);
    constexpr int STAGES = STAGES_WANTED < FIT ? STAGES_WANTED : (FIT < 2 ? 2 : FIT);
    __shared__ __align__(16) uint8_t stage[STAGES][COLS][SEG];
    __shared__ float part[KWARPS][16][COLS + 1];
    // The warp index taken modulo KWARPS (a no-op for the 256 threads launched) tells the
    // compiler its range, so that a chunk's offset in its block folds into constants and
    // warp-uniform values (every chunk a warp decodes sits at the same place in its block).
    const int lane = threadIdx.x % WARP, warp = (threadIdx.x / WARP) % KWARPS;
    const int g = lane / 4, t = lane % 4;
    const int chunks = k / 32, slabs = (k + SLAB_K - 1) / SLAB_K;
    const int tiles_n = (n + COLS - 1) / COLS;
    // This CTA's work as units: unit u is slab u % slabs of its (u / slabs)-th tile.
    const int my_tiles = (int)blockIdx.x < tiles_n ? (tiles_n - 1 - (int)blockIdx.x) / (int)gridDim.x + 1 : 0;
    const int units = my_tiles * slabs;
    const uint8_t* const end = w + (size_t)n * row_bytes;
    auto unit_n0 = [&](int u) { return ((int)blockIdx.x + (u / slabs) * (int)gridDim.x) * COLS; };
    // Where slab s of row j of the tile at n0 starts in global memory (the last tile's extra
    // rows repeat row n - 1; their results are never written).
    auto slab_start = [&](int n0, int j, int s) -> const uint8_t* {
        return w + (size_t)min(n0 + j, n - 1) * row_bytes + (size_t)s * SLAB_BYTES;
    };
    // This thread's 16-byte pieces of a unit, the same in every unit: row j, piece p. The
    // copy and the warp indices above assume the THREADS the kernels are launched with.
    constexpr int PIECES = SEG / 16, PER_THREAD = (COLS * PIECES + THREADS - 1) / THREADS;
    if (blockDim.x != THREADS) __trap();
    // Copies unit u (if there is one) into buffer u % STAGES and commits a group either way, so
    // that every thread has committed the same number of groups; a piece that runs past the
    // matrix is copied by bytes.
    auto stage_unit = [&](int u) {
        if (u < units) {
            const int b = u % STAGES, s = u % slabs, n0 = unit_n0(u);
            const int len = min(SLAB_K, k - s * SLAB_K) / Fmt<F>::BLOCK * Fmt<F>::BYTES;
#pragma unroll
            for (int e = 0; e < PER_THREAD; ++e) {
                const int i = threadIdx.x + THREADS * e;
                if (i >= COLS * PIECES) break;
                const int j = i / PIECES, p = i % PIECES;
                const uint8_t* src = slab_start(n0, j, s);
                const int off = (int)((size_t)src % 16);
                const uint8_t* piece = src - off + 16 * p;
                if (16 * p >= off + len) continue;
                if (piece + 16 <= end) {
                    cp_async16(&stage[b][j][16 * p], piece);
                } else {
                    for (int q = 0; q < 16; ++q)
                        if (piece + q < end) stage[b][j][16 * p + q] = piece[q];
                }
            }
        }
        cp_async_commit();
    };
    for (int r0 = 0; r0 < rows; r0 += 16 * MTILES) {
        float acc[MTILES][4];
#pragma unroll
        for (int m = 0; m < MTILES; ++m) acc[m][0] = acc[m][1] = acc[m][2] = acc[m][3] = 0.f;
        const int tiles = min(MTILES, (rows - r0 + 15) / 16);
#pragma unroll
        for (int i = 0; i < STAGES - 1; ++i) stage_unit(i);
        for (int u = 0; u < units; ++u) {
            // Unit u has arrived, and every warp is done with the buffer unit u + STAGES - 1 takes.
            cp_async_wait<STAGES - 2>();
            __syncthreads();
            stage_unit(u + STAGES - 1);
            const int s = u % slabs, n0 = unit_n0(u);
            const uint8_t* src = slab_start(n0, g, s);
            const uint8_t* wr = &stage[u % STAGES][g][(size_t)src % 16];
            uint32_t b[STAGE_SLAB / KWARPS][4];
#pragma unroll
            for (int v = 0; v < STAGE_SLAB / KWARPS; ++v) {
                const int c = s * STAGE_SLAB + warp + v * KWARPS;
                if (c < chunks) Fmt<F>::load8_row(wr, (warp + v * KWARPS) * 32 + t * 8, b[v]);
            }
#pragma unroll
            for (int v = 0; v < STAGE_SLAB / KWARPS; ++v) {
                const int c = s * STAGE_SLAB + warp + v * KWARPS;
                if (c >= chunks) break;
                const int kk = c * 32 + t * 8;
#pragma unroll
                for (int m = 0; m < MTILES; ++m) {
                    if (m >= tiles) break;
                    const int ra = r0 + m * 16 + g;
                    const uint4 xa = load_x8(x, rows, ra, k, kk);
                    const uint4 xb = load_x8(x, rows, ra + 8, k, kk);
                    mma_bf16(acc[m], xa.x, xb.x, xa.y, xb.y, b[v][0], b[v][1]);
                    mma_bf16(acc[m], xa.z, xb.z, xa.w, xb.w, b[v][2], b[v][3]);
                }
            }
            if (s + 1 < slabs) continue;
            // The tile's last slab: its warps' partial sums, one m-tile at a time, added in
            // warp order.
#pragma unroll
            for (int m = 0; m < MTILES; ++m) {
                if (m >= tiles) break;
                store_fragment<COLS>(part[warp], acc[m], g, t, 0);
                write_tile<KWARPS, COLS>(part, r0 + m * 16, rows, n0, n, y, ldy, bias);
                acc[m][0] = acc[m][1] = acc[m][2] = acc[m][3] = 0.f;
            }
        }
        // The empty groups of the last units, before the next pass stages into the buffers.
        cp_async_wait<0>();
        __syncthreads();
    }
}

#define MATMUL_STAGED_KERNEL(FMTNAME, F, TAG, STAGES, MIN_CTAS)                                   \
    extern "C" __global__ void __launch_bounds__(256, MIN_CTAS) matmul_##FMTNAME##_##TAG(         \
        const uint8_t* __restrict__ w, unsigned long long row_bytes, const bf16* __restrict__ x, \
        float* __restrict__ y, const float* __restrict__ bias, int rows, int n, int k, int ldy) { \
        grid_dependency();                                                                        \
        matmul_staged_body<F, 2, STAGES>(w, (size_t)row_bytes, x, y, bias, rows, n, k, ldy);      \
    }
// 8x8p's buffers (fewer where they would not fit STAGE_BYTES_MAX: bf16 gets 2) and the CTAs an
// SM must hold (registers are what limit it); `nvcc -D` overrides them for a trial build that
// specd loads through SPECD_KERNELS_DIR (kernels/src/cuda/ops.rs).
#ifndef PERSISTENT_STAGES
#define PERSISTENT_STAGES 4
#endif
#ifndef PERSISTENT_MIN_CTAS
#define PERSISTENT_MIN_CTAS 1
#endif
#define MATMUL_STAGED_SHAPES(FMTNAME, F)                                           \
    MATMUL_STAGED_KERNEL(FMTNAME, F, 8x8s, 2, 1)                                   \
    MATMUL_STAGED_KERNEL(FMTNAME, F, 8x8p, PERSISTENT_STAGES, PERSISTENT_MIN_CTAS)
MATMUL_STAGED_SHAPES(bf16, F_BF16)
MATMUL_STAGED_SHAPES(q4k, F_Q4K)
MATMUL_STAGED_SHAPES(q6k, F_Q6K)
MATMUL_STAGED_SHAPES(q8_0, F_Q8_0)
MATMUL_STAGED_SHAPES(q5_0, F_Q5_0)

// The same product on the CUDA cores, for comparison and as a fallback (SPECD_MATMUL=simple):
// a warp per output column, lanes over K eight weights at a time, rows in tiles of 8; each
// row's sum runs in the same order whatever the number of rows (batch-invariant too).
template <int F>
__device__ __forceinline__ void matmul_simple_body(const uint8_t* __restrict__ w, size_t row_bytes,
                                                   const bf16* __restrict__ x, float* __restrict__ y,
                                                   const float* __restrict__ bias, int rows, int n,
                                                   int k, int ldy) {
    const int lane = threadIdx.x % WARP, warp = threadIdx.x / WARP;
    const int col = blockIdx.x * (blockDim.x / WARP) + warp;
    if (col >= n) return;
    for (int r0 = 0; r0 < rows; r0 += 8) {
        float acc[8];
#pragma unroll
        for (int r = 0; r < 8; ++r) acc[r] = 0.f;
        for (int kk = lane * 8; kk < k; kk += WARP * 8) {
            uint32_t wv[4];
            Fmt<F>::load8(w, row_bytes, col, kk, wv);
            float wf[8];
#pragma unroll
            for (int t = 0; t < 4; ++t) {
                const __nv_bfloat162 p = *reinterpret_cast<const __nv_bfloat162*>(&wv[t]);
                wf[2 * t] = __low2float(p);
                wf[2 * t + 1] = __high2float(p);
            }
#pragma unroll
            for (int r = 0; r < 8; ++r) {
                if (r0 + r >= rows) break;
                const uint4 xv = load_x8(x, rows, r0 + r, k, kk);
                const uint32_t xw[4] = {xv.x, xv.y, xv.z, xv.w};
#pragma unroll
                for (int t = 0; t < 4; ++t) {
                    const __nv_bfloat162 p = *reinterpret_cast<const __nv_bfloat162*>(&xw[t]);
                    acc[r] = fmaf(wf[2 * t], __low2float(p), acc[r]);
                    acc[r] = fmaf(wf[2 * t + 1], __high2float(p), acc[r]);
                }
            }
        }
#pragma unroll
        for (int r = 0; r < 8; ++r) {
            const float s = warp_sum(acc[r]);
            if (lane == 0 && r0 + r < rows)
                y[(size_t)(r0 + r) * ldy + col] = s + (bias ? bias[col] : 0.f);
        }
    }
}

#define MATMUL_SIMPLE_KERNEL(FMTNAME, F)                                                          \
    extern "C" __global__ void __launch_bounds__(256) matmul_##FMTNAME##_simple(                  \
        const uint8_t* __restrict__ w, unsigned long long row_bytes, const bf16* __restrict__ x, \
        float* __restrict__ y, const float* __restrict__ bias, int rows, int n, int k, int ldy) { \
        grid_dependency();                                                                        \
        matmul_simple_body<F>(w, (size_t)row_bytes, x, y, bias, rows, n, k, ldy);                  \
    }
MATMUL_SIMPLE_KERNEL(bf16, F_BF16)
MATMUL_SIMPLE_KERNEL(q4k, F_Q4K)
MATMUL_SIMPLE_KERNEL(q6k, F_Q6K)
MATMUL_SIMPLE_KERNEL(q8_0, F_Q8_0)
MATMUL_SIMPLE_KERNEL(q5_0, F_Q5_0)

// Rows `ids[i]` of a weight table in format `fmt`, dequantized to f32 (embedding lookup).
// Grid: one CTA per row; a row with a negative id is written as zeros.
extern "C" __global__ void embed_rows(int fmt, const uint8_t* __restrict__ w,
                                      unsigned long long row_bytes, const int* __restrict__ ids,
                                      int k, float* __restrict__ out) {
    grid_dependency();
    const int r = blockIdx.x;
    const int id = ids[r];
    for (int kk = threadIdx.x * 8; kk < k; kk += blockDim.x * 8) {
        float* o = out + (size_t)r * k + kk;
        if (id < 0) {
            for (int t = 0; t < 8; ++t) o[t] = 0.f;
            continue;
        }
        uint32_t v[4];
        FORMAT_SWITCH(fmt, F, Fmt<F>::load8(w, (size_t)row_bytes, id, kk, v));
#pragma unroll
        for (int t = 0; t < 4; ++t) {
            const __nv_bfloat162 p = *reinterpret_cast<const __nv_bfloat162*>(&v[t]);
            o[2 * t] = __low2float(p);
            o[2 * t + 1] = __high2float(p);
        }
    }
}
