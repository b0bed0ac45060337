// How the 8-bit-activation products of qdot.cu read each weight format: the small integer
// helpers (a 16-byte dp4a sum, nibble masks, 16 bytes at a 2-byte aligned address), a format's
// column for the lane-per-column kernels (Q4kColumn, Q6kColumn: a lane loads its block whole and
// takes each chunk's weights from it) and a format's lane for the warp-per-column kernels
// (Q4kLane, Q6kLane: a lane holds 16 bytes of its block and pairs with a partner lane for a
// chunk's sum), each adding a row's chunk as an exact integer sum in the terms of q8.cuh. The
// walks over blocks and rows, and the kernels, are qdot.cu's.
#pragma once
#include "q8.cuh"

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
