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
// a few rows; qmma.cu has the tensor-core ones (int8 mma) for more; q8.cuh the order they share.
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

// Σ over 16 bytes of small non-negative weights `w` (a byte each) times 16 int8 activations.
__device__ __forceinline__ int dot16(uint4 w, uint4 x) {
    int s = __dp4a((int)w.x, (int)x.x, 0);
    s = __dp4a((int)w.y, (int)x.y, s);
    s = __dp4a((int)w.z, (int)x.z, s);
    return __dp4a((int)w.w, (int)x.w, s);
}

__device__ __forceinline__ uint4 low_nibbles(uint4 v, int shift) {
    return make_uint4((v.x >> shift) & 0x0F0F0F0Fu, (v.y >> shift) & 0x0F0F0F0Fu,
                      (v.z >> shift) & 0x0F0F0F0Fu, (v.w >> shift) & 0x0F0F0F0Fu);
}

// 16 bytes at a 2-byte aligned address (Q6_K blocks are 210 bytes): the aligned words that
// cover them (aligned2_words: `sh` the address's offset from alignment in bits), shifted
// together (aligned2_shift). Kernels that load ahead keep the words and shift them later.
__device__ __forceinline__ unsigned aligned2_shift_bits(const void* p) {
    return ((unsigned)(uintptr_t)p & 3u) * 8u;
}
__device__ __forceinline__ void aligned2_words(const uint8_t* p, unsigned sh, uint32_t (&w)[5]) {
    const uint32_t* a = reinterpret_cast<const uint32_t*>((uintptr_t)p & ~(uintptr_t)3);
#pragma unroll
    for (int i = 0; i < 4; ++i) w[i] = __ldg(a + i);
    w[4] = sh ? __ldg(a + 4) : 0u;
}
__device__ __forceinline__ uint4 aligned2_shift(const uint32_t (&w)[5], unsigned sh) {
    return make_uint4(__funnelshift_r(w[0], w[1], sh), __funnelshift_r(w[1], w[2], sh),
                      __funnelshift_r(w[2], w[3], sh), __funnelshift_r(w[3], w[4], sh));
}
__device__ __forceinline__ uint4 ld16_aligned2(const uint8_t* p) {
    const unsigned sh = aligned2_shift_bits(p);
    uint32_t w[5];
    aligned2_words(p, sh, w);
    return aligned2_shift(w, sh);
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
// decoded once for all of a pass's rows (verification rows). A format's column reader loads a
// lane's block whole (`load`), unpacks one chunk's weights (`chunk`) and adds a row's chunk as
// an exact integer sum (`term`), in the terms of q8.cuh. At the end of a pass the class sums of
// up to four rows at a time meet in shared memory, where warp q adds row q's 64 classes in class
// order. (One row of Q4_K keeps dotc_q4k above: this walk's row loop costs it 72 registers a
// thread against 44, and so CTAs an SM.) By default the host gives these kernels up to 4 rows
// (SPECD_DOTC_MAX_ROWS): the 8-row forms hold 128 registers and spill, and were slower than the
// warp-per-column kernels for 5 and 8 rows on an H100 (BENCHMARKS.md, session 26).
#define DOTC_TABLE_ROWS 4

// One row's activations for one chunk (32 int8 values and their chunk's scale and sums), loaded
// ahead of the sums that take them: the products load every row's before adding any, so that a
// pass of several rows waits for its loads once, not once a row.
struct RowChunk {
    uint4 lo, hi;
    XChunk m;
};

__device__ __forceinline__ RowChunk row_chunk(const int8_t* xc, const XChunk* m) {
    return RowChunk{ldg16(xc), ldg16(xc + 16), *m};
}

struct Q4kColumn {
    static constexpr int BYTES = 144;
    uint4 head, qs[8];
    float2 dd;
    struct Chunk {
        uint4 lo, hi;
        float scale, minv;
    };
    __device__ __forceinline__ void load(const uint8_t* blk) {
        head = ldg16(blk);
#pragma unroll
        for (int p = 0; p < 8; ++p) qs[p] = ldg16(blk + 16 + 16 * p);
        dd = q4k_d_dmin(head);
    }
    __device__ __forceinline__ Chunk chunk(int j) const {
        Chunk c;
        q4k_scale_min(head, dd, j, c.scale, c.minv);
        const int sh = (j % 2) * 4;
        c.lo = low_nibbles(qs[(j / 2) * 2], sh);
        c.hi = low_nibbles(qs[(j / 2) * 2 + 1], sh);
        return c;
    }
    __device__ __forceinline__ float term(const Chunk& c, const RowChunk& x) const {
        const int isum = dot16(c.lo, x.lo) + dot16(c.hi, x.hi);
        return q4k_term(c.scale, c.minv, isum, x.m);
    }
};

// Q6_K: chunk j is quarter q = j % 4 of half h = j / 4: its weights' low 4 bits are nibble q / 2
// of ql[64 h + 32 (q % 2) + p], their high 2 bits bits 2q, 2q + 1 of qh[32 h + p] (p = 0..31), and
// its two sub-blocks of 16 have the int8 scales sc[8 h + 2 q] and sc[8 h + 2 q + 1]. A block is
// 210 bytes, so a block may start at an address of 2 mod 4 (ld16_aligned2).
struct Q6kColumn {
    static constexpr int BYTES = 210;
    uint4 ql[8], qh[4], sc;
    float d;
    struct Chunk {
        uint4 u0, u1;  // the 6-bit values (0..63) of the two sub-blocks, a byte each
        int s0, s1;
    };
    __device__ __forceinline__ void load(const uint8_t* blk) {
#pragma unroll
        for (int p = 0; p < 8; ++p) ql[p] = ld16_aligned2(blk + 16 * p);
#pragma unroll
        for (int p = 0; p < 4; ++p) qh[p] = ld16_aligned2(blk + 128 + 16 * p);
        sc = ld16_aligned2(blk + 192);
        d = half_at(blk + 208);
    }
    __device__ __forceinline__ static uint4 six_bits(uint4 l, uint4 h, int lsh, int hsh) {
        return make_uint4(((l.x >> lsh) & 0x0F0F0F0Fu) | (((h.x >> hsh) & 0x03030303u) << 4),
                          ((l.y >> lsh) & 0x0F0F0F0Fu) | (((h.y >> hsh) & 0x03030303u) << 4),
                          ((l.z >> lsh) & 0x0F0F0F0Fu) | (((h.z >> hsh) & 0x03030303u) << 4),
                          ((l.w >> lsh) & 0x0F0F0F0Fu) | (((h.w >> hsh) & 0x03030303u) << 4));
    }
    __device__ __forceinline__ static int scale_at(uint4 v, int i) {
        const uint32_t word = i < 4 ? v.x : i < 8 ? v.y : i < 12 ? v.z : v.w;
        return (int)(int8_t)(word >> (8 * (i % 4)));
    }
    __device__ __forceinline__ Chunk chunk(int j) const {
        const int h = j / 4, q = j % 4;
        const int l0 = 4 * h + 2 * (q % 2), lsh = 4 * (q / 2), hsh = 2 * q;
        Chunk c;
        c.u0 = six_bits(ql[l0], qh[2 * h], lsh, hsh);
        c.u1 = six_bits(ql[l0 + 1], qh[2 * h + 1], lsh, hsh);
        c.s0 = scale_at(sc, 8 * h + 2 * q);
        c.s1 = scale_at(sc, 8 * h + 2 * q + 1);
        return c;
    }
    __device__ __forceinline__ float term(const Chunk& c, const RowChunk& x) const {
        const int ia = c.s0 * (dot16(c.u0, x.lo) - 32 * x.m.sum[0]);
        const int ib = c.s1 * (dot16(c.u1, x.hi) - 32 * x.m.sum[1]);
        return q6k_term(d, ia + ib, x.m.d);
    }
};

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
// sums a row's chunk, is the format's (Q4kLane, Q6kLane); the walk over blocks and rows is one.
// For one or two rows a pass the walk issues its loads ahead of the arithmetic that waits for
// them, so that a step waits for memory about once instead of twice a row (walk_ahead).

// Q4_K: lane l holds 16 bytes of its block's quants, the low nibbles of which are half of chunk
// 2m and the high nibbles half of chunk 2m + 1 (m = l % 8 / 2); the lane pair l, l ^ 1 covers
// both chunks whole and swaps half sums.
struct Q4kLane {
    static constexpr int BYTES = 144;
    // A block's bytes as loaded (the header and this lane's 16 bytes of quants), and a row's
    // activations for this lane's two half chunks with its chunk's scale and sums.
    struct Raw {
        uint4 head, qs;
    };
    struct Row {
        uint4 x_lo, x_hi;
        XChunk m;
    };
    int j, m, h;
    uint4 lo, hi;
    float scale, minv;
    int c, c_lo, c_hi;  // this lane's chunk, and the chunks its bytes hold
    Q4kLane() = default;
    __device__ __forceinline__ explicit Q4kLane(int lane) : j(lane % 8), m(lane % 8 / 2), h(lane % 2) {}
    __device__ __forceinline__ Raw fetch(const uint8_t* blk) const {
        return Raw{ldg16(blk), ldg16(blk + 16 + m * 32 + h * 16)};
    }
    // Block b's chunks (b is 0 for a lane past the last block: its results are never added).
    __device__ __forceinline__ void at(int b) {
        c = b * 8 + j;
        c_lo = c - h;
        c_hi = c_lo + 1;
    }
    __device__ __forceinline__ void decode(const Raw& r) {
        lo = low_nibbles(r.qs, 0);
        hi = low_nibbles(r.qs, 4);
        q4k_scale_min(r.head, q4k_d_dmin(r.head), j, scale, minv);
    }
    // A row's activations (row_x) and its chunk's scale and sums (row_m, taken by the term
    // only); row: both.
    __device__ __forceinline__ Row row_x(const int8_t* xr, const XChunk*) const {
        Row x;
        x.x_lo = ldg16(xr + c_lo * 32 + h * 16);
        x.x_hi = ldg16(xr + c_hi * 32 + h * 16);
        return x;
    }
    __device__ __forceinline__ void row_m(Row& x, const XChunk* xmr) const { x.m = xmr[c]; }
    __device__ __forceinline__ Row row(const int8_t* xr, const XChunk* xmr) const {
        Row x = row_x(xr, xmr);
        row_m(x, xmr);
        return x;
    }
    // The exact sum of this lane's chunk over a row (every lane calls it: it swaps halves).
    __device__ __forceinline__ int sum(const Row& x) const {
        const int s_lo = dot16(lo, x.x_lo);
        const int s_hi = dot16(hi, x.x_hi);
        // Keep this lane's chunk's half, hand the other chunk's half to the partner.
        const int mine = h ? s_hi : s_lo, theirs = h ? s_lo : s_hi;
        return mine + __shfl_xor_sync(0xffffffffu, theirs, 1);
    }
    __device__ __forceinline__ float term(int isum, const Row& x) const {
        return q4k_term(scale, minv, isum, x.m);
    }
};

// Q6_K: a block's chunk j is quarter j % 4 of half j / 4 (ql nibbles and qh bit pairs, two
// 16-weight sub-blocks with their own scales). Lanes q and q ^ 2 of a half read the same ql
// bytes (low nibbles: quarter q & 1, high: quarter (q & 1) + 2): each takes 16 of the 32 (sub-
// block q >> 1 of both quarters), so it holds one sub-block of its own chunk and one of its
// partner's, scaled by their integer scales, and they swap the partner's.
struct Q6kLane {
    static constexpr int BYTES = 210;
    // A block's bytes as loaded: the aligned words covering this lane's 16 bytes of ql and of
    // qh (ld16_aligned2's, shifted at decode), d, and the two sub-blocks' scales.
    struct Raw {
        uint32_t l[5], hq[5];
        unsigned sh;
        uint16_t d;
        int8_t sc_a, sc_b;
    };
    struct Row {
        uint4 xa, xb;
        XChunk ma, mb;
    };
    int half, q, sub, qa;
    uint4 ua, ub;  // quarter qa's and quarter qa + 2's 6-bit values (0..63), a byte each
    float d;
    int sc_a, sc_b, ca, cb;
    Q6kLane() = default;
    __device__ __forceinline__ explicit Q6kLane(int lane)
        : half(lane % 8 / 4), q(lane % 4), sub(lane % 4 >> 1), qa(lane % 2) {}
    __device__ __forceinline__ Raw fetch(const uint8_t* blk) const {
        Raw r;
        // Both runs start 16-byte multiples from blk: one alignment.
        r.sh = aligned2_shift_bits(blk);
        aligned2_words(blk + 64 * half + 32 * qa + 16 * sub, r.sh, r.l);
        aligned2_words(blk + 128 + 32 * half + 16 * sub, r.sh, r.hq);
        r.d = __ldg(reinterpret_cast<const unsigned short*>(blk + 208));
        r.sc_a = (int8_t)__ldg(blk + 192 + 8 * half + 2 * qa + sub);
        r.sc_b = (int8_t)__ldg(blk + 192 + 8 * half + 2 * (qa + 2) + sub);
        return r;
    }
    __device__ __forceinline__ void at(int b) {
        ca = b * 8 + 4 * half + qa;
        cb = ca + 2;
    }
    __device__ __forceinline__ void decode(const Raw& r) {
        const uint4 ql = aligned2_shift(r.l, r.sh), qh = aligned2_shift(r.hq, r.sh);
        d = __half2float(__ushort_as_half(r.d));
        sc_a = r.sc_a;
        sc_b = r.sc_b;
        const int sha = 2 * qa, shb = 2 * qa + 4;
        ua = make_uint4((ql.x & 0x0F0F0F0Fu) | (((qh.x >> sha) & 0x03030303u) << 4),
                        (ql.y & 0x0F0F0F0Fu) | (((qh.y >> sha) & 0x03030303u) << 4),
                        (ql.z & 0x0F0F0F0Fu) | (((qh.z >> sha) & 0x03030303u) << 4),
                        (ql.w & 0x0F0F0F0Fu) | (((qh.w >> sha) & 0x03030303u) << 4));
        ub = make_uint4(((ql.x >> 4) & 0x0F0F0F0Fu) | (((qh.x >> shb) & 0x03030303u) << 4),
                        ((ql.y >> 4) & 0x0F0F0F0Fu) | (((qh.y >> shb) & 0x03030303u) << 4),
                        ((ql.z >> 4) & 0x0F0F0F0Fu) | (((qh.z >> shb) & 0x03030303u) << 4),
                        ((ql.w >> 4) & 0x0F0F0F0Fu) | (((qh.w >> shb) & 0x03030303u) << 4));
    }
    // The sums take the chunks' scales and sums too: row_x loads them with the activations.
    __device__ __forceinline__ Row row_x(const int8_t* xr, const XChunk* xmr) const {
        return Row{ldg16(xr + ca * 32 + 16 * sub), ldg16(xr + cb * 32 + 16 * sub), xmr[ca], xmr[cb]};
    }
    __device__ __forceinline__ void row_m(Row&, const XChunk*) const {}
    __device__ __forceinline__ Row row(const int8_t* xr, const XChunk* xmr) const {
        return row_x(xr, xmr);
    }
    __device__ __forceinline__ int sum(const Row& x) const {
        const int xa = sub ? x.ma.sum[1] : x.ma.sum[0], xb = sub ? x.mb.sum[1] : x.mb.sum[0];
        const int ia = sc_a * (dot16(ua, x.xa) - 32 * xa);
        const int ib = sc_b * (dot16(ub, x.xb) - 32 * xb);
        // Lanes 0, 1 of a half own quarters qa; lanes 2, 3 quarters qa + 2.
        const int mine = q < 2 ? ia : ib, theirs = q < 2 ? ib : ia;
        return mine + __shfl_xor_sync(0xffffffffu, theirs, 2);
    }
    __device__ __forceinline__ float term(int isum, const Row& x) const {
        return q6k_term(d, isum, q < 2 ? x.ma.d : x.mb.d);
    }
};

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
