// Attention of a step's query rows over a paged KV cache, for a ragged batch.
//
// Each query row names its sequence (its block table) and how many cached positions it sees:
// `pos + 1` for causal self-attention (decode, and the k + 1 rows of a verification, each seeing
// the drafts before it), or the target's verified length for a GLIDE drafter's cross-attention
// over the target's cache. GQA: query head h reads kv head h / (n_heads / n_kv).
//
// One CTA per (row, query head), 8 warps. A warp takes 32 keys at a time, one key per lane for
// the scores, then all lanes over the head dimensions for the values, with an online softmax;
// the 8 warps' partial results are combined in warp order. Up to 256 visible positions, each
// warp has one round of keys, so a decode step's latency is one key load and one value load. The order of every sum depends only
// on the row's own length, so a row's output is the same in any batch.
#include <float.h>
#include "reductions.cuh"

#define BLOCK_SLOTS 16
#define WARPS 8
#define MAX_HEAD_DIM 256

// HD: the head dimension when known at compile time (64, 128: loops fully unrolled, so that a
// lane's loads are all in flight at once), 0 for any multiple of 8 up to 256.
template <int HD>
__device__ __forceinline__ void attention_body(
    const float* __restrict__ q, int q_stride, bf16* const* __restrict__ chunks, int chunk_blocks,
    int layer, int n_layers, const int* __restrict__ row_seq, const int* __restrict__ row_kv_len,
    const int* __restrict__ tables, int table_width, int n_heads, int n_kv, int head_dim_rt,
    float scale, int window, bf16* __restrict__ out) {
    const int head_dim = HD > 0 ? HD : head_dim_rt;
    __shared__ float qs[MAX_HEAD_DIM];
    __shared__ float wm[WARPS], wl[WARPS];
    __shared__ float wacc[WARPS][MAX_HEAD_DIM];
    const int row = blockIdx.x, h = blockIdx.y;
    const int lane = threadIdx.x % WARP, warp = threadIdx.x / WARP;
    bf16* o = out + (size_t)row * n_heads * head_dim + (size_t)h * head_dim;
    const int seq = row_seq[row];
    if (seq < 0) {
        for (int i = threadIdx.x; i < head_dim; i += blockDim.x) o[i] = __float2bfloat16(0.f);
        return;
    }
    const int kvh = h / (n_heads / n_kv), kv_dim = n_kv * head_dim;
    const int len = row_kv_len[row];
    const int start = window > 0 ? max(0, len - window) : 0;
    const size_t block_elems = (size_t)n_layers * 2 * BLOCK_SLOTS * kv_dim;
    const int* table = tables + (size_t)seq * table_width;
    for (int i = threadIdx.x; i < head_dim; i += blockDim.x)
        qs[i] = q[(size_t)row * q_stride + (size_t)h * head_dim + i] * scale;
    __syncthreads();

    constexpr int DPL = (HD > 0 ? HD : MAX_HEAD_DIM) / WARP > 0 ? (HD > 0 ? HD : MAX_HEAD_DIM) / WARP : 1;
    constexpr int KSTEPS = (HD > 0 ? HD : MAX_HEAD_DIM) / 8;
    float acc[DPL];
#pragma unroll
    for (int i = 0; i < DPL; ++i) acc[i] = 0.f;
    float m = -FLT_MAX, l = 0.f;
    for (int base = start + warp * WARP; base < len; base += WARPS * WARP) {
        const int p = base + lane;
        float s = -FLT_MAX;
        const bf16* kr = nullptr;
        if (p < len) {
            const int block = table[p / BLOCK_SLOTS];
            const bf16* b = chunks[block / chunk_blocks] + (size_t)(block % chunk_blocks) * block_elems;
            kr = b + ((size_t)(layer * 2) * BLOCK_SLOTS + p % BLOCK_SLOTS) * kv_dim + kvh * head_dim;
            // All of the key's loads first, then the dot product.
            uint4 kv[KSTEPS];
#pragma unroll
            for (int i = 0; i < KSTEPS; ++i)
                if (i * 8 < head_dim) kv[i] = *reinterpret_cast<const uint4*>(kr + i * 8);
            float d = 0.f;
#pragma unroll
            for (int i = 0; i < KSTEPS; ++i) {
                if (i * 8 >= head_dim) break;
                const uint32_t words[4] = {kv[i].x, kv[i].y, kv[i].z, kv[i].w};
#pragma unroll
                for (int j = 0; j < 4; ++j) {
                    const __nv_bfloat162 pr = *reinterpret_cast<const __nv_bfloat162*>(&words[j]);
                    d = fmaf(qs[i * 8 + 2 * j], __low2float(pr), d);
                    d = fmaf(qs[i * 8 + 2 * j + 1], __high2float(pr), d);
                }
            }
            s = d;
        }
        const float m_new = fmaxf(m, warp_max(s));
        const float corr = expf(m - m_new);
        const float e = p < len ? expf(s - m_new) : 0.f;
        l = l * corr + warp_sum(e);
#pragma unroll
        for (int i = 0; i < DPL; ++i) acc[i] *= corr;
        m = m_new;
        // Values: the keys' weights go round the warp, lanes read the head dims, VK keys'
        // loads in flight at a time.
        constexpr int VK = DPL <= 4 ? 16 : 8;
        const int n_here = min(WARP, len - base);
        const unsigned long long vaddr =
            kr ? (unsigned long long)(kr + (size_t)BLOCK_SLOTS * kv_dim) : 0ull;
        for (int j0 = 0; j0 < n_here; j0 += VK) {
            float pj[VK];
            float v[VK][DPL];
#pragma unroll
            for (int jj = 0; jj < VK; ++jj) {
                const int j = j0 + jj;
                pj[jj] = __shfl_sync(0xffffffffu, e, j & 31);
                const bf16* vr = reinterpret_cast<const bf16*>(__shfl_sync(0xffffffffu, vaddr, j & 31));
#pragma unroll
                for (int i = 0; i < DPL; ++i) {
                    const int dim = lane + i * WARP;
                    v[jj][i] = (j < n_here && dim < head_dim) ? __bfloat162float(vr[dim]) : 0.f;
                }
            }
#pragma unroll
            for (int jj = 0; jj < VK; ++jj) {
                if (j0 + jj >= n_here) break;
#pragma unroll
                for (int i = 0; i < DPL; ++i) acc[i] = fmaf(pj[jj], v[jj][i], acc[i]);
            }
        }
    }
    if (lane == 0) {
        wm[warp] = m;
        wl[warp] = l;
    }
#pragma unroll
    for (int i = 0; i < DPL; ++i) {
        const int dim = lane + i * WARP;
        if (dim < head_dim) wacc[warp][dim] = acc[i];
    }
    __syncthreads();
    float mm = -FLT_MAX;
    for (int w = 0; w < WARPS; ++w) mm = fmaxf(mm, wm[w]);
    float ll = 0.f;
    for (int w = 0; w < WARPS; ++w) ll += wl[w] * expf(wm[w] - mm);
    for (int i = threadIdx.x; i < head_dim; i += blockDim.x) {
        float v = 0.f;
        for (int w = 0; w < WARPS; ++w) v += wacc[w][i] * expf(wm[w] - mm);
        // No visible position (an empty cross-attention context): zeros, not 0/0.
        o[i] = __float2bfloat16(ll > 0.f ? v / ll : 0.f);
    }
}

// One kernel per head-dimension specialization: paged_attention_64, _128, and paged_attention
// for any other multiple of 8 up to 256. Grid (rows, n_heads), 256 threads.
#define ATTENTION_KERNEL(NAME, HD)                                                                 \
    extern "C" __global__ void __launch_bounds__(WARPS * WARP) NAME(                              \
        const float* __restrict__ q, int q_stride, bf16* const* __restrict__ chunks,               \
        int chunk_blocks, int layer, int n_layers, const int* __restrict__ row_seq,                \
        const int* __restrict__ row_kv_len, const int* __restrict__ tables, int table_width,       \
        int n_heads, int n_kv, int head_dim, float scale, int window, bf16* __restrict__ out) {     \
        grid_dependency();                                                                          \
        attention_body<HD>(q, q_stride, chunks, chunk_blocks, layer, n_layers, row_seq, row_kv_len, \
                           tables, table_width, n_heads, n_kv, head_dim, scale, window, out);      \
    }
ATTENTION_KERNEL(paged_attention, 0)
ATTENTION_KERNEL(paged_attention_64, 64)
ATTENTION_KERNEL(paged_attention_128, 128)
