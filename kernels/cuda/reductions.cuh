// What every kernel uses: the bf16 type, the warp size, the launch dependency, and warp and block
// reductions that add in a fixed order.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <stdint.h>

typedef __nv_bfloat16 bf16;

#define WARP 32

// Programmatic dependent launch (the host launches every kernel with it, unless SPECD_PDL=0):
// wait until the kernel before this one has finished and its writes are visible, then allow the
// next kernel to be scheduled while this one runs. Every kernel calls this as its first
// statement, before any early return, so that the kernels complete in stream order. Without the
// launch attribute both instructions do nothing.
__device__ __forceinline__ void grid_dependency() {
    asm volatile("griddepcontrol.wait;" ::: "memory");
    asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
}

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
    for (int o = WARP / 2; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
    for (int o = WARP / 2; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

// Sum over the whole block in a fixed order (lanes, then warps), so that the result depends only
// on the values, never on timing. `scratch` holds at least blockDim.x / 32 floats.
__device__ __forceinline__ float block_sum(float v, float* scratch) {
    const int lane = threadIdx.x % WARP, warp = threadIdx.x / WARP;
    const int warps = (blockDim.x + WARP - 1) / WARP;
    v = warp_sum(v);
    __syncthreads();
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    float total = 0.f;
    for (int w = 0; w < warps; ++w) total += scratch[w];
    return total;
}
