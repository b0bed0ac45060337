// The products of qdot.cu and qmma.cu as a tiled GEMM, for the many rows of prefill and of
// large batches: `y = x · Wᵀ (+ bias)` with W in Q4_K or Q6_K and x's 8-bit copy, in the same
// order of additions (q8.cuh), so that a row gives the same bits here as alone in a decode step.
//
// qmma.cu walks the chunks in k order with 64 class sums a thread and so holds few outputs; a
// GEMM needs many outputs a thread. The order allows that if the walk goes class by class:
// class p's chunks are p, p + 64, p + 128, ..., its sum starts from 0 and takes them in that
// order, and the output adds the classes' sums in class order. So a thread keeps, per output,
// the running total and the sums of the classes it is walking: two, a chunk pair (2q, 2q + 1)
// at a time, because a pair's weights share their bytes (Q4_K: the low and high nibbles of the
// same 32 bytes; Q6_K: the same high bits), and then adds the two to the total in order. A
// stage is one chunk pair of 32·WM rows and 32 columns, staged in shared memory with the
// weights decoded to bytes (0..15, or 0..63 for Q6_K) and each chunk's scales worked out once
// for the CTA; the next stage's global loads are in flight while the warps multiply.
//
// Warps: WM rows of two, each taking 32 rows by 16 columns (2 x 2 tiles of m16n8 mma, the
// activations as A, the weights as B), 16 outputs a lane. Within a lane's 8 k-slots of a
// chunk both operands are taken at the same 8 positions (as in qmma.cu).
#include "q8.cuh"

#define QG_COLS 32
// Bytes a staged row takes: a chunk pair's 64 values, padded so that the 8-byte fragment reads
// of a half warp (8 rows of 4 lanes) fall in different banks.
#define QG_STRIDE 96

template <int WM> struct QgemmStage {
    uint8_t x[32 * WM][QG_STRIDE];
    uint8_t w[QG_COLS][QG_STRIDE];
    XChunk xm[32 * WM][2];
    // Per column, the pair's scales: Q4_K (scale, min) of each chunk; Q6_K d, then the two
    // chunks' four integer scales as bytes (the bits of .y).
    float4 ws[QG_COLS];
};

// What one thread loads from global memory for a stage (registers, so that the loads of the
// next stage overlap the current one's products), and how it stages them.
template <int F, int WM> struct QgemmLoad {
    static constexpr int THREADS = 64 * WM;
    static constexpr int X_PIECES = (32 * WM * 4) / THREADS;  // 16-byte pieces: 2
    static constexpr int W_PIECES = (QG_COLS * 4 + THREADS - 1) / THREADS;  // 8-value pieces
    uint4 x[X_PIECES];
    uint4 xm;          // thread tid < 32 WM: row tid's two XChunks
    uint2 w[W_PIECES][3];
    uint4 head;        // thread tid < 32: column tid's block header (Q4_K) or scales (Q6_K)

    // Chunks c, c + 1 (c even) of every row and column of the tile.
    __device__ __forceinline__ void load(const uint8_t* __restrict__ w_all, size_t row_bytes,
                                         const int8_t* __restrict__ xq,
                                         const XChunk* __restrict__ xmeta, int rows, int n,
                                         int k, int r0, int n0, int c, int tid) {
        const int chunks = k / 32;
#pragma unroll
        for (int i = 0; i < X_PIECES; ++i) {
            const int p = tid + i * THREADS, r = p / 4, q = p % 4;
            x[i] = r0 + r < rows ? ldg16(xq + (size_t)(r0 + r) * k + c * 32 + 16 * q)
                                 : make_uint4(0, 0, 0, 0);
        }
        if (tid < 32 * WM)
            xm = r0 + tid < rows ? ldg16(xmeta + (size_t)(r0 + tid) * chunks + c)
                                 : make_uint4(0, 0, 0, 0);
        const int b = c / 8, j = c % 8;
#pragma unroll
        for (int i = 0; i < W_PIECES; ++i) {
            const int p = tid + i * THREADS;
            if (p >= QG_COLS * 4) break;
            const int col = min(n0 + p / 4, n - 1), part = p % 4;
            const uint8_t* blk = w_all + (size_t)col * row_bytes;
            if constexpr (F == F_Q4K) {
                blk += (size_t)b * 144;
                w[i][0] = __ldg(reinterpret_cast<const uint2*>(blk + 16 + (j / 2) * 32 + 8 * part));
            } else {
                blk += (size_t)b * 210;
                const int half = j / 4;
                w[i][0] = eight_bytes_at(blk + 64 * half + 8 * part);
                w[i][1] = eight_bytes_at(blk + 64 * half + 32 + 8 * part);
                w[i][2] = eight_bytes_at(blk + 128 + 32 * half + 8 * part);
            }
        }
        if (tid < QG_COLS) {
            const uint8_t* blk = w_all + (size_t)min(n0 + tid, n - 1) * row_bytes;
            if constexpr (F == F_Q4K) {
                head = ldg16(blk + (size_t)b * 144);
            } else {
                blk += (size_t)b * 210;
                // d, and the 4 integer scales of chunks j, j + 1 (bytes 2 (j % 4) .. + 3 of
                // the half's 8).
                head = make_uint4(u16_at(blk + 208), u32_at2(blk + 192 + 8 * (j / 4) + 2 * (j % 4)), 0, 0);
            }
        }
    }

    __device__ __forceinline__ void store(QgemmStage<WM>& s, int c, int tid) const {
#pragma unroll
        for (int i = 0; i < X_PIECES; ++i) {
            const int p = tid + i * THREADS;
            *reinterpret_cast<uint4*>(&s.x[p / 4][16 * (p % 4)]) = x[i];
        }
        if (tid < 32 * WM) *reinterpret_cast<uint4*>(&s.xm[tid][0]) = xm;
        const int j = c % 8;
#pragma unroll
        for (int i = 0; i < W_PIECES; ++i) {
            const int p = tid + i * THREADS;
            if (p >= QG_COLS * 4) break;
            const int col = p / 4, part = p % 4;
            uint2 lo, hi;
            if constexpr (F == F_Q4K) {
                lo = make_uint2(w[i][0].x & 0x0F0F0F0Fu, w[i][0].y & 0x0F0F0F0Fu);
                hi = make_uint2((w[i][0].x >> 4) & 0x0F0F0F0Fu, (w[i][0].y >> 4) & 0x0F0F0F0Fu);
            } else {
                // Chunk j is quarter q = j % 4 (even) of its half, j + 1 quarter q + 1: the low
                // (q < 2) or high nibbles of the first and second 32 ql bytes, and bit pairs q
                // and q + 1 of the qh bytes.
                const int q = j % 4, lsh = 4 * (q >> 1);
                const uint2 l0 = w[i][0], l1 = w[i][1], h = w[i][2];
                lo = make_uint2(((l0.x >> lsh) & 0x0F0F0F0Fu) | (((h.x >> (2 * q)) & 0x03030303u) << 4),
                                ((l0.y >> lsh) & 0x0F0F0F0Fu) | (((h.y >> (2 * q)) & 0x03030303u) << 4));
                hi = make_uint2(((l1.x >> lsh) & 0x0F0F0F0Fu) | (((h.x >> (2 * q + 2)) & 0x03030303u) << 4),
                                ((l1.y >> lsh) & 0x0F0F0F0Fu) | (((h.y >> (2 * q + 2)) & 0x03030303u) << 4));
            }
            *reinterpret_cast<uint2*>(&s.w[col][8 * part]) = lo;
            *reinterpret_cast<uint2*>(&s.w[col][32 + 8 * part]) = hi;
        }
        if (tid < QG_COLS) {
            if constexpr (F == F_Q4K) {
                const float2 dd = q4k_d_dmin(head);
                float s0, m0, s1, m1;
                q4k_scale_min(head, dd, j, s0, m0);
                q4k_scale_min(head, dd, j + 1, s1, m1);
                s.ws[tid] = make_float4(s0, m0, s1, m1);
            } else {
                s.ws[tid] = make_float4(
                    __half2float(__ushort_as_half((uint16_t)head.x)), __int_as_float((int)head.y), 0.f, 0.f);
            }
        }
    }
};

// Output o = 8 mt + 4 nt + e of a lane (g, t) of warp (wm, wn): its row and column in the tile
// (the m16n8 accumulator layout: e / 2 picks row g or g + 8, e % 2 column 2t or 2t + 1).
__device__ __forceinline__ int qgemm_row(int wm, int mt, int g, int e) {
    return 32 * wm + 16 * mt + g + 8 * (e / 2);
}
__device__ __forceinline__ int qgemm_col(int wn, int nt, int t, int e) {
    return 16 * wn + 8 * nt + 2 * t + e % 2;
}

// One output's term for chunk h (0, 1) of the pair from its integer sums (i1: Q6_K's second
// half), the column's staged scales and the row's chunk.
template <int F>
__device__ __forceinline__ float qgemm_term(int h, int i0, int i1, float4 ws, XChunk xc) {
    if constexpr (F == F_Q4K) {
        return h ? q4k_term(ws.z, ws.w, i0, xc) : q4k_term(ws.x, ws.y, i0, xc);
    } else {
        const uint32_t sc = (uint32_t)__float_as_int(ws.y);
        const int s0 = (int8_t)(sc >> (16 * h)), s1 = (int8_t)(sc >> (16 * h + 8));
        const int isum = s0 * (i0 - 32 * xc.sum[0]) + s1 * (i1 - 32 * xc.sum[1]);
        return q6k_term(ws.x, isum, xc.d);
    }
}

template <int F, int WM>
__device__ __forceinline__ void qgemm_body(const uint8_t* __restrict__ w, size_t row_bytes,
                                           const int8_t* __restrict__ xq,
                                           const XChunk* __restrict__ xm, float* __restrict__ y,
                                           const float* __restrict__ bias, int rows, int n, int k,
                                           int ldy) {
    __shared__ QgemmStage<WM> stage[2];
    const int tid = threadIdx.x, lane = tid % WARP, warp = tid / WARP;
    const int g = lane / 4, t = lane % 4;
    const int wm = warp / 2, wn = warp % 2;
    const int n0 = blockIdx.x * QG_COLS, r0 = blockIdx.y * 32 * WM;
    const int chunks = k / 32;
    // Outputs [mt][nt][e]: row 32 wm + 16 mt + g + 8 (e / 2), column 16 wn + 8 nt + 2t + e % 2.
    float total[16], sum0[16], sum1[16];
#pragma unroll
    for (int o = 0; o < 16; ++o) total[o] = sum0[o] = sum1[o] = 0.f;

    QgemmLoad<F, WM> ld;
    int pair = 0, c = 0;  // the stage's chunk pair's first class, and its first chunk
    ld.load(w, row_bytes, xq, xm, rows, n, k, r0, n0, c, tid);
    for (int buf = 0;; buf ^= 1) {
        QgemmStage<WM>& s = stage[buf];
        ld.store(s, c, tid);
        __syncthreads();
        // The next stage: the pair's next chunks, or the next pair of classes.
        int next_pair = pair, next_c = c + DOT_CLASSES;
        if (next_c >= chunks) {
            next_pair = pair + 2;
            next_c = next_pair;
        }
        // (Past class 63 the chunks are all walked: a k of 2,048 or more has chunks there.)
        const bool more = next_pair < DOT_CLASSES && next_c < chunks;
        if (more) ld.load(w, row_bytes, xq, xm, rows, n, k, r0, n0, next_c, tid);
#pragma unroll
        for (int h = 0; h < 2; ++h) {
            int acc[2][2][4], acc1[2][2][4];
#pragma unroll
            for (int mt = 0; mt < 2; ++mt)
#pragma unroll
                for (int nt = 0; nt < 2; ++nt)
#pragma unroll
                    for (int e = 0; e < 4; ++e) acc[mt][nt][e] = acc1[mt][nt][e] = 0;
            if constexpr (F == F_Q4K) {
                uint2 b[2];
#pragma unroll
                for (int nt = 0; nt < 2; ++nt)
                    b[nt] = *reinterpret_cast<const uint2*>(&s.w[16 * wn + 8 * nt + g][32 * h + 8 * t]);
#pragma unroll
                for (int mt = 0; mt < 2; ++mt) {
                    const int rb = 32 * wm + 16 * mt;
                    const uint2 a = *reinterpret_cast<const uint2*>(&s.x[rb + g][32 * h + 8 * t]);
                    const uint2 a8 = *reinterpret_cast<const uint2*>(&s.x[rb + g + 8][32 * h + 8 * t]);
#pragma unroll
                    for (int nt = 0; nt < 2; ++nt)
                        mma_s8_k32(acc[mt][nt], a.x, a8.x, a.y, a8.y, b[nt].x, b[nt].y);
                }
            } else {
                // Q6_K: each 16-value half of the chunk has its own integer scale.
#pragma unroll
                for (int hh = 0; hh < 2; ++hh) {
                    const int off = 32 * h + 16 * hh + 4 * t;
                    uint32_t b[2];
#pragma unroll
                    for (int nt = 0; nt < 2; ++nt)
                        b[nt] = *reinterpret_cast<const uint32_t*>(&s.w[16 * wn + 8 * nt + g][off]);
#pragma unroll
                    for (int mt = 0; mt < 2; ++mt) {
                        const int rb = 32 * wm + 16 * mt;
                        const uint32_t a = *reinterpret_cast<const uint32_t*>(&s.x[rb + g][off]);
                        const uint32_t a8 = *reinterpret_cast<const uint32_t*>(&s.x[rb + g + 8][off]);
#pragma unroll
                        for (int nt = 0; nt < 2; ++nt)
                            mma_s8_k16(hh ? acc1[mt][nt] : acc[mt][nt], a, a8, b[nt]);
                    }
                }
            }
#pragma unroll
            for (int mt = 0; mt < 2; ++mt) {
#pragma unroll
                for (int nt = 0; nt < 2; ++nt) {
#pragma unroll
                    for (int e = 0; e < 4; ++e) {
                        const int row = qgemm_row(wm, mt, g, e), col = qgemm_col(wn, nt, t, e);
                        const float term = qgemm_term<F>(h, acc[mt][nt][e], acc1[mt][nt][e],
                                                         s.ws[col], s.xm[row][h]);
                        const int o = mt * 8 + nt * 4 + e;
                        if (h) sum1[o] = __fadd_rn(sum1[o], term);
                        else sum0[o] = __fadd_rn(sum0[o], term);
                    }
                }
            }
        }
        if (!more || next_pair != pair) {
            // Classes `pair` and `pair + 1` are summed: into the total, in class order.
#pragma unroll
            for (int o = 0; o < 16; ++o) {
                total[o] = __fadd_rn(__fadd_rn(total[o], sum0[o]), sum1[o]);
                sum0[o] = sum1[o] = 0.f;
            }
        }
        if (!more) break;
        pair = next_pair;
        c = next_c;
    }
    // Classes past the last chunk (k < 2048) hold nothing. The other kernels add their zero
    // sums; that changes no bits here (a total that starts at +0 and only ever has round-to-
    // nearest sums added is never -0, so adding +0 leaves it as it is).
#pragma unroll
    for (int mt = 0; mt < 2; ++mt) {
#pragma unroll
        for (int nt = 0; nt < 2; ++nt) {
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                const int row = r0 + qgemm_row(wm, mt, g, e), col = n0 + qgemm_col(wn, nt, t, e);
                if (row < rows && col < n) {
                    float v = total[mt * 8 + nt * 4 + e];
                    if (bias) v = __fadd_rn(v, bias[col]);
                    y[(size_t)row * ldy + col] = v;
                }
            }
        }
    }
}

// As DOT_KERNEL (qdot.cu): grid ceil(n / 32) x ceil(rows / 32 WM) CTAs of 64 WM threads.
#define QGEMM_KERNEL(FMTNAME, F, WM)                                                                \
    extern "C" __global__ void __launch_bounds__(64 * WM) qgemm_##FMTNAME##_m##WM(                  \
        const uint8_t* __restrict__ w, unsigned long long row_bytes, const int8_t* __restrict__ xq, \
        const XChunk* __restrict__ xm, float* __restrict__ y, const float* __restrict__ bias,      \
        int rows, int n, int k, int ldy) {                                                          \
        cta_columns_then_wait(w, row_bytes, n, QG_COLS);                                            \
        qgemm_body<F, WM>(w, (size_t)row_bytes, xq, xm, y, bias, rows, n, k, ldy);                 \
    }
QGEMM_KERNEL(q4k, F_Q4K, 1)
QGEMM_KERNEL(q4k, F_Q4K, 2)
QGEMM_KERNEL(q6k, F_Q6K, 1)
QGEMM_KERNEL(q6k, F_Q6K, 2)
