// Rotary embeddings on a step's query and key rows, and the paged KV write.
//
// The KV pool is a set of chunks of blocks; a block holds BLOCK_SLOTS positions of one sequence
// for every layer, laid out [layer][keys | values][slot][n_kv_heads · head_dim] in bf16 (the
// CPU pool's layout, in f32 there). Block b lives in chunk b / chunk_blocks.
#include "reductions.cuh"

#define BLOCK_SLOTS 16

__device__ __forceinline__ bf16* kv_row(bf16* const* chunks, int chunk_blocks, int n_layers,
                                        int kv_dim, int slot, int layer, int which) {
    const int block = slot / BLOCK_SLOTS, s = slot % BLOCK_SLOTS;
    const size_t block_elems = (size_t)n_layers * 2 * BLOCK_SLOTS * kv_dim;
    bf16* base = chunks[block / chunk_blocks] + (size_t)(block % chunk_blocks) * block_elems;
    return base + ((size_t)(layer * 2 + which) * BLOCK_SLOTS + s) * kv_dim;
}

// For each row r of qkv ([rows, q_dim + 2 · kv_dim], f32): rotates the query heads in place and
// the key heads, then stores keys and values (bf16) at pool slot `slot[r]` (a global slot index:
// block id · 16 + offset) for `layer`. Rows whose slot is negative are padding and are skipped.
// `cs` holds (cos, sin) of position p and frequency i at cs[p · half + i]. With `interleaved`
// the rotated pairs are (2i, 2i + 1), otherwise (i, i + half).
// Grid (rows, n_heads + n_kv): a CTA per head of a row, a thread per rotated pair; the CTA of a
// key head also stores that head's values. Each output depends only on its own inputs.
extern "C" __global__ void rope_store_kv(float* __restrict__ qkv, int n_heads, int n_kv,
                                         int head_dim, const float2* __restrict__ cs,
                                         const int* __restrict__ pos, const int* __restrict__ slot,
                                         int interleaved, bf16* const* __restrict__ chunks,
                                         int chunk_blocks, int layer, int n_layers) {
    grid_dependency();
    const int r = blockIdx.x, h = blockIdx.y;
    const int sl = slot[r];
    if (sl < 0) return;
    const int half = head_dim / 2, kv_dim = n_kv * head_dim, q_dim = n_heads * head_dim;
    float* row = qkv + (size_t)r * (q_dim + 2 * kv_dim);
    const float2* c = cs + (size_t)pos[r] * half;
    const bool is_q = h < n_heads;
    float* x = row + (is_q ? h * head_dim : q_dim + (h - n_heads) * head_dim);
    bf16* krow = nullptr;
    if (!is_q) {
        const int off = (h - n_heads) * head_dim;
        krow = kv_row(chunks, chunk_blocks, n_layers, kv_dim, sl, layer, 0) + off;
        bf16* vrow = kv_row(chunks, chunk_blocks, n_layers, kv_dim, sl, layer, 1) + off;
        const float* v = row + q_dim + kv_dim + off;
        for (int i = threadIdx.x; i < head_dim; i += blockDim.x) vrow[i] = __float2bfloat16(v[i]);
    }
    for (int i = threadIdx.x; i < half; i += blockDim.x) {
        const int ia = interleaved ? 2 * i : i, ib = interleaved ? 2 * i + 1 : i + half;
        const float a = x[ia], b = x[ib];
        const float2 t = c[i];
        const float ra = a * t.x - b * t.y, rb = a * t.y + b * t.x;
        if (is_q) {
            x[ia] = ra;
            x[ib] = rb;
        } else {
            krow[ia] = __float2bfloat16(ra);
            krow[ib] = __float2bfloat16(rb);
        }
    }
}
