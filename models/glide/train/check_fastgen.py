#!/usr/bin/env python3
"""Checks fastgen.py against transformers' `generate` on a small random Qwen2 model in f32 (on
the CPU, in seconds): greedy answers to prompts of several lengths, decoded together in one
left-padded batch with finished rows dropped on the way, must equal each prompt's answer from
`generate` alone, token for token. Exits non-zero on any difference.

    python3 models/glide/train/check_fastgen.py     (needs torch and transformers)

`train.py prepare` also compares the two on the real target before generating (in bf16, where
rounding may flip near ties late in an answer)."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fastgen import FastDecoder  # noqa: E402


def main() -> int:
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    cfg = Qwen2Config(
        vocab_size=300,
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        rope_theta=10000.0,
        tie_word_embeddings=False,
    )
    cfg._attn_implementation = "sdpa"
    model = Qwen2ForCausalLM(cfg).eval()
    for p in model.parameters():
        p.data.normal_(0, 0.3)  # large weights: answers that vary, and ends mid-batch
    g = torch.Generator().manual_seed(1)
    prompts = [torch.randint(0, 300, (n,), generator=g).tolist() for n in (5, 17, 9, 30, 1, 12)]
    failures = 0
    for eos in ([7], [157, 130]):
        # A small prefill budget: several slices of rows.
        fast = FastDecoder(model).generate(prompts, 20, eos, prefill_tokens=40)
        for p, f in zip(prompts, fast):
            ref = model.generate(
                torch.tensor([p]), max_new_tokens=20, do_sample=False, eos_token_id=eos, pad_token_id=0
            )[0, len(p) :].tolist()
            ref = ref[: next((j + 1 for j, t in enumerate(ref) if t in eos), len(ref))]
            ok = ref == f
            failures += not ok
            print(f"eos {eos}, prompt of {len(p):2} tokens: {'same' if ok else 'DIFFERENT'} ({len(f)} tokens)")
            if not ok:
                print(f"  generate: {ref}\n  fastgen:  {f}")
    print("fastgen.py equals generate" if failures == 0 else f"{failures} answers differ")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
