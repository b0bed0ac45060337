// The 8-bit activations that the products of qdot.cu and qmma.cu read, and the one order of
// additions every one of them keeps, so that a row is bit-identical alone, in a batch and in
// prefill: chunk c of a row (32 weights) contributes
//     Q4_K: term(c) = dx · (scale · Σ q·xq − min · Σ xq)   (one sub-block: its scale and min)
//     Q6_K: term(c) = dx · (d · Σ_h sc_h · Σ (q − 32)·xq)   (two 16-weight halves h)
// with dx, xq the chunk's activation scale and values and the integer sums exact (q4k_term,
// q6k_term); chunk class p (c ≡ p mod 64, DOT_CLASSES) sums its terms from 0 in increasing c,
// and the output is the 64 classes' sums added from 0 in class order, then the bias. Every f32
// operation of the terms and sums is an explicit round-to-nearest intrinsic, so that the
// compiler cannot fuse them differently in two kernels (the weights' scales come from the one
// decoder of weight_formats.cuh that every kernel calls). 64 classes are 8 blocks: a warp of 8
// can take every 8th block and still own whole classes.
#pragma once
#include "mma.cuh"
#include "weight_formats.cuh"

// The 8-bit copy of a row of k activations: k int8 values, then (at the end of all rows'
// values) per 32-value chunk its scale and the sums of its two halves of 16 values.
struct XChunk {
    float d;
    short sum[2];
};

#define DOT_CLASSES 64

// A Q4_K chunk's term from its exact integer sum Σ q·xq, its sub-block's scale and min, and the
// activations' chunk.
__device__ __forceinline__ float q4k_term(float scale, float minv, int isum, XChunk xc) {
    const int xsum = xc.sum[0] + xc.sum[1];
    const float inner =
        __fmaf_rn(scale, __int2float_rn(isum), -__fmul_rn(minv, __int2float_rn(xsum)));
    return __fmul_rn(xc.d, inner);
}

// A Q6_K chunk's term from Σ_h sc_h · Σ (q − 32)·xq (exact), the block's d and the chunk's dx.
__device__ __forceinline__ float q6k_term(float d, int isum, float dx) {
    return __fmul_rn(dx, __fmul_rn(d, __int2float_rn(isum)));
}

// prefetch_then_wait for the `cols` weight columns (rows of W, `row_bytes` each) that CTA
// blockIdx.x of a product takes, clipped to the matrix's n; the CTAs of other grid rows
// (blockIdx.y > 0) read the same weights and only wait.
__device__ __forceinline__ void cta_columns_then_wait(const uint8_t* w, unsigned long long row_bytes,
                                                      int n, int cols) {
    const int c0 = blockIdx.x * cols;
    const int c1 = min(c0 + cols, n);
    if (blockIdx.y == 0 && c1 > c0)
        prefetch_then_wait(w + (size_t)c0 * row_bytes, (size_t)(c1 - c0) * row_bytes);
    else
        grid_dependency();
}

__device__ __forceinline__ uint4 ldg16(const void* p) {
    return __ldg(reinterpret_cast<const uint4*>(p));
}
