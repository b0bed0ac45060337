#!/usr/bin/env python3
"""Generate Hugging Face transformers "golden" fixtures for specd parity tests.

Builds three tiny, deterministic, randomly initialised Llama-family checkpoints
(llama3, mistral, qwen2) in float32 on the CPU, runs a greedy continuation and a
full forward pass with transformers' eager attention, and writes for each model:

    <out>/<name>/config.json          (save_pretrained)
    <out>/<name>/model.safetensors    (save_pretrained, single file, float32)
    <out>/<name>/logits.safetensors   (tensor "logits", [prompt+continuation, vocab], float32)
    <out>/<name>/golden.json          (prompt_ids, continuation_ids, versions, notes)

Usage: python3 make_golden.py OUT_DIR
"""

import os

# CPU only: hide any accelerator before torch is imported.
os.environ["CUDA_VISIBLE_DEVICES"] = ""

import json
import math
import shutil
import sys

REQUIRED_TRANSFORMERS = "5.17.0"
REQUIRED_TORCH_PREFIX = "2.11."

try:
    import torch
    import transformers
except ImportError as exc:  # pragma: no cover
    sys.exit(f"make_golden.py: needs torch {REQUIRED_TORCH_PREFIX}x and transformers {REQUIRED_TRANSFORMERS}: {exc}")

if transformers.__version__ != REQUIRED_TRANSFORMERS or not torch.__version__.startswith(REQUIRED_TORCH_PREFIX):
    sys.exit(
        "make_golden.py: refusing to run: the fixtures are pinned to "
        f"transformers=={REQUIRED_TRANSFORMERS} and torch=={REQUIRED_TORCH_PREFIX}x, "
        f"found transformers=={transformers.__version__} and torch=={torch.__version__}"
    )

from safetensors.torch import load_file, save_file
from transformers import (
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
)

PROMPT_LEN = 12
NEW_TOKENS = 8
VOCAB = 256

COMMON = dict(
    vocab_size=VOCAB,
    hidden_size=64,
    intermediate_size=160,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=16,
    rms_norm_eps=1e-5,
    max_position_embeddings=256,
    hidden_act="silu",
    bos_token_id=None,
    eos_token_id=None,
    pad_token_id=None,
    attn_implementation="eager",
)

# llama3 rope scaling. head_dim 16 with theta 1e4 gives wavelengths
# 2*pi*1e4^(i/8) = 6.28, 19.9, 62.8, 199, ... With original_max_position_embeddings=32,
# high_freq_wavelen = 32/4 = 8 and low_freq_wavelen = 32/1 = 32, so all three branches of
# the llama3 rule are exercised: i=0 kept, i=1 smoothly interpolated, i>=2 divided by factor.
LLAMA3_ROPE = {
    "rope_type": "llama3",
    "rope_theta": 10000.0,
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 32,
}


def make_llama3():
    cfg = LlamaConfig(
        **COMMON,
        tie_word_embeddings=False,
        attention_bias=False,
        mlp_bias=False,
        rope_parameters=dict(LLAMA3_ROPE),
    )
    return LlamaForCausalLM, cfg


def make_mistral():
    cfg = MistralConfig(
        **COMMON,
        tie_word_embeddings=False,
        sliding_window=8,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
    )
    return MistralForCausalLM, cfg


def make_qwen2():
    cfg = Qwen2Config(
        **COMMON,
        tie_word_embeddings=True,
        use_sliding_window=False,
        rope_parameters={"rope_type": "default", "rope_theta": 1000000.0},
    )
    return Qwen2ForCausalLM, cfg


MODELS = [
    ("llama3", 1001, make_llama3),
    ("mistral", 1002, make_mistral),
    ("qwen2", 1003, make_qwen2),
]


def redraw_parameters(model, gen):
    """Replace every parameter with a draw that makes logits far from uniform."""
    with torch.no_grad():
        for name, p in model.named_parameters():  # tied parameters appear once
            noise = torch.randn(p.shape, generator=gen, dtype=torch.float32)
            if name.endswith("norm.weight"):
                p.copy_(1.0 + 0.1 * noise)
            elif name.endswith(".bias"):
                p.copy_(0.1 * noise)
            else:
                p.copy_(0.2 * noise)


def reference_llama3_inv_freq(rope, head_dim):
    """Independent implementation of the llama3 (Llama 3.1) frequency rule, in float64."""
    base = rope["rope_theta"]
    factor = rope["factor"]
    lo, hi = rope["low_freq_factor"], rope["high_freq_factor"]
    old_ctx = rope["original_max_position_embeddings"]
    out = []
    for i in range(0, head_dim, 2):
        f = 1.0 / (base ** (i / head_dim))
        wavelen = 2.0 * math.pi / f
        if wavelen < old_ctx / hi:
            out.append(f)
        elif wavelen > old_ctx / lo:
            out.append(f / factor)
        else:
            s = (old_ctx / wavelen - lo) / (hi - lo)
            out.append((1.0 - s) * f / factor + s * f)
    return torch.tensor(out, dtype=torch.float64)


def check_llama3_scaling(model, cfg):
    rot = model.model.rotary_emb
    rope_type = getattr(rot, "rope_type", None)
    if rope_type != "llama3":
        raise SystemExit(f"llama3: rotary embedding has rope_type={rope_type!r}, expected 'llama3'")
    inv = rot.inv_freq.detach().to(torch.float64).cpu()
    hd = cfg.head_dim
    plain = 1.0 / (cfg.rope_parameters["rope_theta"] ** (torch.arange(0, hd, 2, dtype=torch.float64) / hd))
    ref = reference_llama3_inv_freq(cfg.rope_parameters, hd)
    changed = [(i, abs(inv[i] - plain[i]).item() > 1e-6 * plain[i].item()) for i in range(len(inv))]
    n_changed = sum(1 for _, c in changed if c)
    if n_changed == 0:
        raise SystemExit("llama3: inv_freq equals the unscaled frequencies; llama3 scaling was not applied")
    if n_changed == len(inv):
        raise SystemExit("llama3: every frequency changed; expected the high-frequency band to stay unscaled")
    if not torch.allclose(inv, ref, rtol=1e-6, atol=0.0):
        raise SystemExit(f"llama3: inv_freq {inv.tolist()} differs from the reference rule {ref.tolist()}")
    print(f"llama3: rope_type={rope_type}, {n_changed}/{len(inv)} frequencies changed by scaling")
    print(f"llama3:   unscaled inv_freq = {[float(f'{x:.8g}') for x in plain.tolist()]}")
    print(f"llama3:   model    inv_freq = {[float(f'{x:.8g}') for x in inv.tolist()]}")
    print("llama3:   matches independent reference implementation (rtol 1e-6)")
    return inv.tolist(), plain.tolist()


def full_logits(model, ids):
    with torch.no_grad():
        out = model(input_ids=ids[None, :], use_cache=False)
    return out.logits[0].to(torch.float32).contiguous()


def build_one(name, seed, factory, out_dir):
    print(f"== {name} (seed {seed})")
    torch.manual_seed(seed)
    cls, cfg = factory()
    model = cls(cfg).to(device="cpu", dtype=torch.float32).eval()
    impl = model.config._attn_implementation
    if impl != "eager":
        raise SystemExit(f"{name}: attention implementation is {impl!r}, expected 'eager'")

    gen = torch.Generator(device="cpu").manual_seed(seed)
    redraw_parameters(model, gen)
    prompt = torch.randint(0, VOCAB, (PROMPT_LEN,), generator=gen, dtype=torch.long)

    extra = {}
    if name == "llama3":
        inv, plain = check_llama3_scaling(model, model.config)
        extra["inv_freq"] = inv
        extra["inv_freq_unscaled"] = plain

    with torch.no_grad():
        gen_out = model.generate(
            input_ids=prompt[None, :],
            attention_mask=torch.ones(1, PROMPT_LEN, dtype=torch.long),
            do_sample=False,
            num_beams=1,
            max_new_tokens=NEW_TOKENS,
            min_new_tokens=NEW_TOKENS,
            eos_token_id=None,
            pad_token_id=0,
            use_cache=True,
        )
    seq = gen_out[0]
    if seq.shape[0] != PROMPT_LEN + NEW_TOKENS or not torch.equal(seq[:PROMPT_LEN], prompt):
        raise SystemExit(f"{name}: unexpected generate output {seq.tolist()}")
    continuation = seq[PROMPT_LEN:]

    logits = full_logits(model, seq)
    assert logits.shape == (PROMPT_LEN + NEW_TOKENS, VOCAB), logits.shape
    # Self-check: the cached greedy decode agrees with the argmax of the uncached full forward.
    argmax = logits[PROMPT_LEN - 1 : -1].argmax(dim=-1)
    if not torch.equal(argmax, continuation):
        raise SystemExit(f"{name}: generate {continuation.tolist()} != full-forward argmax {argmax.tolist()}")
    top2 = logits.topk(2, dim=-1).values
    margin = (top2[:, 0] - top2[:, 1]).min().item()
    spread = (logits.max(dim=-1).values - logits.min(dim=-1).values).min().item()
    print(f"{name}: prompt={prompt.tolist()} continuation={continuation.tolist()}")
    greedy_top2 = logits[PROMPT_LEN - 1 : -1].topk(2, dim=-1).values
    greedy_margin = (greedy_top2[:, 0] - greedy_top2[:, 1]).min().item()
    print(
        f"{name}: min top1-top2 margin: all rows {margin:.4g}, greedy rows {greedy_margin:.4g}; "
        f"min per-row logit range={spread:.4g}"
    )

    notes = [
        f"Tiny random {cls.__name__} built with torch.manual_seed({seed}); every parameter re-drawn "
        "(weights 0.2*N(0,1), norm weights 1+0.1*N(0,1), biases 0.1*N(0,1)) from a torch.Generator with the same seed.",
        "float32 on CPU, eager attention, torch.use_deterministic_algorithms(True), 1 thread.",
        f"continuation_ids: model.generate(do_sample=False, max_new_tokens={NEW_TOKENS}) with KV cache and no eos stop.",
        f"logits: one uncached forward over prompt_ids+continuation_ids ({PROMPT_LEN + NEW_TOKENS} positions); "
        "row t is the next-token distribution after token t; argmax of rows 11..18 equals continuation_ids.",
    ]

    if name == "mistral":
        # Show that the sliding window matters: same weights, no window.
        cfg_nw = MistralConfig(**{**cfg.to_dict(), "sliding_window": None})
        cfg_nw._attn_implementation = "eager"
        nw = MistralForCausalLM(cfg_nw).eval()
        nw.load_state_dict(model.state_dict())
        logits_nw = full_logits(nw, seq)
        w = cfg.sliding_window
        diff_in = (logits_nw[:w] - logits[:w]).abs().max().item()
        diff_out = (logits_nw[w:] - logits[w:]).abs().max().item()
        print(f"mistral: |no-window - window| max diff: positions <{w}: {diff_in:.3g}, positions >={w}: {diff_out:.3g}")
        if diff_in > 1e-5 or diff_out < 1e-3:
            raise SystemExit("mistral: sliding window does not behave as expected")
        notes.append(
            f"sliding_window={w}: query q attends keys k with q-{w} < k <= q (the query itself plus {w - 1} previous). "
            f"Without the window the logits at positions >= {w} differ by up to {diff_out:.3g}."
        )
    if name == "llama3":
        notes.append(
            "rope llama3 scaling with original_max_position_embeddings=32: of the 8 frequencies for head_dim 16, "
            "index 0 is unchanged, index 1 is smoothly interpolated, indices 2..7 are divided by factor 8."
        )
    if name == "qwen2":
        notes.append("tie_word_embeddings=True: lm_head shares model.embed_tokens.weight; QKV projections have biases.")

    d = os.path.join(out_dir, name)
    if os.path.exists(d):
        shutil.rmtree(d)
    model.save_pretrained(d)
    for f in os.listdir(d):
        if f not in ("config.json", "model.safetensors"):
            os.remove(os.path.join(d, f))
    save_file({"logits": logits}, os.path.join(d, "logits.safetensors"))

    # Round trip: the saved checkpoint reproduces the logits exactly.
    sd = load_file(os.path.join(d, "model.safetensors"))
    bad = [k for k, v in sd.items() if v.dtype != torch.float32]
    if bad:
        raise SystemExit(f"{name}: non-float32 tensors saved: {bad}")
    reloaded = cls.from_pretrained(d, attn_implementation="eager", dtype=torch.float32).eval()
    rl = full_logits(reloaded, seq)
    if not torch.equal(rl, logits):
        raise SystemExit(f"{name}: reloaded checkpoint gives different logits (max diff {(rl - logits).abs().max()})")

    golden = {
        "prompt_ids": prompt.tolist(),
        "continuation_ids": continuation.tolist(),
        "transformers": transformers.__version__,
        "torch": torch.__version__,
        "seed": seed,
        "min_greedy_margin": greedy_margin,
        "notes": " ".join(notes),
    }
    golden.update(extra)
    with open(os.path.join(d, "golden.json"), "w") as fh:
        json.dump(golden, fh, indent=2)
        fh.write("\n")

    for f in sorted(os.listdir(d)):
        print(f"{name}: {f} {os.path.getsize(os.path.join(d, f))} bytes")
    print(f"{name}: saved tensors: {sorted(sd.keys())}")


def main():
    if len(sys.argv) != 2:
        sys.exit("usage: make_golden.py OUT_DIR")
    out_dir = sys.argv[1]
    os.makedirs(out_dir, exist_ok=True)
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)
    print(f"transformers {transformers.__version__}, torch {torch.__version__}")
    for name, seed, factory in MODELS:
        build_one(name, seed, factory, out_dir)
    print("done")


if __name__ == "__main__":
    main()
