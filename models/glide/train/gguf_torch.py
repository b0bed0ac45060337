"""The target's GGUF read straight into PyTorch: its quantized blocks dequantized on the device.

transformers reads a GGUF by parsing its metadata once for the config, once for the tokenizer
and once for the weights, and dequantizes every block in NumPy on one CPU core: 110 s for the
1.5B target on the GPU machine, where each GPU session has 1,800 s. Here the file is parsed
once for the weights and the config (the `gguf` package's reader: tensors are views of the
mapped file) and each matrix's blocks are dequantized on the GPU, in float32 with the same
operations as the `gguf` package's NumPy code (so the same values; `check_gguf_torch.py`
compares them), then cast. The tokenizer still comes from transformers.

Formats: F32, F16, BF16, Q8_0, Q4_K and Q6_K (what the Qwen2.5-Coder GGUFs specd fetches use).
Architectures: qwen2 (the tensor names map one to one onto transformers' Qwen2; no permutation,
as for llama's q and k).
"""

from __future__ import annotations

import numpy as np
import torch

QK_K = 256


def _f16(b: torch.Tensor) -> torch.Tensor:
    """Bytes `[n, 2]` (little-endian) as float32 `[n, 1]`."""
    return b.contiguous().view(torch.float16).float()


def q4_k(blocks: torch.Tensor) -> torch.Tensor:
    """Q4_K blocks `[n, 144]` (uint8): f16 scale d, f16 min scale dmin, 12 bytes of 6-bit scales
    and mins of 8 sub-blocks of 32, 128 bytes of 4-bit values (a 32-byte run holds two
    sub-blocks: low nibbles, then high) → float32 `[n, 256]`."""
    n = blocks.shape[0]
    d, dmin = _f16(blocks[:, 0:2]), _f16(blocks[:, 2:4])
    s = blocks[:, 4:16].to(torch.int32)
    sc = torch.cat([s[:, 0:4] & 63, (s[:, 8:12] & 15) | ((s[:, 0:4] >> 6) << 4)], dim=1)
    mn = torch.cat([s[:, 4:8] & 63, (s[:, 8:12] >> 4) | ((s[:, 4:8] >> 6) << 4)], dim=1)
    scale = (d * sc.float()).reshape(n, 8, 1)
    low = (dmin * mn.float()).reshape(n, 8, 1)
    q = blocks[:, 16:144].to(torch.int32).reshape(n, 4, 1, 32)
    q = ((q >> torch.tensor([0, 4], device=q.device).reshape(1, 1, 2, 1)) & 15).reshape(n, 8, 32).float()
    return (scale * q - low).reshape(n, QK_K)


def q6_k(blocks: torch.Tensor) -> torch.Tensor:
    """Q6_K blocks `[n, 210]` (uint8): 128 bytes of low 4 bits, 64 bytes of high 2 bits, 16
    int8 scales of sub-blocks of 16, an f16 scale d → float32 `[n, 256]`."""
    n = blocks.shape[0]
    dev = blocks.device
    ql = blocks[:, 0:128].to(torch.int32).reshape(n, 2, 1, 64)
    qh = blocks[:, 128:192].to(torch.int32).reshape(n, 2, 1, 32)
    scales = blocks[:, 192:208].contiguous().view(torch.int8).float()
    d = _f16(blocks[:, 208:210])
    ql = ((ql >> torch.tensor([0, 4], device=dev).reshape(1, 1, 2, 1)) & 15).reshape(n, 8, 32)
    qh = ((qh >> torch.tensor([0, 2, 4, 6], device=dev).reshape(1, 1, 4, 1)) & 3).reshape(n, 8, 32)
    q = ((ql | (qh << 4)) - 32).reshape(n, QK_K // 16, 16).float()
    return ((d * scales).reshape(n, QK_K // 16, 1) * q).reshape(n, QK_K)


def q8_0(blocks: torch.Tensor) -> torch.Tensor:
    """Q8_0 blocks `[n, 34]`: an f16 scale, 32 int8 values → float32 `[n, 32]`."""
    return _f16(blocks[:, 0:2]) * blocks[:, 2:34].contiguous().view(torch.int8).float()


# name → (weights per block, bytes per block, dequantizer)
BLOCKS = {"Q4_K": (QK_K, 144, q4_k), "Q6_K": (QK_K, 210, q6_k), "Q8_0": (32, 34, q8_0)}


def dequantize(tensor, device: str) -> torch.Tensor:
    """A `gguf.ReaderTensor` as float32 on `device`, in transformers' shape (rows, columns)."""
    kind = tensor.tensor_type.name
    shape = [int(x) for x in reversed(tensor.shape)]  # GGUF lists the fastest dimension first
    raw = torch.from_numpy(np.array(tensor.data))  # a copy: the reader's views are read-only
    if kind in ("F32", "F16", "BF16"):
        if kind == "BF16":
            raw = raw.view(torch.int16).view(torch.bfloat16)
        return raw.to(device).float().reshape(shape)
    if kind not in BLOCKS:
        raise SystemExit(f"{tensor.name}: GGUF type {kind} is not read here (only F32, F16, BF16, {', '.join(BLOCKS)})")
    per, nbytes, fn = BLOCKS[kind]
    blocks = raw.to(device).reshape(-1, nbytes)
    return fn(blocks).reshape(shape)


def _field(reader, key: str):
    f = reader.fields[key]
    value = f.parts[f.data[0]]
    if f.types and f.types[0].name == "STRING":
        return bytes(value).decode()
    return value.tolist()[0]


# GGUF name (after "blk.N.") → transformers' Qwen2 name (after "model.layers.N.").
LAYER_NAMES = {
    "attn_norm.weight": "input_layernorm.weight",
    "attn_q.weight": "self_attn.q_proj.weight",
    "attn_q.bias": "self_attn.q_proj.bias",
    "attn_k.weight": "self_attn.k_proj.weight",
    "attn_k.bias": "self_attn.k_proj.bias",
    "attn_v.weight": "self_attn.v_proj.weight",
    "attn_v.bias": "self_attn.v_proj.bias",
    "attn_output.weight": "self_attn.o_proj.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
    "ffn_gate.weight": "mlp.gate_proj.weight",
    "ffn_up.weight": "mlp.up_proj.weight",
    "ffn_down.weight": "mlp.down_proj.weight",
}
TOP_NAMES = {"token_embd.weight": "model.embed_tokens.weight", "output_norm.weight": "model.norm.weight", "output.weight": "lm_head.weight"}


def hf_name(gguf_name: str) -> str:
    if gguf_name in TOP_NAMES:
        return TOP_NAMES[gguf_name]
    blk, layer, rest = gguf_name.split(".", 2)
    if blk != "blk" or rest not in LAYER_NAMES:
        raise SystemExit(f"GGUF tensor {gguf_name}: no Qwen2 name known for it")
    return f"model.layers.{layer}.{LAYER_NAMES[rest]}"


def load_gguf(path: str, device: str, dtype=torch.bfloat16):
    """A qwen2 GGUF as a frozen transformers Qwen2ForCausalLM on `device` and its tokenizer
    (None for another architecture: transformers reads those)."""
    import os

    from gguf import GGUFReader
    from transformers import AutoModelForCausalLM, AutoTokenizer, Qwen2Config

    reader = GGUFReader(path)
    arch = _field(reader, "general.architecture")
    if arch != "qwen2":
        return None
    names = {t.name for t in reader.tensors}
    vocab = next(int(t.shape[1]) for t in reader.tensors if t.name == "token_embd.weight")
    tokenizer = AutoTokenizer.from_pretrained(os.path.dirname(os.path.abspath(path)), gguf_file=os.path.basename(path))
    config = Qwen2Config(
        vocab_size=vocab,
        hidden_size=_field(reader, "qwen2.embedding_length"),
        intermediate_size=_field(reader, "qwen2.feed_forward_length"),
        num_hidden_layers=_field(reader, "qwen2.block_count"),
        num_attention_heads=_field(reader, "qwen2.attention.head_count"),
        num_key_value_heads=_field(reader, "qwen2.attention.head_count_kv"),
        max_position_embeddings=_field(reader, "qwen2.context_length"),
        rms_norm_eps=_field(reader, "qwen2.attention.layer_norm_rms_epsilon"),
        rope_theta=_field(reader, "qwen2.rope.freq_base"),
        tie_word_embeddings="output.weight" not in names,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    config._attn_implementation = "sdpa"
    # Built by transformers in `dtype` (as `from_pretrained` builds it: the rotary embedding's
    # frequencies stay float32, which `.to(dtype)` would round), on the device.
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    state = {hf_name(t.name): dequantize(t, device).to(dtype) for t in reader.tensors}
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [m for m in missing if not (config.tie_word_embeddings and m == "lm_head.weight")]
    if missing or unexpected:
        raise SystemExit(f"{path}: tensors missing {missing[:4]}, unexpected {unexpected[:4]}")
    model.eval().requires_grad_(False)
    return model, tokenizer
