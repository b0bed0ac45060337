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
// next kernel to be scheduled while this one runs. Every kernel calls this before any early
// return and before it reads anything an earlier kernel writes, so that the kernels complete in
// stream order; only prefetches of read-only data (prefetch_then_wait, attention's prefetch_kv)
// come before it. Without the launch attribute both instructions do nothing.
__device__ __forceinline__ void grid_dependency() {
    asm volatile("griddepcontrol.wait;" ::: "memory");
    asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
}

// A weight product's first step, for weights that no kernel writes: ask L2 for this CTA's
// weight bytes [p, p + bytes) (a 128-byte line a thread, every line that holds one of them),
// then wait for the kernel before (grid_dependency). With programmatic dependent launch the
// CTA starts while that kernel still runs, so its weights come from memory in the meantime
// instead of after the wait. Only lines holding the range's own bytes are named, so every
// address lies in the weights' allocation.
__device__ __forceinline__ void prefetch_then_wait(const void* p, size_t bytes) {
    const uintptr_t first = (uintptr_t)p & ~(uintptr_t)127;
    const uintptr_t end = (uintptr_t)p + bytes;
    for (uintptr_t a = first + (uintptr_t)threadIdx.x * 128; a < end; a += (uintptr_t)blockDim.x * 128)
        asm volatile("prefetch.global.L2 [%0];" ::"l"(a));
    grid_dependency();
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
