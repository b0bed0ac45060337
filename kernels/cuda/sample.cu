// Turning a step's logits into decisions on the device, so that only tokens and counts cross to
// the host: argmax (greedy), greedy acceptance of drafts, softmax with temperature, and
// speculative rejection sampling. Reductions and scans run in a fixed order; the CPU references
// in kernels/src/cpu/sample.rs follow the same order.
#include <float.h>
#include "reductions.cuh"

#define THREADS 1024

// Argmax in two launches, so that a row of 150k logits is read by many SMs at once:
// argmax_partial reduces fixed chunks of ARGMAX_CHUNK logits (grid (chunks, rows), 256 threads)
// to (max, its lowest index, Σ exp(l − max)), and argmax_finish combines a row's chunks in chunk
// order (one warp per row): tok[r] = the index of the largest logit (the lowest on ties), prob[r]
// = its softmax probability 1 / Σ exp(l_i − max). The chunking depends only on the vocabulary,
// so a row's result does not depend on the other rows.
#define ARGMAX_CHUNK 4096
#define ARGMAX_THREADS 256

struct ArgmaxPart {
    float max;
    int index;
    float sum;
    float pad;
};

__device__ __forceinline__ void better(float& best, int& bi, float x, int i) {
    if (x > best || (x == best && i < bi)) { best = x; bi = i; }
}

extern "C" __global__ void __launch_bounds__(ARGMAX_THREADS) argmax_partial(
    const float* __restrict__ logits, int v, int ld, ArgmaxPart* __restrict__ parts) {
    grid_dependency();
    __shared__ float sv[ARGMAX_THREADS / WARP];
    __shared__ int si[ARGMAX_THREADS / WARP];
    __shared__ float scratch[32];
    const int chunk = blockIdx.x, row = blockIdx.y;
    const float* l = logits + (size_t)row * ld;
    const int lo = chunk * ARGMAX_CHUNK, hi = min(v, lo + ARGMAX_CHUNK);
    float vals[ARGMAX_CHUNK / ARGMAX_THREADS];
    float best = -FLT_MAX;
    int bi = 0x7fffffff;
#pragma unroll
    for (int j = 0; j < ARGMAX_CHUNK / ARGMAX_THREADS; ++j) {
        const int i = lo + j * ARGMAX_THREADS + threadIdx.x;
        vals[j] = i < hi ? l[i] : -FLT_MAX;
        if (i < hi) better(best, bi, vals[j], i);
    }
    for (int o = WARP / 2; o > 0; o >>= 1) {
        const float ob = __shfl_xor_sync(0xffffffffu, best, o);
        const int oi = __shfl_xor_sync(0xffffffffu, bi, o);
        better(best, bi, ob, oi);
    }
    const int lane = threadIdx.x % WARP, warp = threadIdx.x / WARP;
    if (lane == 0) { sv[warp] = best; si[warp] = bi; }
    __syncthreads();
    best = sv[0];
    bi = si[0];
    for (int w = 1; w < ARGMAX_THREADS / WARP; ++w) better(best, bi, sv[w], si[w]);
    float sum = 0.f;
#pragma unroll
    for (int j = 0; j < ARGMAX_CHUNK / ARGMAX_THREADS; ++j) {
        const int i = lo + j * ARGMAX_THREADS + threadIdx.x;
        if (i < hi) sum += expf(vals[j] - best);
    }
    sum = block_sum(sum, scratch);
    if (threadIdx.x == 0) parts[(size_t)row * gridDim.x + chunk] = {best, bi, sum, 0.f};
}

// Grid: one warp per row; `chunks` partial results per row.
extern "C" __global__ void argmax_finish(const ArgmaxPart* __restrict__ parts, int chunks,
                                         int* __restrict__ tok, float* __restrict__ prob) {
    grid_dependency();
    const int row = blockIdx.x, lane = threadIdx.x;
    const ArgmaxPart* p = parts + (size_t)row * chunks;
    float best = -FLT_MAX;
    int bi = 0x7fffffff;
    for (int c = lane; c < chunks; c += WARP) better(best, bi, p[c].max, p[c].index);
    for (int o = WARP / 2; o > 0; o >>= 1) {
        const float ob = __shfl_xor_sync(0xffffffffu, best, o);
        const int oi = __shfl_xor_sync(0xffffffffu, bi, o);
        better(best, bi, ob, oi);
    }
    float sum = 0.f;
    for (int c = lane; c < chunks; c += WARP) sum += p[c].sum * expf(p[c].max - best);
    sum = warp_sum(sum);
    if (lane == 0) {
        tok[row] = bi == 0x7fffffff ? 0 : bi;  // every logit NaN: like the CPU, index 0
        prob[row] = 1.f / sum;
    }
}

// out[i] = table[idx[i]] for i < n (one thread each): a drafter's greedy picks, rows of its
// reduced head, turned into the token ids its next forward embeds, on the device, so that a
// round of drafts needs no trip to the host between its forwards.
extern "C" __global__ void lookup_ids(const int* __restrict__ table, const int* __restrict__ idx,
                                      int n, int* __restrict__ out) {
    grid_dependency();
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) out[i] = table[idx[i]];
}

// Greedy acceptance for S sequences (one thread each). Sequence s owns rows
// first[s] .. first[s] + n[s] of both `argmax` (the target's choices) and `ids` (the step's
// input: the last committed token, then the drafts). out[2s] = drafts kept (the longest prefix
// equal to the target's choices), out[2s + 1] = the target's token after them.
extern "C" __global__ void accept_greedy(const int* __restrict__ argmax,
                                         const int* __restrict__ ids,
                                         const int* __restrict__ first, const int* __restrict__ n,
                                         int seqs, int* __restrict__ out) {
    grid_dependency();
    const int s = blockIdx.x * blockDim.x + threadIdx.x;
    if (s >= seqs) return;
    const int f = first[s], rows = n[s];
    int a = 0;
    while (a < rows - 1 && argmax[f + a] == ids[f + a + 1]) ++a;
    out[2 * s] = a;
    out[2 * s + 1] = argmax[f + a];
}

// probs[r] = softmax(logits[r] · inv_temp[r]) (row stride v). One CTA of THREADS threads per
// row. `probs` may be `logits` itself when ld == v: each element is read before it is written,
// by the same thread.
extern "C" __global__ void __launch_bounds__(THREADS) softmax_rows(
    const float* logits, int v, int ld, const float* __restrict__ inv_temps, float* probs) {
    grid_dependency();
    const float inv_temp = inv_temps[blockIdx.x];
    __shared__ float scratch[32];
    __shared__ float red[THREADS / WARP];
    const float* l = logits + (size_t)blockIdx.x * ld;
    float* p = probs + (size_t)blockIdx.x * v;
    float mx = -FLT_MAX;
    for (int i = threadIdx.x; i < v; i += blockDim.x) mx = fmaxf(mx, l[i]);
    mx = warp_max(mx);
    if (threadIdx.x % WARP == 0) red[threadIdx.x / WARP] = mx;
    __syncthreads();
    mx = red[0];
    for (int w = 1; w < (int)(blockDim.x / WARP); ++w) mx = fmaxf(mx, red[w]);
    float s = 0.f;
    for (int i = threadIdx.x; i < v; i += blockDim.x) {
        const float e = expf((l[i] - mx) * inv_temp);
        p[i] = e;
        s += e;
    }
    const float inv = 1.f / block_sum(s, scratch);
    for (int i = threadIdx.x; i < v; i += blockDim.x) p[i] *= inv;
}

// The value at index i of the distribution being drawn from: the residual max(0, p − q) after
// a rejection (q one-hot on `draft` when q is null), or p itself.
struct Dist {
    const float* p;
    const float* q;
    int draft;
    bool residual;
    __device__ __forceinline__ float at(int i) const {
        const float pi = p[i];
        if (!residual) return pi;
        const float qi = q ? q[i] : (i == draft ? 1.f : 0.f);
        return fmaxf(pi - qi, 0.f);
    }
};

// Draws an index from `d` with the uniform u in [0, 1): thread t sums the contiguous segment
// [t · seg, (t + 1) · seg) in index order, thread 0 adds the segment sums in order and walks to
// the segment holding u · total, then through it (as kernels/src/cpu/sample.rs does). Returns
// -1 in every thread when the distribution has no mass.
__device__ int draw(const Dist& d, int v, float u, float* seg_sums) {
    __shared__ int result;
    const int seg = (v + blockDim.x - 1) / blockDim.x;
    const int lo = threadIdx.x * seg, hi = min(v, lo + seg);
    float s = 0.f;
    for (int i = lo; i < hi; ++i) s += d.at(i);
    seg_sums[threadIdx.x] = s;
    __syncthreads();
    if (threadIdx.x == 0) {
        float total = 0.f;
        for (int t = 0; t < (int)blockDim.x; ++t) total += seg_sums[t];
        int chosen = -1;
        if (total > FLT_EPSILON) {
            float r = u * total;
            int last = -1;
            for (int t = 0; t < (int)blockDim.x && chosen < 0; ++t) {
                const int a = t * seg, b = min(v, a + seg);
                if (a >= b) break;
                if (seg_sums[t] > 0.f && r >= seg_sums[t]) {
                    // Skip the whole segment; remember its last positive index.
                    for (int i = b - 1; i >= a; --i)
                        if (d.at(i) > 0.f) { last = i; break; }
                    r -= seg_sums[t];
                    continue;
                }
                for (int i = a; i < b; ++i) {
                    const float x = d.at(i);
                    if (x > 0.f) {
                        last = i;
                        if (r < x) { chosen = i; break; }
                        r -= x;
                    }
                }
            }
            if (chosen < 0) chosen = last;
        }
        result = chosen;
    }
    __syncthreads();
    const int out = result;
    __syncthreads();
    return out;
}

// Speculative rejection sampling for S sequences, one CTA of THREADS threads each. Sequence s
// owns rows first[s] .. first[s] + n[s] of `p` (target probabilities, v per row) and of `ids`
// (last committed token, then n[s] − 1 drafts); its draft distributions are rows
// qrow[s] .. qrow[s] + n[s] − 2 of `q`, or one-hot when qrow[s] < 0. Uniforms (ustride ≥ n[s]
// per sequence): u[s · ustride + i] decides draft i, u[s · ustride + n[s] − 1] draws the token.
// out[2s] = drafts kept, out[2s + 1] = the token drawn after them (from the residual at the
// first rejection, from p after the last draft when all are kept).
extern "C" __global__ void __launch_bounds__(THREADS) rejection_sample(
    const float* __restrict__ p, int v, const float* __restrict__ q,
    const int* __restrict__ ids, const int* __restrict__ first, const int* __restrict__ n,
    const int* __restrict__ qrow, const float* __restrict__ u, int ustride,
    int* __restrict__ out) {
    grid_dependency();
    __shared__ float seg_sums[THREADS];
    const int s = blockIdx.x;
    const int f = first[s], drafts = n[s] - 1;
    const float* us = u + (size_t)s * ustride;
    for (int i = 0; i < drafts; ++i) {
        const int d = ids[f + i + 1];
        const float* pi = p + (size_t)(f + i) * v;
        const float* qi = qrow[s] >= 0 ? q + (size_t)(qrow[s] + i) * v : nullptr;
        const float pd = pi[d];
        const float qd = qi ? qi[d] : 1.f;
        const float keep = qd <= 0.f ? (pd > 0.f ? 1.f : 0.f) : fminf(pd / qd, 1.f);
        if (us[i] >= keep) {
            Dist dist{pi, qi, d, true};
            int tok = draw(dist, v, us[drafts], seg_sums);
            if (tok < 0) {
                Dist plain{pi, nullptr, d, false};
                tok = draw(plain, v, us[drafts], seg_sums);
            }
            if (threadIdx.x == 0) {
                out[2 * s] = i;
                out[2 * s + 1] = tok < 0 ? 0 : tok;
            }
            return;
        }
    }
    Dist last{p + (size_t)(f + drafts) * v, nullptr, -1, false};
    const int tok = draw(last, v, us[drafts], seg_sums);
    if (threadIdx.x == 0) {
        out[2 * s] = drafts;
        out[2 * s + 1] = tok < 0 ? 0 : tok;
    }
}
