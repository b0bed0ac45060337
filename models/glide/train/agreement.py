#!/usr/bin/env python3
"""How well a GLIDE file drafts on bench-spec's prompts, teacher-forced in PyTorch: the target
answers each prompt greedily (transformers), then the drafter proposes k tokens after every
verification point of the answer, and the accepted length is the leading run of drafts equal to
the target's choice. Compares with `specd bench-spec --methods glide:K` per prompt, to tell a
drafter that drafts poorly from specd running it wrongly.

Usage: python3 agreement.py TARGET.gguf GLIDE.safetensors [--prompts N] [--tokens T] [--k K]
CPU is enough (a minute or two per prompt for the 1.5B target on 2 cores).
"""

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from glide_model import load_glide  # noqa: E402
from target import embed_weight, head_weight, load_target, target_pass  # noqa: E402

REPO = Path(__file__).resolve().parents[3]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("target")
    ap.add_argument("glide")
    ap.add_argument("--prompts", type=int, default=2, help="the first N bench-spec prompts")
    ap.add_argument("--tokens", type=int, default=64, help="answer tokens per prompt")
    ap.add_argument("--k", type=int, default=4, help="drafts per verification")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    a = ap.parse_args()

    dtype = torch.bfloat16 if a.device.startswith("cuda") else torch.float32
    model, tok = load_target(a.target, a.device, dtype)
    drafter = load_glide(a.glide, embed_weight(model).detach(), head_weight(model).detach()).to(a.device).eval()
    texts = [p["text"] for p in json.loads((REPO / "scripts/bench/code_prompts.json").read_text())["prompts"]]
    for i, text in enumerate(texts[: a.prompts]):
        chat = tok.apply_chat_template([{"role": "user", "content": text}], tokenize=False, add_generation_prompt=True)
        ids = tok(chat, return_tensors="pt", add_special_tokens=False)["input_ids"].to(a.device)
        prompt_len = ids.shape[1]
        with torch.no_grad():
            seq = model.generate(ids, max_new_tokens=a.tokens, do_sample=False)
            n = seq.shape[1]
            k, v, logits = target_pass(model, seq, drafter.cfg.target_layer)
            want = logits.argmax(-1)[0]
            # Prompt rows are blocks of their own; answer rows form blocks of k from the prompt's end.
            starts = torch.tensor(
                [t if t < prompt_len else prompt_len + (t - prompt_len) // a.k * a.k for t in range(n)],
                device=a.device,
            )
            rows = drafter(seq, torch.arange(n, device=a.device)[None], k, v, starts)[0]
        draft = drafter.vocab_ids[rows.argmax(-1)]
        blocks = (n - prompt_len) // a.k
        hit = (draft == want)[prompt_len : prompt_len + blocks * a.k].view(blocks, a.k)
        accepted = torch.cumprod(hit.int(), dim=-1).sum(-1).float()
        print(
            f"prompt {i}: {n - prompt_len} answer tokens, top-1 agreement {float(hit.float().mean()):.3f}, "
            f"acceptance {float(accepted.mean() / a.k):.3f}, mean accepted length {float(accepted.mean() + 1):.2f}",
            flush=True,
        )


if __name__ == "__main__":
    main()
