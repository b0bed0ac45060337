#!/usr/bin/env python3
"""The GLIDE parity fixture: the training script's drafter against specd's.

Takes the tiny Qwen2 target of engine/tests/fixtures/golden/qwen2 (made by
scripts/golden/make_golden.py), builds a tiny random GLIDE drafter for it with this folder's
PyTorch model, saves it in specd's format, and writes the drafter's logits for a fixed input:
the target prefilled with the first VERIFIED tokens, the drafter run over all TOKENS rows at once
(the first VERIFIED rows each a block of its own, the rest one block drafted past the verified
length). engine/tests/glide_golden.rs loads the same files into specd and compares.

    <out>/glide.safetensors    the drafter (float32)
    <out>/logits.safetensors   tensor "logits", [TOKENS, draft vocabulary], float32
    <out>/golden.json          token ids, verified length, versions

With --feature, a drafter that reads the target's last hidden state (rank-16 projection) into
engine/tests/fixtures/glide_golden_feature: the first drafted row (position VERIFIED) takes the
target's final normed hidden state at position VERIFIED - 1, also saved, as "feature" in
<out>/feature.safetensors (specd's own must match it too).

With --chain, the same with `last_hidden_chain` into engine/tests/fixtures/glide_golden_chain:
the drafted rows after the first each read the drafter's own final normed row before them
(`GlideDrafter.forward_chain` with one pass per row: the rows as drafted one after another),
its chained rows with their own norm weights (`chain_norm`, drawn like every other norm).

Usage: python3 models/glide/train/golden.py [--feature | --chain] [OUT_DIR]
       (default engine/tests/fixtures/glide_golden, glide_golden_feature or glide_golden_chain)
Made with torch 2.11 and transformers 5.17 (the versions of make_golden.py; the chain fixture
with 2.15 and 5.25, recorded in its golden.json), CPU only.
"""

import os

os.environ["CUDA_VISIBLE_DEVICES"] = ""

import json
import sys
from pathlib import Path

import torch
import transformers
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).resolve().parent))
from glide_model import GlideConfig, GlideDrafter, block_starts_from_sizes, save_glide  # noqa: E402
from target import embed_weight, head_weight, target_pass, target_shapes  # noqa: E402

REPO = Path(__file__).resolve().parents[3]
TARGET = REPO / "engine/tests/fixtures/golden/qwen2"
TOKENS = [3, 17, 200, 45, 45, 9, 128, 77, 1, 250, 64, 12, 99, 5]
VERIFIED = 10
SEED = 1234


def main() -> None:
    args = sys.argv[1:]
    chain = "--chain" in args
    feature = "--feature" in args or chain
    args = [a for a in args if a not in ("--feature", "--chain")]
    default = "glide_golden_chain" if chain else "glide_golden_feature" if feature else "glide_golden"
    out = Path(args[0]) if args else REPO / "engine/tests/fixtures" / default
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(SEED)
    target = transformers.Qwen2ForCausalLM.from_pretrained(TARGET, dtype=torch.float32, attn_implementation="eager")
    target.eval().requires_grad_(False)
    shapes = target_shapes(target)
    draft_vocab = torch.randperm(shapes.vocab_size)[:100].sort().values
    cfg = GlideConfig(
        num_layers=1,
        num_heads=2,
        num_kv_heads=1,
        head_dim=8,
        intermediate_size=48,
        rms_norm_eps=1e-6,
        target_layer=shapes.num_layers - 1,
        draft_vocab_size=len(draft_vocab),
        target=shapes,
        feature="last_hidden_chain" if chain else "last_hidden" if feature else "none",
        feature_rank=16 if feature else 0,
        chain_norm=chain,
    )
    model = GlideDrafter(cfg, embed_weight(target).detach(), draft_vocab, head_weight(target).detach())
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 1:
                p.copy_(1.0 + 0.2 * torch.randn_like(p))
            else:
                p.copy_(0.15 * torch.randn_like(p))
    model.eval()

    ids = torch.tensor([TOKENS])
    k, v, _, hidden = target_pass(target, ids[:, :VERIFIED], cfg.target_layer, hidden=True)
    starts = block_starts_from_sizes([1] * VERIFIED + [len(TOKENS) - VERIFIED], len(TOKENS))
    positions = torch.arange(len(TOKENS))[None]
    extra = ()
    if feature:
        # Only the first drafted row takes a feature: the target's row before it.
        rows = torch.zeros((1, len(TOKENS)), dtype=torch.bool)
        rows[0, VERIFIED] = True
        feats = torch.zeros((1, len(TOKENS), shapes.hidden_size))
        feats[0, VERIFIED] = hidden[0, VERIFIED - 1]
        extra = (feats, rows)
        save_file({"feature": hidden[0, VERIFIED - 1].contiguous()}, str(out / "feature.safetensors"))
    with torch.no_grad():
        if chain:
            later = torch.zeros((1, len(TOKENS)), dtype=torch.bool)
            later[0, VERIFIED + 1 :] = True
            logits = model.forward_chain(ids, positions, k, v, starts, *extra, later, passes=len(TOKENS))[0]
        else:
            logits = model(ids, positions, k, v, starts, *extra)[0]

    save_glide(str(out / "glide.safetensors"), model, dtype=torch.float32)
    save_file({"logits": logits.contiguous()}, str(out / "logits.safetensors"))
    (out / "golden.json").write_text(
        json.dumps(
            {
                "target": "engine/tests/fixtures/golden/qwen2",
                "tokens": TOKENS,
                "verified": VERIFIED,
                "starts": starts.tolist(),
                "torch": torch.__version__,
                "transformers": transformers.__version__,
                "seed": SEED,
            },
            indent=1,
        )
        + "\n"
    )
    print(f"wrote {out}: logits {tuple(logits.shape)}")


if __name__ == "__main__":
    main()
