// Row-wise kernels of the residual stream: RMSNorm with the residual add fused, SwiGLU, and
// gathering rows. One CTA per row; reductions run in a fixed order, so a row's result does not
// depend on the other rows of the launch.
#include "reductions.cuh"

// x[row] += delta[row] (when delta is not null), then out[row] = bf16(x · rsqrt(mean(x²) + eps) · w).
// Grid: one CTA per row (any block size that is a multiple of 32).
extern "C" __global__ void add_rms_norm(float* __restrict__ x, const float* __restrict__ delta,
                                        const float* __restrict__ w, float eps,
                                        bf16* __restrict__ out, int d) {
    __shared__ float scratch[32];
    float* xr = x + (size_t)blockIdx.x * d;
    const float* dr = delta ? delta + (size_t)blockIdx.x * d : nullptr;
    float ss = 0.f;
    for (int i = threadIdx.x; i < d; i += blockDim.x) {
        float v = xr[i];
        if (dr) {
            v += dr[i];
            xr[i] = v;
        }
        ss += v * v;
    }
    const float inv = rsqrtf(block_sum(ss, scratch) / (float)d + eps);
    bf16* o = out + (size_t)blockIdx.x * d;
    for (int i = threadIdx.x; i < d; i += blockDim.x) o[i] = __float2bfloat16(xr[i] * inv * w[i]);
}

// out[r, i] = bf16(silu(gu[r, i]) · gu[r, inter + i]) for `rows` rows of `2 · inter` values.
extern "C" __global__ void silu_mul(const float* __restrict__ gu, bf16* __restrict__ out,
                                    int inter, int rows) {
    const size_t total = (size_t)rows * inter;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < total;
         i += (size_t)gridDim.x * blockDim.x) {
        const size_t r = i / inter, c = i % inter;
        const float g = gu[r * 2 * inter + c], u = gu[r * 2 * inter + inter + c];
        out[i] = __float2bfloat16(g / (1.f + expf(-g)) * u);
    }
}

// dst[i] = src[sel[i]] for rows of d bf16 values. Grid: one CTA per selected row.
extern "C" __global__ void gather_rows(const bf16* __restrict__ src, const int* __restrict__ sel,
                                       int d, bf16* __restrict__ dst) {
    const bf16* s = src + (size_t)sel[blockIdx.x] * d;
    bf16* o = dst + (size_t)blockIdx.x * d;
    for (int i = threadIdx.x; i < d; i += blockDim.x) o[i] = s[i];
}
