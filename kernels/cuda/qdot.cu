// Row products over 8-bit activations: `y = x · Wᵀ (+ bias)` with W in Q4_K or Q6_K and x
// quantized to int8 per 32 values (`quantize_rows`), the products of a 32-weight chunk summed
// exactly as integers (dp4a, or int8 mma) and only then scaled in f32. A weight costs a mask
// or a shift and a quarter of a dp4a here, against the ~8 instructions a weight of decoding to
// bf16 for the tensor cores (matmul.cu): the quantized products were bound by instruction
// issue, not by memory (BENCHMARKS.md, session 19). This is llama.cpp's arithmetic on GPUs
// (its q8_1 activations), with an order of f32 additions fixed so that every row count gives
// the same bits.
//
// This file: the quantization of the activations and the CUDA-core products (dp4a) for up to
// a few rows, their walks over blocks and rows; dot_readers.cuh how they read each format;
// qmma.cu has the tensor-core ones (int8 mma) for more; q8.cuh the order they share.
#include "dot_readers.cuh"
#include "q8.cuh"

// x bf16 [rows, k] -> q int8 [rows, k] and meta [rows, k / 32]: one warp per chunk, a value a
// lane; d = amax / 127, q = round(x · fl(127 / amax)) (half to even; zeros where amax is 0). A
// chunk holding a NaN gets d = NaN, so that the NaN reaches the outputs as it would through
// bf16 (an infinity does through d).
extern "C" __global__ void quantize_rows(const bf16* __restrict__ x, int rows, int k,
                                         int8_t* __restrict__ q, XChunk* __restrict__ meta) {
    grid_dependency();
    const int lane = threadIdx.x % WARP;
    const long chunk = (long)blockIdx.x * (blockDim.x / WARP) + threadIdx.x / WARP;
    if (chunk >= (long)rows * (k / 32)) return;
    const long i = chunk * 32 + lane;
    const float v = __bfloat162float(x[i]);
    const float amax = warp_max(fabsf(v));
    const float inv = amax > 0.f ? __fdiv_rn(127.f, amax) : 0.f;
    const int qv = max(-127, min(127, __float2int_rn(__fmul_rn(v, inv))));
    q[i] = (int8_t)qv;
    const int s0 = __reduce_add_sync(0xffffffffu, lane < 16 ? qv : 0);
    const int s1 = __reduce_add_sync(0xffffffffu, lane < 16 ? 0 : qv);
    const bool nan = __any_sync(0xffffffffu, v != v);
    const float d = nan ? __int_as_float(0x7fc00000) : __fdiv_rn(amax, 127.f);
    if (lane == 0) meta[chunk] = XChunk{d, {(short)s0, (short)s1}};
}

// ---- One row, Q4_K: a lane per output column. CTA of 8 warps over 32 columns; warp w takes
// the blocks b ≡ w (mod 8) of every column, so its lane owns classes 8w .. 8w + 7 (chunk j of
// block b is class 8 (b mod 8) + j) and reads its block's 144 bytes whole: the header is
// decoded once for the block's 8 chunks, and the activations, the same for every lane, are
// broadcast.
#define DOTC_COLS 32

extern "C" __global__ void __launch_bounds__(256) dotc_q4k(
    const uint8_t* __restrict__ w, unsigned long long row_bytes, const int8_t* __restrict__ xq,
    const XChunk* __restrict__ xm, float* __restrict__ y, const float* __restrict__ bias,
    int rows, int n, int k, int ldy) {
    grid_dependency();
    __shared__ float table[DOT_CLASSES][DOTC_COLS + 1];
    const int lane = threadIdx.x % WARP, warp = (threadIdx.x / WARP) % 8;
    const int col = blockIdx.x * DOTC_COLS + lane;
    const uint8_t* wr = w + (size_t)min(col, n - 1) * row_bytes;
    const int blocks = k / 256;
    float part[8];
#pragma unroll
    for (int j = 0; j < 8; ++j) part[j] = 0.f;
    for (int b = warp; b < blocks; b += 8) {
        const uint8_t* blk = wr + (size_t)b * 144;
        const uint4 head = ldg16(blk);
        uint4 qs[8];
#pragma unroll
        for (int p = 0; p < 8; ++p) qs[p] = ldg16(blk + 16 + 16 * p);
        const float2 dd = q4k_d_dmin(head);
        const int8_t* xb = xq + (size_t)b * 256;
        const XChunk* mb = xm + (size_t)b * 8;
#pragma unroll
        for (int j = 0; j < 8; ++j) {
            float scale, minv;
            q4k_scale_min(head, dd, j, scale, minv);
            const int sh = (j % 2) * 4;
            const int isum = dot16(low_nibbles(qs[(j / 2) * 2], sh), ldg16(xb + 32 * j)) +
                             dot16(low_nibbles(qs[(j / 2) * 2 + 1], sh), ldg16(xb + 32 * j + 16));
            part[j] = __fadd_rn(part[j], q4k_term(scale, minv, isum, mb[j]));
        }
    }
#pragma unroll
    for (int j = 0; j < 8; ++j) table[8 * warp + j][lane] = part[j];
    __syncthreads();
    if (warp == 0 && col < n) {
        float s = 0.f;
#pragma unroll 8
        for (int c = 0; c < DOT_CLASSES; ++c) s = __fadd_rn(s, table[c][lane]);
        if (bias) s = __fadd_rn(s, bias[col]);
        y[col] = s;
    }
}

// ---- A lane per output column for more rows, and for Q6_K: dotc_q4k's walk, the block's weights
// decoded once for all of a pass's rows (verification rows). A format's column reader
// (dot_readers.cuh) loads a lane's block whole (`load`), unpacks one chunk's weights (`chunk`) and adds a row's chunk as
// an exact integer sum (`term`), in the terms of q8.cuh. At the end of a pass the class sums of
// up to four rows at a time meet in shared memory, where warp q adds row q's 64 classes in class
// order. (One row of Q4_K keeps dotc_q4k above: this walk's row loop costs it 72 registers a
// thread against 44, and so CTAs an SM.) By default the host gives these kernels up to 4 rows
// (SPECD_DOTC_MAX_ROWS): the 8-row forms hold 128 registers and spill, and were slower than the
// warp-per-column kernels for 5 and 8 rows on an H100 (BENCHMARKS.md, session 26).
#define DOTC_TABLE_ROWS 4

template <class Column, int RG>
__device__ __forceinline__ void dotc_body(const uint8_t* __restrict__ w, size_t row_bytes,
                                          const int8_t* __restrict__ xq,
                                          const XChunk* __restrict__ xm, float* __restrict__ y,
                                          const float* __restrict__ bias, int rows, int n, int k,
                                          int ldy) {
    constexpr int TR = RG < DOTC_TABLE_ROWS ? RG : DOTC_TABLE_ROWS;
    __shared__ float table[TR][DOT_CLASSES][DOTC_COLS + 1];
    const int lane = threadIdx.x % WARP, warp = (threadIdx.x / WARP) % 8;
    const int col = blockIdx.x * DOTC_COLS + lane;
    const uint8_t* wr = w + (size_t)min(col, n - 1) * row_bytes;
    const int blocks = k / 256, chunks = k / 32;
    for (int r0 = 0; r0 < rows; r0 += RG) {
        float part[RG][8];
#pragma unroll
        for (int r = 0; r < RG; ++r)
#pragma unroll
            for (int j = 0; j < 8; ++j) part[r][j] = 0.f;
        for (int b = warp; b < blocks; b += 8) {
            Column wc;
            wc.load(wr + (size_t)b * Column::BYTES);
#pragma unroll
            for (int j = 0; j < 8; ++j) {
                // Every row's activations of chunk j first (rows past the last read the last
                // one again and add nothing), then the sums.
                RowChunk x[RG];
#pragma unroll
                for (int r = 0; r < RG; ++r) {
                    const size_t row = (size_t)min(r0 + r, rows - 1);
                    x[r] = row_chunk(xq + row * k + (size_t)b * 256 + 32 * j,
                                     xm + row * chunks + (size_t)b * 8 + j);
                }
                const typename Column::Chunk c = wc.chunk(j);
#pragma unroll
                for (int r = 0; r < RG; ++r)
                    if (r0 + r < rows) part[r][j] = __fadd_rn(part[r][j], wc.term(c, x[r]));
            }
        }
#pragma unroll
        for (int rr = 0; rr < RG; rr += TR) {
#pragma unroll
            for (int q = 0; q < TR; ++q)
#pragma unroll
                for (int j = 0; j < 8; ++j) table[q][8 * warp + j][lane] = part[rr + q][j];
            __syncthreads();
            const int row = r0 + rr + warp;
            if (warp < TR && row < rows && col < n) {
                float s = 0.f;
#pragma unroll 8
                for (int c = 0; c < DOT_CLASSES; ++c) s = __fadd_rn(s, table[warp][c][lane]);
                if (bias) s = __fadd_rn(s, bias[col]);
                y[(size_t)row * ldy + col] = s;
            }
            __syncthreads();
        }
    }
}

// y[rows, n] (row stride ldy) = x · W[n, k]ᵀ + bias; grid ceil(n / 32) CTAs of 256 threads, at
// least MINB of them resident an SM.
#define DOTC_KERNEL(NAME, COLUMN, RG, MINB)                                                         \
    extern "C" __global__ void __launch_bounds__(256, MINB) NAME(                                   \
        const uint8_t* __restrict__ w, unsigned long long row_bytes, const int8_t* __restrict__ xq, \
        const XChunk* __restrict__ xm, float* __restrict__ y, const float* __restrict__ bias,      \
        int rows, int n, int k, int ldy) {                                                          \
        grid_dependency();                                                                          \
        dotc_body<COLUMN, RG>(w, (size_t)row_bytes, xq, xm, y, bias, rows, n, k, ldy);              \
    }
// Two CTAs an SM (at most 128 registers a thread): with every row's activations of a chunk
// loaded ahead of its sums the compiler hoists the loads of several chunks, and took up to 255
// registers unbounded (one CTA an SM) where the kernels had held 99-112 and two CTAs. (Eight
// rows spill at 128, as they did before.)
DOTC_KERNEL(dotc_q4k_r2, Q4kColumn, 2, 2)
DOTC_KERNEL(dotc_q4k_r4, Q4kColumn, 4, 2)
DOTC_KERNEL(dotc_q4k_r8, Q4kColumn, 8, 2)
DOTC_KERNEL(dotc_q6k_r1, Q6kColumn, 1, 2)
DOTC_KERNEL(dotc_q6k_r2, Q6kColumn, 2, 2)
DOTC_KERNEL(dotc_q6k_r4, Q6kColumn, 4, 2)
DOTC_KERNEL(dotc_q6k_r8, Q6kColumn, 8, 2)

#define DOT_WARPS 8

// The end of a pass of the warp-per-column kernels: lane l holds classes l and 32 + l of up to
// RG rows; lane r adds row r's 64 classes in class order from 0, then the bias (`CHECK`: if the
// column is one of the matrix's n).
template <int RG, bool CHECK>
__device__ __forceinline__ void write_classes(float (*table)[DOT_CLASSES + 1],
                                              const float (&part)[RG][2], int lane, int r0,
                                              int rows, int col, int n, float* __restrict__ y,
                                              int ldy, const float* __restrict__ bias) {
#pragma unroll
    for (int r = 0; r < RG; ++r) {
        table[r][lane] = part[r][0];
        table[r][WARP + lane] = part[r][1];
    }
    __syncwarp();
    if (lane < RG && r0 + lane < rows && (!CHECK || col < n)) {
        float s = 0.f;
#pragma unroll 8
        for (int i = 0; i < DOT_CLASSES; ++i) s = __fadd_rn(s, table[lane][i]);
        if (bias) s = __fadd_rn(s, bias[col]);
        y[(size_t)(r0 + lane) * ldy + col] = s;
    }
    __syncwarp();
}

// ---- Up to RG rows a pass, a warp per output column. A block (256 weights, 8 chunks) goes to
// 8 lanes, a warp taking 4 blocks at a time, twice per 8 blocks (hb): lane l works on chunk
// 8b + l % 8, whose class is 32 hb + l. What a lane reads of its block and of a row, and how it
// sums a row's chunk, is the format's (Q4kLane, Q6kLane in dot_readers.cuh); the walk over
// blocks and rows is one.
// For one or two rows a pass the walk issues its loads ahead of the arithmetic that waits for
// them, so that a step waits for memory about once instead of twice a row (walk_ahead).

// The most rows a pass of a warp-per-column kernel loads ahead (walk_ahead). The kernels of 4
// and 8 rows walk row after row: on an H100 (BENCHMARKS.md, session 29) loading ahead took 3 %
// off a decode step and 2 rows, but added 11 % to 5 rows (46 % loading four rows at a time),
// most of it in the gate and up products' 4,480 CTAs and the head's 37,984, whose many waves
// want more CTAs an SM more than shorter waits.
#define DOT_AHEAD_ROWS 2

// A pass's walk over the blocks of one column, for up to RG rows from r0, adding each row's
// chunk terms into part[row][hb] in block order (the same additions in the same order either
// way). `walk_ahead` (one or two rows a pass) loads a step ahead: the next step's weights
// before this step's sums, and the rows' activations with their chunk scales before any of
// their sums. `walk_rows` (more rows) loads a step's weights, then a row's activations and
// sums it, row after row.
template <int RG, class Lane, int WPC>
__device__ __forceinline__ void walk_ahead(Lane& l, const uint8_t* wr, const int8_t* __restrict__ xq,
                                           const XChunk* __restrict__ xm, int r0, int rows, int k,
                                           int lane, int mine, float (&part)[RG][2]) {
    const int chunks = k / 32, blocks = k / 256;
    // A step is one half hb of the 8 blocks from b8: the warp's steps are (0, mine), (8, mine),
    // ... with two warps a column, (0, 0), (0, 1), (8, 0), ... with one; a lane's block in it is
    // b8 + 4 hb + lane / 8 (past the last block: block 0, loaded and never added).
    const int first_hb = WPC == 2 ? mine : 0;
    auto block_of = [&](int b8, int hb) { return b8 + 4 * hb + lane / 8; };
    auto fetch = [&](int b8, int hb) {
        const int b = block_of(b8, hb);
        return l.fetch(wr + (size_t)(b < blocks ? b : 0) * Lane::BYTES);
    };
    int b8 = 0, hb = first_hb;
    bool have = 4 * hb < blocks;
    typename Lane::Raw cur;
    if (have) cur = fetch(b8, hb);
    while (have) {
        int nb8 = b8, nhb = hb;
        if (WPC == 2 || hb == 1) {
            nb8 += 8;
            nhb = first_hb;
        } else {
            nhb = 1;
        }
        const bool have_next = nb8 + 4 * nhb < blocks;
        typename Lane::Raw next;
        if (have_next) next = fetch(nb8, nhb);
        const int b = block_of(b8, hb);
        const bool active = b < blocks;
        l.at(active ? b : 0);
        // The rows' activations (a row past the last reads the last one again and adds
        // nothing), then their sums.
        typename Lane::Row x[RG];
#pragma unroll
        for (int i = 0; i < RG; ++i) {
            const size_t row = (size_t)min(r0 + i, rows - 1);
            x[i] = l.row(xq + row * k, xm + row * chunks);
        }
        l.decode(cur);
#pragma unroll
        for (int i = 0; i < RG; ++i) {
            if (r0 + i < rows) {
                const int isum = l.sum(x[i]);
                if (active) {
                    const float t = l.term(isum, x[i]);
                    if (hb)
                        part[i][1] = __fadd_rn(part[i][1], t);
                    else
                        part[i][0] = __fadd_rn(part[i][0], t);
                }
            }
        }
        cur = next;
        b8 = nb8;
        hb = nhb;
        have = have_next;
    }
}

// CPW columns a warp (1 or 2): the columns' weights decoded side by side, each row's activations
// loaded once for both.
template <int RG, class Lane, int WPC, int CPW>
__device__ __forceinline__ void walk_rows(Lane (&l)[CPW], const uint8_t* const (&wr)[CPW],
                                          const int8_t* __restrict__ xq,
                                          const XChunk* __restrict__ xm, int r0, int rows, int k,
                                          int lane, int mine, float (&part)[CPW][RG][2]) {
    const int chunks = k / 32, blocks = k / 256;
    for (int b8 = 0; b8 < blocks; b8 += 8) {
#pragma unroll
        for (int hb = 0; hb < 2; ++hb) {
            if (WPC == 2 && hb != mine) continue;
            if (b8 + 4 * hb >= blocks) break;
            const int b = b8 + 4 * hb + lane / 8;
            const bool active = b < blocks;
#pragma unroll
            for (int c = 0; c < CPW; ++c) {
                l[c].at(active ? b : 0);
                l[c].decode(l[c].fetch(wr[c] + (size_t)(active ? b : 0) * Lane::BYTES));
            }
#pragma unroll
            for (int r = 0; r < RG; ++r) {
                if (r0 + r >= rows) break;
                const size_t row = (size_t)(r0 + r);
                // The activations at the sum, the chunk's scale at the term (Q4_K), as the
                // kernels had it before walk_ahead: loading the scale with the activations cost
                // 6-17 % in these kernels' launches (session 30). Every column's lane reads the
                // same chunk of a row.
                const XChunk* xmr = xm + row * chunks;
                typename Lane::Row x = l[0].row_x(xq + row * k, xmr);
                int isum[CPW];
#pragma unroll
                for (int c = 0; c < CPW; ++c) isum[c] = l[c].sum(x);
                if (active) {
                    l[0].row_m(x, xmr);
#pragma unroll
                    for (int c = 0; c < CPW; ++c)
                        part[c][r][hb] = __fadd_rn(part[c][r][hb], l[c].term(isum[c], x));
                }
            }
        }
    }
}

// WPC warps per column: with 2, each of a column's two warps takes one of the two halves of
// every 8 blocks (hb), so that a long k (the down projections' 35 blocks) is walked in half the
// steps by twice the warps; the halves' class sums meet in shared memory and are added in class
// order as with one warp.
// CPW columns a warp (walk_rows only): a CTA takes DOT_WARPS / WPC · CPW columns.
template <int RG, class Lane, int WPC, int CPW>
__device__ __forceinline__ void dot_body(const uint8_t* __restrict__ w, size_t row_bytes,
                                         const int8_t* __restrict__ xq,
                                         const XChunk* __restrict__ xm, float* __restrict__ y,
                                         const float* __restrict__ bias, int rows, int n, int k,
                                         int ldy) {
    static_assert(WPC == 1 || WPC == 2, "one or two warps a column");
    static_assert(CPW == 1 || (CPW == 2 && RG > DOT_AHEAD_ROWS), "two columns a warp walk rows");
    constexpr int COLS = DOT_WARPS / WPC * CPW;
    __shared__ float table[COLS][RG][DOT_CLASSES + 1];
    const int lane = threadIdx.x % WARP, warp = (threadIdx.x / WARP) % DOT_WARPS;
    const int slot = warp / WPC, mine = WPC == 2 ? warp % 2 : -1;
    const int col0 = blockIdx.x * COLS + slot * CPW;
    // With two warps a column every warp reaches the barriers; a column past n computes the
    // last one's and writes nothing.
    if (WPC == 1 && col0 >= n) return;
    const uint8_t* wr[CPW];
    Lane l[CPW];
#pragma unroll
    for (int c = 0; c < CPW; ++c) {
        wr[c] = w + (size_t)min(col0 + c, n - 1) * row_bytes;
        l[c] = Lane(lane);
    }
    // The grid's y dimension splits the rows: CTA (x, y) takes passes y, y + gridDim.y, ...
    for (int r0 = RG * blockIdx.y; r0 < rows; r0 += RG * gridDim.y) {
        float part[CPW][RG][2];
#pragma unroll
        for (int c = 0; c < CPW; ++c)
#pragma unroll
            for (int r = 0; r < RG; ++r) part[c][r][0] = part[c][r][1] = 0.f;
        if constexpr (RG <= DOT_AHEAD_ROWS)
            walk_ahead<RG, Lane, WPC>(l[0], wr[0], xq, xm, r0, rows, k, lane, mine, part[0]);
        else
            walk_rows<RG, Lane, WPC, CPW>(l, wr, xq, xm, r0, rows, k, lane, mine, part);
        if constexpr (WPC == 1) {
#pragma unroll
            for (int c = 0; c < CPW; ++c)
                write_classes<RG, (CPW > 1)>(table[slot * CPW + c], part[c], lane, r0, rows,
                                             col0 + c, n, y, ldy, bias);
        } else {
#pragma unroll
            for (int c = 0; c < CPW; ++c)
#pragma unroll
                for (int r = 0; r < RG; ++r)
                    table[slot * CPW + c][r][WARP * mine + lane] = mine ? part[c][r][1] : part[c][r][0];
            __syncthreads();
            // Lane c · RG + r of the first warp adds column c's row r.
            const int c = CPW == 1 ? 0 : lane / RG, r = CPW == 1 ? lane : lane % RG;
            const int col = col0 + c;
            if (mine == 0 && lane < RG * CPW && r0 + r < rows && col < n) {
                float s = 0.f;
#pragma unroll 8
                for (int i = 0; i < DOT_CLASSES; ++i) s = __fadd_rn(s, table[slot * CPW + c][r][i]);
                if (bias) s = __fadd_rn(s, bias[col]);
                y[(size_t)(r0 + r) * ldy + col] = s;
            }
            __syncthreads();
        }
    }
}

// The start of a warp-per-column kernel of RG rows a pass whose CTAs take `cols` columns: the
// 8-row kernels ask L2 for their CTA's weights before the wait (cta_columns_then_wait), the
// others only wait. Measured on an H100 (BENCHMARKS.md, session 26): asking costs a one-row
// decode step ~1 % and gains 2 to 4 rows nothing, and takes ~3 % off 5 and 8 rows.
template <int RG>
__device__ __forceinline__ void dot_wait(const uint8_t* w, unsigned long long row_bytes, int n,
                                         int cols) {
    if (RG >= 8)
        cta_columns_then_wait(w, row_bytes, n, cols);
    else
        grid_dependency();
}

// y[rows, n] (row stride ldy) = x · W[n, k]ᵀ + bias from x's 8-bit copy (xq [rows, k], xm
// [rows, k / 32]); k a multiple of 256. Grid ceil(n / 8) CTAs of 256 threads (`_s2`: two warps
// a column, ceil(n / 4) CTAs) by up to ceil(rows / RG) in y, CTA y taking passes y,
// y + gridDim.y, ...
// CTAs an SM at least, which bounds the registers a thread: three (80) for the kernels that
// load ahead; five (48) for the others with two warps a column and four (64) with one, what
// they held before loading ahead was written (the 4- and 8-row launches of the gate and up
// products and the head run many waves).
#define DOT_MIN_CTAS(RG, WPC) ((RG) <= DOT_AHEAD_ROWS ? 3 : (WPC) == 2 ? 5 : 4)
#define DOT_KERNEL(FMTNAME, LANE, RG)                                                               \
    extern "C" __global__ void __launch_bounds__(DOT_WARPS * WARP, DOT_MIN_CTAS(RG, 1))            \
        dot_##FMTNAME##_r##RG(                                                                      \
        const uint8_t* __restrict__ w, unsigned long long row_bytes, const int8_t* __restrict__ xq, \
        const XChunk* __restrict__ xm, float* __restrict__ y, const float* __restrict__ bias,      \
        int rows, int n, int k, int ldy) {                                                          \
        dot_wait<RG>(w, row_bytes, n, DOT_WARPS);                                                   \
        dot_body<RG, LANE, 1, 1>(w, (size_t)row_bytes, xq, xm, y, bias, rows, n, k, ldy);          \
    }                                                                                               \
    extern "C" __global__ void __launch_bounds__(DOT_WARPS * WARP, DOT_MIN_CTAS(RG, 2))            \
        dot_##FMTNAME##_r##RG##_s2(                                                                 \
        const uint8_t* __restrict__ w, unsigned long long row_bytes, const int8_t* __restrict__ xq, \
        const XChunk* __restrict__ xm, float* __restrict__ y, const float* __restrict__ bias,      \
        int rows, int n, int k, int ldy) {                                                          \
        dot_wait<RG>(w, row_bytes, n, DOT_WARPS / 2);                                               \
        dot_body<RG, LANE, 2, 1>(w, (size_t)row_bytes, xq, xm, y, bias, rows, n, k, ldy);          \
    }
DOT_KERNEL(q4k, Q4kLane, 1)
DOT_KERNEL(q4k, Q4kLane, 2)
DOT_KERNEL(q4k, Q4kLane, 4)
DOT_KERNEL(q4k, Q4kLane, 8)
DOT_KERNEL(q6k, Q6kLane, 1)
DOT_KERNEL(q6k, Q6kLane, 2)
DOT_KERNEL(q6k, Q6kLane, 4)
DOT_KERNEL(q6k, Q6kLane, 8)

// Two warps and two columns a warp (`_s2_c2`, 4 or 8 rows a pass): grid ceil(n / 8) CTAs of 256
// threads, at least two an SM (128 registers), for the narrow products' verification rows,
// whose launches fill less than a wave (each row's activations read from L1 once for two
// columns instead of once a column).
#define DOT_PAIR_KERNEL(FMTNAME, LANE, RG)                                                          \
    extern "C" __global__ void __launch_bounds__(DOT_WARPS * WARP, 2) dot_##FMTNAME##_r##RG##_s2_c2( \
        const uint8_t* __restrict__ w, unsigned long long row_bytes, const int8_t* __restrict__ xq, \
        const XChunk* __restrict__ xm, float* __restrict__ y, const float* __restrict__ bias,      \
        int rows, int n, int k, int ldy) {                                                          \
        dot_wait<RG>(w, row_bytes, n, DOT_WARPS);                                                   \
        dot_body<RG, LANE, 2, 2>(w, (size_t)row_bytes, xq, xm, y, bias, rows, n, k, ldy);          \
    }
DOT_PAIR_KERNEL(q4k, Q4kLane, 4)
DOT_PAIR_KERNEL(q4k, Q4kLane, 8)
DOT_PAIR_KERNEL(q6k, Q6kLane, 4)
DOT_PAIR_KERNEL(q6k, Q6kLane, 8)
