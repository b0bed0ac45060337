// The weight formats the product and lookup kernels read: bf16, and GGUF's Q4_K, Q6_K, Q8_0
// and Q5_0 blocks, each decoded eight consecutive weights at a time.
#pragma once
#include "reductions.cuh"

__device__ __forceinline__ float half_at(const uint8_t* p) {
    uint16_t bits = (uint16_t)p[0] | ((uint16_t)p[1] << 8);
    return __half2float(__ushort_as_half(bits));
}

__device__ __forceinline__ uint32_t pack_bf16x2(float lo, float hi) {
    __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
    return *reinterpret_cast<uint32_t*>(&v);
}

// ---- Weight formats. Each decodes the 8 consecutive weights of row `row` starting at column
// `k` (a multiple of 8) into 4 registers of packed bf16 pairs, in column order. `row_bytes` is
// the stride between rows. Values are computed in f32 and rounded once to bf16.

enum Format { F_BF16 = 0, F_Q4K = 1, F_Q6K = 2, F_Q8_0 = 3, F_Q5_0 = 4 };

template <int F> struct Fmt;

template <> struct Fmt<F_BF16> {
    static constexpr int BLOCK = 8, BYTES = 16;
    __device__ __forceinline__ static void load8(const uint8_t* w, size_t row_bytes, int row, int k,
                                                 uint32_t out[4]) {
        const uint4 v = *reinterpret_cast<const uint4*>(w + (size_t)row * row_bytes + (size_t)k * 2);
        out[0] = v.x; out[1] = v.y; out[2] = v.z; out[3] = v.w;
    }
};

// Q4_K: 256 weights in 144 bytes: d f16, dmin f16, scales[12], qs[128].
template <> struct Fmt<F_Q4K> {
    static constexpr int BLOCK = 256, BYTES = 144;
    __device__ __forceinline__ static void load8(const uint8_t* w, size_t row_bytes, int row, int k,
                                                 uint32_t out[4]) {
        const uint8_t* b = w + (size_t)row * row_bytes + (size_t)(k / 256) * 144;
        const int i = k % 256, j = i / 32, within = i % 32;  // sub-block j, offset in it
        const float d = half_at(b), dmin = half_at(b + 2);
        const uint8_t* s = b + 4;
        int sc, m;
        if (j < 4) { sc = s[j] & 63; m = s[j + 4] & 63; }
        else { sc = (s[j + 4] & 0xF) | ((s[j - 4] >> 6) << 4); m = (s[j + 4] >> 4) | ((s[j] >> 6) << 4); }
        const float scale = d * (float)sc, minv = dmin * (float)m;
        const uint2 raw = *reinterpret_cast<const uint2*>(b + 16 + (j / 2) * 32 + within);
        const int shift = (j % 2) * 4;
        float f[8];
#pragma unroll
        for (int t = 0; t < 8; ++t) {
            const uint32_t word = t < 4 ? raw.x : raw.y;
            const int q = (word >> (8 * (t % 4) + shift)) & 0xF;
            f[t] = scale * (float)q - minv;
        }
#pragma unroll
        for (int t = 0; t < 4; ++t) out[t] = pack_bf16x2(f[2 * t], f[2 * t + 1]);
    }
};

// Q6_K: 256 weights in 210 bytes: ql[128], qh[64], scales[16] (i8), d f16.
template <> struct Fmt<F_Q6K> {
    static constexpr int BLOCK = 256, BYTES = 210;
    __device__ __forceinline__ static void load8(const uint8_t* w, size_t row_bytes, int row, int k,
                                                 uint32_t out[4]) {
        const uint8_t* b = w + (size_t)row * row_bytes + (size_t)(k / 256) * 210;
        const int i = k % 256, half = i / 128, quarter = (i % 128) / 32, l0 = i % 32;
        const float d = half_at(b + 208);
        const float scale = d * (float)(int8_t)b[192 + 8 * half + 2 * quarter + l0 / 16];
        const uint8_t* ql = b + 64 * half + 32 * (quarter & 1) + l0;
        const uint8_t* qh = b + 128 + 32 * half + l0;
        const int lshift = (quarter >> 1) * 4, hshift = quarter * 2;
        float f[8];
#pragma unroll
        for (int t = 0; t < 8; ++t) {
            const int q = ((ql[t] >> lshift) & 0xF) | (((qh[t] >> hshift) & 3) << 4);
            f[t] = scale * (float)(q - 32);
        }
#pragma unroll
        for (int t = 0; t < 4; ++t) out[t] = pack_bf16x2(f[2 * t], f[2 * t + 1]);
    }
};

// Q8_0: 32 weights in 34 bytes: d f16, qs[32] (i8).
template <> struct Fmt<F_Q8_0> {
    static constexpr int BLOCK = 32, BYTES = 34;
    __device__ __forceinline__ static void load8(const uint8_t* w, size_t row_bytes, int row, int k,
                                                 uint32_t out[4]) {
        const uint8_t* b = w + (size_t)row * row_bytes + (size_t)(k / 32) * 34;
        const float d = half_at(b);
        const uint8_t* q = b + 2 + k % 32;
        float f[8];
#pragma unroll
        for (int t = 0; t < 8; ++t) f[t] = d * (float)(int8_t)q[t];
#pragma unroll
        for (int t = 0; t < 4; ++t) out[t] = pack_bf16x2(f[2 * t], f[2 * t + 1]);
    }
};

// Q5_0: 32 weights in 22 bytes: d f16, qh u32 (fifth bits), qs[16] (low nibble: weight i,
// high nibble: weight i + 16).
template <> struct Fmt<F_Q5_0> {
    static constexpr int BLOCK = 32, BYTES = 22;
    __device__ __forceinline__ static void load8(const uint8_t* w, size_t row_bytes, int row, int k,
                                                 uint32_t out[4]) {
        const uint8_t* b = w + (size_t)row * row_bytes + (size_t)(k / 32) * 22;
        const float d = half_at(b);
        const uint32_t qh = (uint32_t)b[2] | ((uint32_t)b[3] << 8) | ((uint32_t)b[4] << 16) |
                            ((uint32_t)b[5] << 24);
        const int i0 = k % 32;
        const uint8_t* qs = b + 6 + (i0 % 16);
        const int shift = i0 < 16 ? 0 : 4;
        float f[8];
#pragma unroll
        for (int t = 0; t < 8; ++t) {
            const int q = ((qs[t] >> shift) & 0xF) | (((qh >> (i0 + t)) & 1) << 4);
            f[t] = d * (float)(q - 16);
        }
#pragma unroll
        for (int t = 0; t < 4; ++t) out[t] = pack_bf16x2(f[2 * t], f[2 * t + 1]);
    }
};

// Dispatches a kernel body templated on the format over the run-time format id.
#define FORMAT_SWITCH(fmt, F, ...)                       \
    switch (fmt) {                                       \
        case F_BF16: { constexpr int F = F_BF16; __VA_ARGS__; } break; \
        case F_Q4K: { constexpr int F = F_Q4K; __VA_ARGS__; } break;   \
        case F_Q6K: { constexpr int F = F_Q6K; __VA_ARGS__; } break;   \
        case F_Q8_0: { constexpr int F = F_Q8_0; __VA_ARGS__; } break; \
        case F_Q5_0: { constexpr int F = F_Q5_0; __VA_ARGS__; } break; \
        default: break;                                  \
    }
