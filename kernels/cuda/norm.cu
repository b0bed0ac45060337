// Row-wise kernels of the residual stream: RMSNorm with the residual add fused, SwiGLU, and
// gathering rows. One CTA per row; reductions run in a fixed order, so a row's result does not
// depend on the other rows of the launch.
#include "reductions.cuh"

// x[row] += delta[row] (when delta is not null), then out[row] = bf16(x · rsqrt(mean(x²) + eps) · w).
// Grid: one CTA per row (any block size that is a multiple of 32). A thread's first NORM_REGS
// elements stay in registers, and their loads (x, delta, w) are all issued before the
// reduction, so a row costs about one memory latency; wider rows re-read the rest.
#define NORM_REGS 8
extern "C" __global__ void add_rms_norm(float* __restrict__ x, const float* __restrict__ delta,
                                        const float* __restrict__ w, float eps,
                                        bf16* __restrict__ out, int d) {
    grid_dependency();
    __shared__ float scratch[32];
    float* xr = x + (size_t)blockIdx.x * d;
    const float* dr = delta ? delta + (size_t)blockIdx.x * d : nullptr;
    float vals[NORM_REGS], ws[NORM_REGS];
    float ss = 0.f;
#pragma unroll
    for (int j = 0; j < NORM_REGS; ++j) {
        const int i = threadIdx.x + j * blockDim.x;
        vals[j] = 0.f;
        ws[j] = 0.f;
        if (i < d) {
            float v = xr[i];
            if (dr) v += dr[i];
            vals[j] = v;
            ws[j] = w[i];
        }
    }
#pragma unroll
    for (int j = 0; j < NORM_REGS; ++j) {
        const int i = threadIdx.x + j * blockDim.x;
        if (i < d) {
            if (dr) xr[i] = vals[j];
            ss += vals[j] * vals[j];
        }
    }
    for (int i = threadIdx.x + NORM_REGS * blockDim.x; i < d; i += blockDim.x) {
        float v = xr[i];
        if (dr) {
            v += dr[i];
            xr[i] = v;
        }
        ss += v * v;
    }
    const float inv = rsqrtf(block_sum(ss, scratch) / (float)d + eps);
    bf16* o = out + (size_t)blockIdx.x * d;
#pragma unroll
    for (int j = 0; j < NORM_REGS; ++j) {
        const int i = threadIdx.x + j * blockDim.x;
        if (i < d) o[i] = __float2bfloat16(vals[j] * inv * ws[j]);
    }
    for (int i = threadIdx.x + NORM_REGS * blockDim.x; i < d; i += blockDim.x)
        o[i] = __float2bfloat16(xr[i] * inv * w[i]);
}

// out[r, i] = bf16(silu(gu[r, i]) · gu[r, inter + i]) for `rows` rows of `2 · inter` values.
extern "C" __global__ void silu_mul(const float* __restrict__ gu, bf16* __restrict__ out,
                                    int inter, int rows) {
    grid_dependency();
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
    grid_dependency();
    const bf16* s = src + (size_t)sel[blockIdx.x] * d;
    bf16* o = dst + (size_t)blockIdx.x * d;
    for (int i = threadIdx.x; i < d; i += blockDim.x) o[i] = s[i];
}
