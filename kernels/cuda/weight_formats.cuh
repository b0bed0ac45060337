// The weight formats the product and lookup kernels read: bf16, and GGUF's Q4_K, Q6_K, Q8_0
// and Q5_0 blocks, each decoded eight consecutive weights at a time.
#pragma once
#include "reductions.cuh"

// The f16 at a 2-byte aligned address, as f32.
__device__ __forceinline__ float half_at(const uint8_t* p) {
    return __half2float(__ushort_as_half(*reinterpret_cast<const uint16_t*>(p)));
}

__device__ __forceinline__ uint32_t pack_bf16x2(float lo, float hi) {
    __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
    return *reinterpret_cast<uint32_t*>(&v);
}

// ---- Weight formats. Each decodes the 8 consecutive weights of row `row` starting at column
// `k` (a multiple of 8) into 4 registers of packed bf16 pairs, in column order. `row_bytes` is
// the stride between rows. Values are computed in f32 and rounded once to bf16.

enum Format { F_BF16 = 0, F_Q4K = 1, F_Q6K = 2, F_Q8_0 = 3, F_Q5_0 = 4 };

template <int F> struct FmtRow;

// Every format: `load8_row(r, k, out)` decodes the 8 weights at column k of the row starting at
// byte r (from global or shared memory: the row-product kernels also decode staged copies), and
// `load8` does the same for row `row` of a matrix at w.
template <int F> struct Fmt : FmtRow<F> {
    __device__ __forceinline__ static void load8(const uint8_t* w, size_t row_bytes, int row, int k,
                                                 uint32_t out[4]) {
        FmtRow<F>::load8_row(w + (size_t)row * row_bytes, k, out);
    }
};

template <> struct FmtRow<F_BF16> {
    static constexpr int BLOCK = 8, BYTES = 16;
    __device__ __forceinline__ static void load8_row(const uint8_t* r, int k, uint32_t out[4]) {
        const uint4 v = *reinterpret_cast<const uint4*>(r + (size_t)k * 2);
        out[0] = v.x; out[1] = v.y; out[2] = v.z; out[3] = v.w;
    }
};

// (float)q for byte i of `bytes` (i a constant), less `bias`: the bits 0x4B0000qq are the float
// 2^23 + q, so subtracting 2^23 + c gives q - c exactly for the small integers the formats
// store, with a byte permute and an add instead of an int-to-float conversion (which issues at a
// quarter of the add's rate and was most of the quantized products' decode time).
__device__ __forceinline__ float byte_minus(uint32_t bytes, int i, float bias) {
    return __int_as_float(__byte_perm(bytes, 0x4B000000u, 0x7440 + i)) - bias;
}
#define TWO_POW_23 8388608.0f

// Two bytes at a 2-byte aligned address (the Q6_K, Q8_0 and Q5_0 blocks are only that aligned).
__device__ __forceinline__ uint32_t u16_at(const uint8_t* p) {
    return *reinterpret_cast<const uint16_t*>(p);
}

// Four bytes at a 2-byte aligned address.
__device__ __forceinline__ uint32_t u32_at2(const uint8_t* p) {
    return u16_at(p) | (u16_at(p + 2) << 16);
}

// Eight bytes at a 2-byte aligned address, as two little-endian words.
__device__ __forceinline__ uint2 eight_bytes_at(const uint8_t* p) {
    return make_uint2(u32_at2(p), u32_at2(p + 4));
}

// A Q4_K block's d and dmin from its 16-byte header `h` (h.x: d and dmin; h.y, h.z, h.w:
// scales bytes 0-3, 4-7 and 8-11).
__device__ __forceinline__ float2 q4k_d_dmin(uint4 h) {
    return make_float2(__half2float(__ushort_as_half((uint16_t)(h.x & 0xFFFF))),
                       __half2float(__ushort_as_half((uint16_t)(h.x >> 16))));
}

// Q4_K sub-block j's scale and min from its block's header `h` and `dd` = q4k_d_dmin(h).
__device__ __forceinline__ void q4k_scale_min(uint4 h, float2 dd, int j, float& scale, float& minv) {
    const float d = dd.x, dmin = dd.y;
    const int sh = 8 * (j % 4);
    int sc, m;
    if (j < 4) {
        sc = (h.y >> sh) & 63;
        m = (h.z >> sh) & 63;
    } else {
        sc = ((h.w >> sh) & 0xF) | (((h.y >> (sh + 6)) & 3) << 4);
        m = ((h.w >> (sh + 4)) & 0xF) | (((h.z >> (sh + 6)) & 3) << 4);
    }
    scale = d * (float)sc;
    minv = dmin * (float)m;
}

// Eight Q4_K weights: the low (shift 0) or high (shift 4) nibbles of `raw`, scaled.
__device__ __forceinline__ void q4k_decode8(uint2 raw, int shift, float scale, float minv,
                                            uint32_t out[4]) {
    const uint32_t q[2] = {(raw.x >> shift) & 0x0F0F0F0Fu, (raw.y >> shift) & 0x0F0F0F0Fu};
    float f[8];
#pragma unroll
    for (int t = 0; t < 8; ++t) f[t] = scale * byte_minus(q[t / 4], t % 4, TWO_POW_23) - minv;
#pragma unroll
    for (int t = 0; t < 4; ++t) out[t] = pack_bf16x2(f[2 * t], f[2 * t + 1]);
}

// Eight Q6_K weights: 4 low bits from `ql` (shifted by lshift), 2 high from `qh` (by hshift),
// less 32, scaled.
__device__ __forceinline__ void q6k_decode8(uint2 ql, uint2 qh, int lshift, int hshift, float scale,
                                            uint32_t out[4]) {
    const uint32_t q[2] = {
        ((ql.x >> lshift) & 0x0F0F0F0Fu) | (((qh.x >> hshift) & 0x03030303u) << 4),
        ((ql.y >> lshift) & 0x0F0F0F0Fu) | (((qh.y >> hshift) & 0x03030303u) << 4)};
    float f[8];
#pragma unroll
    for (int t = 0; t < 8; ++t) f[t] = scale * byte_minus(q[t / 4], t % 4, TWO_POW_23 + 32.0f);
#pragma unroll
    for (int t = 0; t < 4; ++t) out[t] = pack_bf16x2(f[2 * t], f[2 * t + 1]);
}

// Q4_K: 256 weights in 144 bytes: d f16, dmin f16, scales[12], qs[128]. Blocks are 16-byte
// aligned (144 = 9 x 16), so the header is one 16-byte load and a lane's 8 quants one 8-byte
// load.
template <> struct FmtRow<F_Q4K> {
    static constexpr int BLOCK = 256, BYTES = 144;
    __device__ __forceinline__ static void load8_row(const uint8_t* r, int k, uint32_t out[4]) {
        const uint8_t* b = r + (size_t)(k / 256) * 144;
        const int i = k % 256, j = i / 32, within = i % 32;  // sub-block j, offset in it
        const uint4 h = *reinterpret_cast<const uint4*>(b);
        float scale, minv;
        q4k_scale_min(h, q4k_d_dmin(h), j, scale, minv);
        const uint2 raw = *reinterpret_cast<const uint2*>(b + 16 + (j / 2) * 32 + within);
        q4k_decode8(raw, (j % 2) * 4, scale, minv, out);
    }
};

// Q6_K: 256 weights in 210 bytes: ql[128], qh[64], scales[16] (i8), d f16.
template <> struct FmtRow<F_Q6K> {
    static constexpr int BLOCK = 256, BYTES = 210;
    __device__ __forceinline__ static void load8_row(const uint8_t* r, int k, uint32_t out[4]) {
        const uint8_t* b = r + (size_t)(k / 256) * 210;
        const int i = k % 256, half = i / 128, quarter = (i % 128) / 32, l0 = i % 32;
        const float d = half_at(b + 208);
        const float scale = d * (float)(int8_t)b[192 + 8 * half + 2 * quarter + l0 / 16];
        const uint2 ql = eight_bytes_at(b + 64 * half + 32 * (quarter & 1) + l0);
        const uint2 qh = eight_bytes_at(b + 128 + 32 * half + l0);
        q6k_decode8(ql, qh, (quarter >> 1) * 4, quarter * 2, scale, out);
    }
};

// Q8_0: 32 weights in 34 bytes: d f16, qs[32] (i8).
template <> struct FmtRow<F_Q8_0> {
    static constexpr int BLOCK = 32, BYTES = 34;
    __device__ __forceinline__ static void load8_row(const uint8_t* r, int k, uint32_t out[4]) {
        const uint8_t* b = r + (size_t)(k / 32) * 34;
        const float d = half_at(b);
        // Flipping each byte's sign bit maps the i8 value v to the u8 value v + 128.
        const uint2 raw = eight_bytes_at(b + 2 + k % 32);
        const uint32_t q[2] = {raw.x ^ 0x80808080u, raw.y ^ 0x80808080u};
        float f[8];
#pragma unroll
        for (int t = 0; t < 8; ++t) f[t] = d * byte_minus(q[t / 4], t % 4, TWO_POW_23 + 128.0f);
#pragma unroll
        for (int t = 0; t < 4; ++t) out[t] = pack_bf16x2(f[2 * t], f[2 * t + 1]);
    }
};

// Q5_0: 32 weights in 22 bytes: d f16, qh u32 (fifth bits), qs[16] (low nibble: weight i,
// high nibble: weight i + 16).
template <> struct FmtRow<F_Q5_0> {
    static constexpr int BLOCK = 32, BYTES = 22;
    __device__ __forceinline__ static void load8_row(const uint8_t* r, int k, uint32_t out[4]) {
        const uint8_t* b = r + (size_t)(k / 32) * 22;
        const float d = half_at(b);
        const uint32_t qh = u16_at(b + 2) | (u16_at(b + 4) << 16);
        const int i0 = k % 32;
        const uint2 raw = eight_bytes_at(b + 6 + (i0 % 16));
        const int shift = i0 < 16 ? 0 : 4;
        // The fifth bits of weights i0..i0 + 7, each moved to bit 4 of its byte.
        const uint32_t hb = qh >> i0;
        const uint32_t h[2] = {((hb & 1) << 4) | ((hb & 2) << 11) | ((hb & 4) << 18) | ((hb & 8) << 25),
                               ((hb & 16)) | ((hb & 32) << 7) | ((hb & 64) << 14) | ((hb & 128) << 21)};
        const uint32_t q[2] = {((raw.x >> shift) & 0x0F0F0F0Fu) | h[0],
                               ((raw.y >> shift) & 0x0F0F0F0Fu) | h[1]};
        float f[8];
#pragma unroll
        for (int t = 0; t < 8; ++t) f[t] = d * byte_minus(q[t / 4], t % 4, TWO_POW_23 + 16.0f);
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
