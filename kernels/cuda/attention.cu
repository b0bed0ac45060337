// Attention of a step's query rows over a paged KV cache, for a ragged batch.
//
// Each query row names its sequence (its block table) and how many cached positions it sees:
// `pos + 1` for causal self-attention (decode, and the k + 1 rows of a verification, each seeing
// the drafts before it), or the target's verified length for a GLIDE drafter's cross-attention
// over the target's cache. GQA: query head h reads kv head h / (n_heads / n_kv).
//
// One CTA of 8 warps per (row, query head, split). A warp takes 32 keys at a time, one key per
// lane for the scores, then all lanes over the head dimensions for the values, with an online
// softmax; the 8 warps' partial results are combined in warp order. 256 positions are one round
// of keys for the 8 warps, so a decode step's latency is one key load and one value load.
//
// Rows that see more than 256 positions are split: into rounds of 256, at most MAX_SPLITS
// splits of equally many whole rounds (the last split shorter), each split's (max, sum, values)
// combined in split order. How a row is split and the order of every sum depend only on the
// row's own range of positions, so a row's output is the same in any batch. Two ways to run the
// same arithmetic: with `gridDim.z` > 1 (few rows: decode and verification), split z of a row is
// its own CTA, writing its partial result to `partials`, and the last CTA of the row to finish
// combines them (counted in `counters` modulo the row's splits, so back at zero after it); with
// `gridDim.z` == 1 (many rows: prefill), one CTA works through the row's splits one after
// another, keeping their partial results in shared memory (so does a row with more splits than
// the grid has, which the host never launches).
#include <float.h>
#include "reductions.cuh"

#define BLOCK_SLOTS 16
#define WARPS 8
#define MAX_HEAD_DIM 256
// Positions one round of the 8 warps covers, and the most splits of a row.
#define SPLIT_ROUND (WARPS * WARP)
#define MAX_SPLITS 16

// How a row's `visible` positions are split: `n` splits of `span` positions (the last shorter).
struct Splits {
    int n, span;
};

__device__ __forceinline__ Splits splits_of(int visible) {
    const int rounds = (visible + SPLIT_ROUND - 1) / SPLIT_ROUND;
    if (rounds <= 1) return {1, max(visible, 0)};
    const int per = (rounds + MAX_SPLITS - 1) / MAX_SPLITS;
    return {(rounds + per - 1) / per, per * SPLIT_ROUND};
}

// Shared memory of one CTA.
struct AttnShared {
    float qs[MAX_HEAD_DIM];
    float wm[WARPS], wl[WARPS];
    float wacc[WARPS][MAX_HEAD_DIM];
    // One CTA working through a row's splits: each split's max, sum and values.
    float sm[MAX_SPLITS], sl[MAX_SPLITS];
    float sv[MAX_SPLITS][MAX_HEAD_DIM];
    bool last;
};

// The 8 warps over positions [lo, hi) of the row (warp w takes lo + 32 w + 256 r, r = 0, 1, ...):
// each warp's running max, sum and values land in sh.wm, sh.wl, sh.wacc.
template <int HD>
__device__ __forceinline__ void attend(AttnShared& sh, int lo, int hi, bf16* const* __restrict__ chunks,
                                       int chunk_blocks, size_t block_elems, int layer,
                                       const int* __restrict__ table, int kv_dim, int kvh,
                                       int head_dim) {
    const int lane = threadIdx.x % WARP, warp = threadIdx.x / WARP;
    constexpr int DPL = (HD > 0 ? HD : MAX_HEAD_DIM) / WARP > 0 ? (HD > 0 ? HD : MAX_HEAD_DIM) / WARP : 1;
    constexpr int KSTEPS = (HD > 0 ? HD : MAX_HEAD_DIM) / 8;
    float acc[DPL];
#pragma unroll
    for (int i = 0; i < DPL; ++i) acc[i] = 0.f;
    float m = -FLT_MAX, l = 0.f;
    for (int base = lo + warp * WARP; base < hi; base += WARPS * WARP) {
        const int p = base + lane;
        float s = -FLT_MAX;
        const bf16* kr = nullptr;
        if (p < hi) {
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
                    d = fmaf(sh.qs[i * 8 + 2 * j], __low2float(pr), d);
                    d = fmaf(sh.qs[i * 8 + 2 * j + 1], __high2float(pr), d);
                }
            }
            s = d;
        }
        const float m_new = fmaxf(m, warp_max(s));
        const float corr = expf(m - m_new);
        const float e = p < hi ? expf(s - m_new) : 0.f;
        l = __fmaf_rn(l, corr, warp_sum(e));
#pragma unroll
        for (int i = 0; i < DPL; ++i) acc[i] *= corr;
        m = m_new;
        // Values: the keys' weights go round the warp, lanes read the head dims, VK keys'
        // loads in flight at a time.
        constexpr int VK = DPL <= 4 ? 16 : 8;
        const int n_here = min(WARP, hi - base);
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
        sh.wm[warp] = m;
        sh.wl[warp] = l;
    }
#pragma unroll
    for (int i = 0; i < DPL; ++i) {
        const int dim = lane + i * WARP;
        if (dim < head_dim) sh.wacc[warp][dim] = acc[i];
    }
    __syncthreads();
}

// The warps' results combined in warp order: the span's max (returned), its sum (`*sum`), and
// each thread's head dims i of its values into `vals[i]` (unnormalized).
__device__ __forceinline__ float combine_warps(const AttnShared& sh, int head_dim, float* sum,
                                               float* vals) {
    float mm = -FLT_MAX;
    for (int w = 0; w < WARPS; ++w) mm = fmaxf(mm, sh.wm[w]);
    float ll = 0.f;
    for (int w = 0; w < WARPS; ++w) ll = __fmaf_rn(sh.wl[w], expf(sh.wm[w] - mm), ll);
    *sum = ll;
    for (int i = threadIdx.x; i < head_dim; i += blockDim.x) {
        float v = 0.f;
        for (int w = 0; w < WARPS; ++w) v = __fmaf_rn(sh.wacc[w][i], expf(sh.wm[w] - mm), v);
        vals[i] = v;
    }
    return mm;
}

// The splits' results combined in split order into the output row. `load(p)` reads a partial
// result (shared memory, or global memory through L2 when other CTAs wrote it).
template <typename Load>
__device__ __forceinline__ void combine_splits(int n, const float* ms, const float* ls, int ml_stride,
                                               const float* vs, int v_stride, int head_dim, Load load,
                                               bf16* __restrict__ o) {
    float mm = -FLT_MAX;
    for (int s = 0; s < n; ++s) mm = fmaxf(mm, load(ms + s * ml_stride));
    float ll = 0.f;
    for (int s = 0; s < n; ++s)
        ll = __fmaf_rn(load(ls + s * ml_stride), expf(load(ms + s * ml_stride) - mm), ll);
    for (int i = threadIdx.x; i < head_dim; i += blockDim.x) {
        float v = 0.f;
        for (int s = 0; s < n; ++s)
            v = __fmaf_rn(load(vs + s * v_stride + i), expf(load(ms + s * ml_stride) - mm), v);
        // No visible position (an empty cross-attention context): zeros, not 0/0.
        o[i] = __float2bfloat16(ll > 0.f ? v / ll : 0.f);
    }
}

template <int HD>
__device__ __forceinline__ void attention_body(
    const float* __restrict__ q, int q_stride, bf16* const* __restrict__ chunks, int chunk_blocks,
    int layer, int n_layers, const int* __restrict__ row_seq, const int* __restrict__ row_kv_len,
    const int* __restrict__ tables, int table_width, int n_heads, int n_kv, int head_dim_rt,
    float scale, int window, float* __restrict__ partials, unsigned* __restrict__ counters,
    bf16* __restrict__ out) {
    const int head_dim = HD > 0 ? HD : head_dim_rt;
    __shared__ AttnShared sh;
    const int row = blockIdx.x, h = blockIdx.y, z = blockIdx.z;
    bf16* o = out + (size_t)row * n_heads * head_dim + (size_t)h * head_dim;
    const int seq = row_seq[row];
    if (seq < 0) {
        if (z == 0)
            for (int i = threadIdx.x; i < head_dim; i += blockDim.x) o[i] = __float2bfloat16(0.f);
        return;
    }
    const int kvh = h / (n_heads / n_kv), kv_dim = n_kv * head_dim;
    const int len = row_kv_len[row];
    const int start = window > 0 ? max(0, len - window) : 0;
    const Splits sp = splits_of(len - start);
    // A CTA per split only where the grid has one for every split of this row.
    const bool one_cta = sp.n == 1 || (int)gridDim.z < sp.n;
    if (one_cta ? z != 0 : z >= sp.n) return;
    const size_t block_elems = (size_t)n_layers * 2 * BLOCK_SLOTS * kv_dim;
    const int* table = tables + (size_t)seq * table_width;
    for (int i = threadIdx.x; i < head_dim; i += blockDim.x)
        sh.qs[i] = q[(size_t)row * q_stride + (size_t)h * head_dim + i] * scale;
    __syncthreads();
    auto span = [&](int s) {
        const int lo = start + s * sp.span;
        attend<HD>(sh, lo, min(len, lo + sp.span), chunks, chunk_blocks, block_elems, layer, table,
                   kv_dim, kvh, head_dim);
    };
    auto shared_load = [](const float* p) { return *p; };
    if (one_cta) {
        // One CTA: the splits one after another (a single one for rows of up to 256 positions).
        for (int s = 0; s < sp.n; ++s) {
            span(s);
            float sum;
            const float mm = combine_warps(sh, head_dim, &sum, sh.sv[s]);
            if (threadIdx.x == 0) {
                sh.sm[s] = mm;
                sh.sl[s] = sum;
            }
            __syncthreads();
        }
        combine_splits(sp.n, sh.sm, sh.sl, 1, &sh.sv[0][0], MAX_HEAD_DIM, head_dim, shared_load, o);
        return;
    }
    // A CTA per split: this one's result into `partials` ([rows][n_heads][MAX_SPLITS][2 +
    // head_dim]: max, sum, values), then the row's last CTA to finish combines them all.
    span(z);
    const size_t stride = 2 + (size_t)head_dim;
    float* mine = partials + (((size_t)row * n_heads + h) * MAX_SPLITS + z) * stride;
    float sum;
    const float mm = combine_warps(sh, head_dim, &sum, mine + 2);
    if (threadIdx.x == 0) {
        mine[0] = mm;
        mine[1] = sum;
    }
    // Every thread's writes visible on the whole GPU before the split counts itself.
    __threadfence();
    __syncthreads();
    if (threadIdx.x == 0) {
        unsigned* c = counters + (size_t)row * n_heads + h;
        // Counts modulo the row's splits: the last one to finish sees n - 1 and leaves the
        // counter back at zero for the next launch.
        sh.last = atomicInc(c, (unsigned)sp.n - 1) == (unsigned)sp.n - 1;
    }
    __syncthreads();
    if (!sh.last) return;
    __threadfence();
    const float* first = partials + ((size_t)row * n_heads + h) * MAX_SPLITS * stride;
    auto global_load = [](const float* p) { return __ldcg(p); };
    combine_splits(sp.n, first, first + 1, (int)stride, first + 2, (int)stride, head_dim, global_load, o);
}

// Before the wait for the kernel before (which writes the step's queries and the newest keys
// and values): ask L2 for the key and value rows this CTA will read, from the step's metadata
// (uploaded by the host before the forward, never written by a kernel). The query heads of a
// KV group share the work. A launch of more than 128 rows (prefill, whose rows overlap one
// another's positions) asks for nothing.
__device__ __forceinline__ void prefetch_kv(bf16* const* __restrict__ chunks, int chunk_blocks, int layer,
                                            int n_layers, const int* __restrict__ row_seq,
                                            const int* __restrict__ row_kv_len,
                                            const int* __restrict__ tables, int table_width,
                                            int n_heads, int n_kv, int head_dim, int window) {
    if (gridDim.x > 128) return;
    const int row = blockIdx.x, h = blockIdx.y, z = blockIdx.z;
    const int seq = row_seq[row];
    if (seq < 0) return;
    const int len = row_kv_len[row];
    const int start = window > 0 ? max(0, len - window) : 0;
    const Splits sp = splits_of(len - start);
    const bool one_cta = sp.n == 1 || (int)gridDim.z < sp.n;
    if (one_cta ? z != 0 : z >= sp.n) return;
    const int lo = one_cta ? start : start + z * sp.span;
    const int hi = one_cta ? len : min(len, lo + sp.span);
    const int group = n_heads / n_kv, kvh = h / group, kv_dim = n_kv * head_dim;
    const size_t block_elems = (size_t)n_layers * 2 * BLOCK_SLOTS * kv_dim;
    const int* table = tables + (size_t)seq * table_width;
    const int lines = (head_dim * 2 + 127) / 128;  // a key or value row, 128-byte lines
    const int per_pos = 2 * lines;
    const int total = (hi - lo) * per_pos;
    for (int i = (h % group) * blockDim.x + threadIdx.x; i < total; i += group * blockDim.x) {
        const int p = lo + i / per_pos, r = i % per_pos;
        const int block = table[p / BLOCK_SLOTS];
        const bf16* b = chunks[block / chunk_blocks] + (size_t)(block % chunk_blocks) * block_elems;
        const bf16* kr = b + ((size_t)(layer * 2 + r / lines) * BLOCK_SLOTS + p % BLOCK_SLOTS) * kv_dim +
                         kvh * head_dim;
        asm volatile("prefetch.global.L2 [%0];" ::"l"(reinterpret_cast<const char*>(kr) + 128 * (r % lines)));
    }
}

// One kernel per head-dimension specialization: paged_attention_64, _128, and paged_attention
// for any other multiple of 8 up to 256. Grid (rows, n_heads, splits), 256 threads; with splits
// > 1, `partials` holds [rows][n_heads][MAX_SPLITS][2 + head_dim] floats and `counters`
// [rows][n_heads] zeros.
#define ATTENTION_KERNEL(NAME, HD)                                                                 \
    extern "C" __global__ void __launch_bounds__(WARPS * WARP) NAME(                              \
        const float* __restrict__ q, int q_stride, bf16* const* __restrict__ chunks,               \
        int chunk_blocks, int layer, int n_layers, const int* __restrict__ row_seq,                \
        const int* __restrict__ row_kv_len, const int* __restrict__ tables, int table_width,       \
        int n_heads, int n_kv, int head_dim, float scale, int window,                              \
        float* __restrict__ partials, unsigned* __restrict__ counters, bf16* __restrict__ out) {    \
        prefetch_kv(chunks, chunk_blocks, layer, n_layers, row_seq, row_kv_len, tables, table_width, \
                    n_heads, n_kv, head_dim, window);                                               \
        grid_dependency();                                                                          \
        attention_body<HD>(q, q_stride, chunks, chunk_blocks, layer, n_layers, row_seq, row_kv_len, \
                           tables, table_width, n_heads, n_kv, head_dim, scale, window, partials,  \
                           counters, out);                                                          \
    }
ATTENTION_KERNEL(paged_attention, 0)
ATTENTION_KERNEL(paged_attention_64, 64)
ATTENTION_KERNEL(paged_attention_128, 128)
