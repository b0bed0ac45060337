// The products of qdot.cu on the tensor cores, for many rows (verification batches, prefill),
// in the same order of additions (q8.cuh).
#include "q8.cuh"

// The weights are the
// mma's A operand (16 output columns a CTA, in the rows of A) and 8 activation rows its B, so
// that a chunk's 32 products of 16 columns by 8 rows are one instruction and only the f32
// scaling is per output. Warp w of 8 takes chunks c ≡ w (mod 8), keeping the sums of its eight
// classes (w, w + 8, ..., w + 56) apart, and the 64 classes' sums meet in class order through
// shared memory. Within a lane's 8 k-slots of a chunk the weights and activations are taken at
// the same 8 positions (any permutation of k applied to both operands gives the same exact
// integer sum).

// One chunk of one weight column, as a lane of the mma kernel holds it: Q4_K's 8 quants at k
// 8t .. 8t + 7 with the sub-block's scale and min (q4k_chunk_quants, q4k_chunk_scale); Q6_K's
// 6-bit values at k 4t .. 4t + 3 and 16 + 4t .. 16 + 4t + 3 (one k16 mma per 16-weight half)
// with the halves' integer scales and d (col_chunk).
struct ColChunk {
    uint32_t v[2];
    float scale, minv;  // Q4_K; Q6_K: d, 0
    int sc[2];          // Q6_K
};

template <int F> __device__ __forceinline__ ColChunk col_chunk(const uint8_t* col, int c, int t);
template <> __device__ __forceinline__ ColChunk col_chunk<F_Q6K>(const uint8_t* col, int c, int t) {
    const uint8_t* blk = col + (size_t)(c / 8) * 210;
    const int j = c % 8, half = j / 4, q = j % 4;
    const uint8_t* ql = blk + 64 * half + 32 * (q & 1) + 4 * t;
    const uint8_t* qh = blk + 128 + 32 * half + 4 * t;
    const int lsh = 4 * (q >> 1), hsh = 2 * q;
    ColChunk o;
#pragma unroll
    for (int h = 0; h < 2; ++h) {
        const uint32_t l = u32_at2(ql + 16 * h), hb = u32_at2(qh + 16 * h);
        o.v[h] = ((l >> lsh) & 0x0F0F0F0Fu) | (((hb >> hsh) & 0x03030303u) << 4);
        o.sc[h] = (int8_t)blk[192 + 8 * half + 2 * q + h];
    }
    o.scale = half_at(blk + 208);
    o.minv = 0.f;
    return o;
}

// A Q4_K chunk's sub-block scale and min, and a lane's 8 quants of it (k 8t .. 8t + 7): the
// mma kernel decodes the header for one chunk a lane and shares it within the quad.
__device__ __forceinline__ void q4k_chunk_scale(const uint8_t* col, int c, float& scale,
                                                float& minv) {
    const uint4 head = ldg16(col + (size_t)(c / 8) * 144);
    q4k_scale_min(head, q4k_d_dmin(head), c % 8, scale, minv);
}
__device__ __forceinline__ void q4k_chunk_quants(const uint8_t* col, int c, int t, ColChunk& o) {
    const uint8_t* blk = col + (size_t)(c / 8) * 144;
    const int j = c % 8;
    const uint2 raw = __ldg(reinterpret_cast<const uint2*>(blk + 16 + (j / 2) * 32 + 8 * t));
    const int sh = (j % 2) * 4;
    o.v[0] = (raw.x >> sh) & 0x0F0F0F0Fu;
    o.v[1] = (raw.y >> sh) & 0x0F0F0F0Fu;
    o.sc[0] = o.sc[1] = 0;
}

// One output's chunk term from its mma results (`i0`, and `i1` for Q6_K's second half) and the
// row's chunk of activations.
template <int F>
__device__ __forceinline__ float chunk_term(int i0, int i1, const ColChunk& w, XChunk xc) {
    if constexpr (F == F_Q4K) return q4k_term(w.scale, w.minv, i0, xc);
    const int isum = w.sc[0] * (i0 - 32 * xc.sum[0]) + w.sc[1] * (i1 - 32 * xc.sum[1]);
    return q6k_term(w.scale, isum, xc.d);
}

#define MDOT_COLS 16

// RT tiles of 8 rows a pass over the weights.
template <int F, int RT>
__device__ __forceinline__ void mdot_body(const uint8_t* __restrict__ w, size_t row_bytes,
                                          const int8_t* __restrict__ xq,
                                          const XChunk* __restrict__ xm, float* __restrict__ y,
                                          const float* __restrict__ bias, int rows, int n, int k,
                                          int ldy) {
    __shared__ float table[DOT_CLASSES][MDOT_COLS][8 + 1];
    const int lane = threadIdx.x % WARP, warp = (threadIdx.x / WARP) % 8;
    const int g = lane / 4, t = lane % 4;
    const int n0 = blockIdx.x * MDOT_COLS;
    const int chunks = k / 32;
    // The last tile may hang over the matrix: its extra columns repeat the last one and are
    // never written.
    const uint8_t* col_a = w + (size_t)min(n0 + g, n - 1) * row_bytes;
    const uint8_t* col_b = w + (size_t)min(n0 + g + 8, n - 1) * row_bytes;
    constexpr int SLOTS = DOT_CLASSES / 8;
    // The grid's y dimension splits the rows: CTA (x, y) takes passes y, y + gridDim.y, ...
    for (int r0 = 8 * RT * blockIdx.y; r0 < rows; r0 += 8 * RT * gridDim.y) {
        // [row tile][output: (col g, row 2t), (g, 2t + 1), (g + 8, 2t), (g + 8, 2t + 1)][class]
        float part[RT][4][SLOTS];
#pragma unroll
        for (int rt = 0; rt < RT; ++rt)
#pragma unroll
            for (int e = 0; e < 4; ++e)
#pragma unroll
                for (int i = 0; i < SLOTS; ++i) part[rt][e][i] = 0.f;
        for (int c0 = warp; c0 < chunks; c0 += DOT_CLASSES) {
#pragma unroll
            for (int i0 = 0; i0 < SLOTS; i0 += 4) {
                if (c0 + 8 * i0 >= chunks) break;
                // Q4_K: lane t decodes the scales of chunk c0 + 8 (i0 + t) for its two columns.
                float qsa = 0.f, qma = 0.f, qsb = 0.f, qmb = 0.f;
                if constexpr (F == F_Q4K) {
                    const int cq = min(c0 + 8 * (i0 + t), chunks - 1);
                    q4k_chunk_scale(col_a, cq, qsa, qma);
                    q4k_chunk_scale(col_b, cq, qsb, qmb);
                }
#pragma unroll
                for (int i = i0; i < i0 + 4; ++i) {
                    const int c = c0 + 8 * i;  // class warp + 8i
                    if (c >= chunks) break;
                    ColChunk wa, wb;
                    if constexpr (F == F_Q4K) {
                        const int src = (lane & ~3) | (i - i0);
                        q4k_chunk_quants(col_a, c, t, wa);
                        q4k_chunk_quants(col_b, c, t, wb);
                        wa.scale = __shfl_sync(0xffffffffu, qsa, src);
                        wa.minv = __shfl_sync(0xffffffffu, qma, src);
                        wb.scale = __shfl_sync(0xffffffffu, qsb, src);
                        wb.minv = __shfl_sync(0xffffffffu, qmb, src);
                    } else {
                        wa = col_chunk<F>(col_a, c, t);
                        wb = col_chunk<F>(col_b, c, t);
                    }
#pragma unroll
                    for (int rt = 0; rt < RT; ++rt) {
                        const int rbase = r0 + rt * 8;
                        if (rbase >= rows) break;
                        const int xrow = rbase + g;
                        int acc[4] = {0, 0, 0, 0}, acc2[4] = {0, 0, 0, 0};
                        if constexpr (F == F_Q4K) {
                            uint2 xv = make_uint2(0, 0);
                            if (xrow < rows)
                                xv = __ldg(reinterpret_cast<const uint2*>(xq + (size_t)xrow * k + c * 32 + 8 * t));
                            mma_s8_k32(acc, wa.v[0], wb.v[0], wa.v[1], wb.v[1], xv.x, xv.y);
                        } else {
                            uint32_t x0 = 0, x1 = 0;
                            if (xrow < rows) {
                                const int8_t* xp = xq + (size_t)xrow * k + c * 32 + 4 * t;
                                x0 = __ldg(reinterpret_cast<const uint32_t*>(xp));
                                x1 = __ldg(reinterpret_cast<const uint32_t*>(xp + 16));
                            }
                            mma_s8_k16(acc, wa.v[0], wb.v[0], x0);
                            mma_s8_k16(acc2, wa.v[1], wb.v[1], x1);
                        }
                        const int ra = rbase + 2 * t;
                        const XChunk none = {0.f, {0, 0}};
                        const XChunk xa = ra < rows ? xm[(size_t)ra * chunks + c] : none;
                        const XChunk xb = ra + 1 < rows ? xm[(size_t)(ra + 1) * chunks + c] : none;
                        part[rt][0][i] = __fadd_rn(part[rt][0][i], chunk_term<F>(acc[0], acc2[0], wa, xa));
                        part[rt][1][i] = __fadd_rn(part[rt][1][i], chunk_term<F>(acc[1], acc2[1], wa, xb));
                        part[rt][2][i] = __fadd_rn(part[rt][2][i], chunk_term<F>(acc[2], acc2[2], wb, xa));
                        part[rt][3][i] = __fadd_rn(part[rt][3][i], chunk_term<F>(acc[3], acc2[3], wb, xb));
                    }
                }
            }
        }
        // Each row tile's outputs: the 64 classes' sums in class order, then the bias.
#pragma unroll
        for (int rt = 0; rt < RT; ++rt) {
            const int rbase = r0 + rt * 8;
            if (rbase >= rows) break;
#pragma unroll
            for (int i = 0; i < SLOTS; ++i) {
                float(*cls)[8 + 1] = table[warp + 8 * i];
                cls[g][2 * t] = part[rt][0][i];
                cls[g][2 * t + 1] = part[rt][1][i];
                cls[g + 8][2 * t] = part[rt][2][i];
                cls[g + 8][2 * t + 1] = part[rt][3][i];
            }
            __syncthreads();
            if (threadIdx.x < MDOT_COLS * 8) {
                const int col = threadIdx.x / 8, r = threadIdx.x % 8;
                const int nn = n0 + col, row = rbase + r;
                if (nn < n && row < rows) {
                    float s = 0.f;
#pragma unroll 8
                    for (int p = 0; p < DOT_CLASSES; ++p) s = __fadd_rn(s, table[p][col][r]);
                    if (bias) s = __fadd_rn(s, bias[nn]);
                    y[(size_t)row * ldy + nn] = s;
                }
            }
            __syncthreads();
        }
    }
}

// As DOT_KERNEL, with RT tiles of 8 rows a pass: grid ceil(n / 16) x (up to ceil(rows / 8 RT))
// CTAs of 256 threads.
#define MDOT_KERNEL(FMTNAME, F, RT)                                                                 \
    extern "C" __global__ void __launch_bounds__(256) mdot_##FMTNAME##_t##RT(                      \
        const uint8_t* __restrict__ w, unsigned long long row_bytes, const int8_t* __restrict__ xq, \
        const XChunk* __restrict__ xm, float* __restrict__ y, const float* __restrict__ bias,      \
        int rows, int n, int k, int ldy) {                                                          \
        cta_columns_then_wait(w, row_bytes, n, MDOT_COLS);                                          \
        mdot_body<F, RT>(w, (size_t)row_bytes, xq, xm, y, bias, rows, n, k, ldy);                  \
    }
MDOT_KERNEL(q4k, F_Q4K, 1)
MDOT_KERNEL(q4k, F_Q4K, 2)
MDOT_KERNEL(q6k, F_Q6K, 1)
MDOT_KERNEL(q6k, F_Q6K, 2)
