// Prefill products `y = x · Wᵀ (+ bias)` for many rows: a tiled GEMM through shared memory that
// adds every output element in exactly the order of the row products (matmul.cu), so that a
// prompt's rows come out bit-identical to the same rows decoded one at a time or verified in a
// batch. Quantized weights are first dequantized to bf16 (`dequantize_rows`, a slice of the
// matrix at a time, into a scratch matrix) with the same decoder the row products use, and the
// GEMM reads the scratch: dequantize-then-GEMM.
//
// The order to keep: in matmul.cu, warp w of 8 accumulates chunks w, w + 8, w + 16, ... (32 k
// each, two m16n8k16 tiles per chunk with the permuted k layout) starting from zero, and the
// eight partial sums are added to zero in warp order, then the bias. Here a CTA owns a 64-row x
// 64-column output tile; each pipeline stage brings 256 k of both operands (eight chunks) into
// shared memory, and warp w takes chunk w of every stage over the whole tile: the same
// per-warp chains, the same final sum. What changes is the traffic: a stage's weights serve 64
// rows, its activations 64 columns, loaded ahead with cp.async while the tensor cores work.
// (GPU run 9 in BENCHMARKS.md also tried the chains one class after another, which needs two
// accumulators per output instead of eight and so allows 128 x 128 tiles: no faster, as each
// warp's smaller part of the tile reads more shared memory per mma.)
#include "mma.cuh"
#include "weight_formats.cuh"

#define GEMM_BM 64
#define GEMM_BN 64
#define GEMM_WARPS 8
// k per stage: one 32-wide chunk per warp.
#define GEMM_BK (32 * GEMM_WARPS)
#define GEMM_STAGES 3
// A tile row's pitch in shared memory, in bf16: 256 k and 32 of padding, so that the two rows
// a quarter-warp reads at once fall on different banks.
#define GEMM_PITCH (GEMM_BK + 32)
#define GEMM_TILE (GEMM_BM * GEMM_PITCH)
// Dynamic shared memory: GEMM_STAGES stages of both operands (221,184 bytes; the final sum
// reuses it). Keep in step with GEMM_SHARED_BYTES in ops.rs.
#define GEMM_SHARED (GEMM_STAGES * 2 * GEMM_TILE * 2)

static_assert(GEMM_BM == GEMM_BN, "both operand tiles share one shape");
static_assert(GEMM_WARPS * GEMM_BM * (GEMM_BN + 1) * 4 <= GEMM_SHARED, "the final sum fits");

// 16 bytes global -> shared without passing through registers; `valid` false writes zeros.
__device__ __forceinline__ void cp_async16(void* dst, const void* src, bool valid) {
    const unsigned s = (unsigned)__cvta_generic_to_shared(dst);
    const int bytes = valid ? 16 : 0;
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(s), "l"(src), "r"(bytes));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N>
__device__ __forceinline__ void cp_async_wait() {
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}

// y[rows, n] (row stride ldy) = x[rows, k] · W[n, k]ᵀ + bias, W bf16 with `ldw` elements per
// row; k a multiple of 32. Grid (ceil(rows / 64), ceil(n / 64)), row tiles fastest so that the
// CTAs sharing a weight tile run together and find it in L2; 256 threads; GEMM_SHARED bytes of
// dynamic shared memory.
extern "C" __global__ void __launch_bounds__(GEMM_WARPS * 32, 1)
    gemm_bf16(const bf16* __restrict__ w, int ldw, const bf16* __restrict__ x,
              float* __restrict__ y, const float* __restrict__ bias, int rows, int n, int k,
              int ldy) {
    grid_dependency();
    extern __shared__ __align__(16) unsigned char shared[];
    bf16* tiles_base = reinterpret_cast<bf16*>(shared);
    const int lane = threadIdx.x % WARP, warp = threadIdx.x / WARP;
    const int g = lane / 4, t = lane % 4;
    const int r0 = blockIdx.x * GEMM_BM, n0 = blockIdx.y * GEMM_BN;
    const int chunks = k / 32;
    const int stages = (chunks + GEMM_WARPS - 1) / GEMM_WARPS;
    const int mtiles = min(GEMM_BM / 16, (rows - r0 + 15) / 16);

    // Stage s into buffer `buf`: activations then weights, 64 rows of 256 k each. Rows past the
    // matrix and k past its end are zeros (activations) or the last row (weights: their
    // results are never written).
    auto load_stage = [&](int s, int buf) {
        bf16* a = tiles_base + buf * 2 * GEMM_TILE;
        bf16* b = a + GEMM_TILE;
        const int kbase = s * GEMM_BK;
        for (int p = threadIdx.x; p < GEMM_BM * (GEMM_BK / 8); p += blockDim.x) {
            const int row = p / (GEMM_BK / 8), col = (p % (GEMM_BK / 8)) * 8;
            const int kk = kbase + col;
            const bool in_k = kk < k;
            const int kc = in_k ? kk : 0;
            const int xr = r0 + row;
            cp_async16(a + row * GEMM_PITCH + col, x + (size_t)min(xr, rows - 1) * k + kc,
                       in_k && xr < rows);
            const int wr = min(n0 + row, n - 1);
            cp_async16(b + row * GEMM_PITCH + col, w + (size_t)wr * ldw + kc, in_k);
        }
    };

    float acc[GEMM_BM / 16][GEMM_BN / 8][4];
#pragma unroll
    for (int m = 0; m < GEMM_BM / 16; ++m)
#pragma unroll
        for (int j = 0; j < GEMM_BN / 8; ++j) acc[m][j][0] = acc[m][j][1] = acc[m][j][2] = acc[m][j][3] = 0.f;

#pragma unroll
    for (int s = 0; s < GEMM_STAGES - 1; ++s) {
        if (s < stages) load_stage(s, s);
        cp_async_commit();
    }
    for (int s = 0; s < stages; ++s) {
        // Stage s has landed, and every warp is done with the buffer the next load refills.
        cp_async_wait<GEMM_STAGES - 2>();
        __syncthreads();
        const int ahead = s + GEMM_STAGES - 1;
        if (ahead < stages) load_stage(ahead, ahead % GEMM_STAGES);
        cp_async_commit();
        if (s * GEMM_WARPS + warp >= chunks) continue;
        // This warp's chunk of the stage: lane (g, t) holds k = 8t .. 8t + 7 of it, as in
        // matmul.cu's load_x8 and Fmt::load8.
        const bf16* a = tiles_base + (s % GEMM_STAGES) * 2 * GEMM_TILE + warp * 32 + t * 8;
        const bf16* b = a + GEMM_TILE;
        uint4 xa[GEMM_BM / 16], xb[GEMM_BM / 16];
#pragma unroll
        for (int m = 0; m < GEMM_BM / 16; ++m) {
            if (m >= mtiles) break;
            xa[m] = *reinterpret_cast<const uint4*>(a + (m * 16 + g) * GEMM_PITCH);
            xb[m] = *reinterpret_cast<const uint4*>(a + (m * 16 + g + 8) * GEMM_PITCH);
        }
#pragma unroll
        for (int j = 0; j < GEMM_BN / 8; ++j) {
            const uint4 wv = *reinterpret_cast<const uint4*>(b + (8 * j + g) * GEMM_PITCH);
#pragma unroll
            for (int m = 0; m < GEMM_BM / 16; ++m) {
                if (m >= mtiles) break;
                mma_bf16(acc[m][j], xa[m].x, xb[m].x, xa[m].y, xb[m].y, wv.x, wv.y);
                mma_bf16(acc[m][j], xa[m].z, xb[m].z, xa[m].w, xb[m].w, wv.z, wv.w);
            }
        }
    }
    cp_async_wait<0>();
    __syncthreads();

    // The warps' partial sums, added in warp order (shared memory reused: [warp][row][col]).
    float* part = reinterpret_cast<float*>(shared);
    constexpr int PP = GEMM_BN + 1;
#pragma unroll
    for (int m = 0; m < GEMM_BM / 16; ++m) {
        if (m >= mtiles) break;
#pragma unroll
        for (int j = 0; j < GEMM_BN / 8; ++j) {
            float* p = part + (warp * GEMM_BM + m * 16 + g) * PP + 8 * j + 2 * t;
            p[0] = acc[m][j][0];
            p[1] = acc[m][j][1];
            p[8 * PP] = acc[m][j][2];
            p[8 * PP + 1] = acc[m][j][3];
        }
    }
    __syncthreads();
    for (int o = threadIdx.x; o < GEMM_BM * GEMM_BN; o += blockDim.x) {
        const int rr = o / GEMM_BN, col = o % GEMM_BN;
        const int row = r0 + rr, nn = n0 + col;
        if (row < rows && nn < n) {
            float s = 0.f;
#pragma unroll
            for (int wi = 0; wi < GEMM_WARPS; ++wi) s += part[(wi * GEMM_BM + rr) * PP + col];
            if (bias) s += bias[nn];
            y[(size_t)row * ldy + nn] = s;
        }
    }
}

template <int F>
__device__ __forceinline__ void dequantize_body(const uint8_t* __restrict__ w, size_t row_bytes,
                                                int n0, int count, int k, bf16* __restrict__ out) {
    const size_t per_row = k / 8, pieces = (size_t)count * per_row;
    for (size_t p = (size_t)blockIdx.x * blockDim.x + threadIdx.x; p < pieces;
         p += (size_t)gridDim.x * blockDim.x) {
        const int r = (int)(p / per_row), kk = (int)(p % per_row) * 8;
        uint32_t v[4];
        Fmt<F>::load8(w, row_bytes, n0 + r, kk, v);
        *reinterpret_cast<uint4*>(out + (size_t)r * k + kk) = make_uint4(v[0], v[1], v[2], v[3]);
    }
}

// Rows [n0, n0 + count) of a weight matrix in format `fmt` as bf16 `out[count, k]`: the values
// the row products compute with (weight_formats.cuh). Grid-stride over 8-weight pieces.
extern "C" __global__ void dequantize_rows(int fmt, const uint8_t* __restrict__ w,
                                           unsigned long long row_bytes, int n0, int count, int k,
                                           bf16* __restrict__ out) {
    grid_dependency();
    FORMAT_SWITCH(fmt, F, dequantize_body<F>(w, (size_t)row_bytes, n0, count, k, out));
}
