"""The frozen target in PyTorch: loading it (a GGUF file through transformers and the `gguf`
package, or a Hugging Face folder) and the one pass training needs from it."""

from __future__ import annotations

import os

import torch

from glide_model import GlideTarget


def load_target(path: str, device: str, dtype=torch.bfloat16):
    """The target model and its tokenizer, frozen, in eval mode. A qwen2 GGUF file is read by
    gguf_torch.py (its blocks dequantized on `device`; the same tensors as transformers' load,
    check_gguf_torch.py) unless SPECD_GGUF_READER=transformers; transformers reads other GGUFs
    (through the `gguf` package) into `dtype`."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if os.path.isfile(os.path.join(path, SAVED_WEIGHTS)):
        return _load_saved(path, device, dtype)
    if os.path.isfile(path) and os.environ.get("SPECD_GGUF_READER", "direct") != "transformers":
        from gguf_torch import load_gguf

        try:
            loaded = load_gguf(path, device, dtype)
        except (Exception, SystemExit) as e:  # a GPU call must not end on it: transformers reads it
            print(f"gguf_torch could not read {path} ({e!r}); transformers reads it", flush=True)
            loaded = None
        if loaded is not None:
            return loaded
    if os.path.isdir(path):
        kwargs = dict(pretrained_model_name_or_path=path)
    else:
        kwargs = dict(pretrained_model_name_or_path=os.path.dirname(os.path.abspath(path)), gguf_file=os.path.basename(path))
    model = AutoModelForCausalLM.from_pretrained(**kwargs, dtype=dtype, attn_implementation="sdpa")
    tokenizer = AutoTokenizer.from_pretrained(**kwargs)
    model.to(device).eval().requires_grad_(False)
    return model, tokenizer


# A target saved by `save_target`: its config, tokenizer and weights in one folder.
SAVED_WEIGHTS = "target.safetensors"


def save_target(model, tokenizer, folder: str) -> None:
    """Saves a loaded target (a dequantized GGUF one included, which transformers will not
    serialize) so that `load_target(folder)` reads it back without dequantizing again."""
    import copy

    from safetensors.torch import save_model

    os.makedirs(folder, exist_ok=True)
    config = copy.deepcopy(model.config)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    save_model(model, os.path.join(folder, SAVED_WEIGHTS))


def _load_saved(folder: str, device: str, dtype):
    from safetensors.torch import load_model
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    config = AutoConfig.from_pretrained(folder)
    config._attn_implementation = "sdpa"
    # Built on the device (random initialization there is quick), then overwritten.
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    load_model(model, os.path.join(folder, SAVED_WEIGHTS), device=device)
    model.to(device).eval().requires_grad_(False)
    return model, AutoTokenizer.from_pretrained(folder)


def target_shapes(model) -> GlideTarget:
    c = model.config
    head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    rope = getattr(c, "rope_parameters", None) or {}
    theta = rope.get("rope_theta", getattr(c, "rope_theta", None))
    return GlideTarget(
        vocab_size=c.vocab_size,
        hidden_size=c.hidden_size,
        num_layers=c.num_hidden_layers,
        num_heads=c.num_attention_heads,
        num_kv_heads=c.num_key_value_heads,
        head_dim=head_dim,
        rope_theta=float(theta),
    )


def layer_kv(cache, layer: int):
    """One layer's cached keys and values, `[B, kv heads, T, head_dim]` (keys rotated)."""
    if hasattr(cache, "layers"):
        return cache.layers[layer].keys, cache.layers[layer].values
    if hasattr(cache, "key_cache"):
        return cache.key_cache[layer], cache.value_cache[layer]
    return cache[layer][0], cache[layer][1]


def head_weight(model) -> torch.Tensor:
    return model.get_output_embeddings().weight


def embed_weight(model) -> torch.Tensor:
    return model.get_input_embeddings().weight


@torch.no_grad()
def target_pass(model, ids: torch.Tensor, layer: int, vocab_ids: torch.Tensor | None = None, hidden: bool = False):
    """Runs the target over `ids` (`[B, T]`, right-padded rows are fine: attention is causal).

    Returns the keys and values target layer `layer` caches, and the target's logits for each
    row, over `vocab_ids` only when given (the draft vocabulary: the target's distribution
    renormalized on it is what the drafter learns); with `hidden`, also the target's final
    hidden state of each row (after its last norm: what its head reads)."""
    out = model.model(input_ids=ids, use_cache=True)
    k, v = layer_kv(out.past_key_values, layer)
    head = head_weight(model)
    h = out.last_hidden_state
    if vocab_ids is None:
        logits = h @ head.T
    else:
        # The draft vocabulary's logits in f32: they are the training labels, and bf16 rounds
        # logits of 20-30 to steps of 0.06-0.125.
        logits = h.float() @ head[vocab_ids].float().T
    return (k, v, logits, h) if hidden else (k, v, logits)
