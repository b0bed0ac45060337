#!/usr/bin/env python3
"""Checks `train.py train --segment I/N` on the CPU, before a GPU hold trains in segments: the
segments of one schedule, each a call of its own going on from the `--state` the one before
kept, train exactly what one call of all the steps trains (the f32 weights and the optimizer's
state equal, bit for bit), with random blocks and with blocks placed as specd's rounds; a
segment cut by its deadline hands on its share of the schedule; a segment refuses a state that
does not end where it starts or comes from another schedule, and a later segment without one.

  python3 models/glide/train/check_segments.py [GGUF]

The target is a random model of the tiny fixture's shapes (engine/tests/fixtures/golden/qwen2)
with the real vocabulary, whose tokenizer comes from GGUF (default: the fetched 1.5B target).
Needs torch and transformers (as train.py).
"""

import json
import os
import sys
import tempfile
from pathlib import Path

import torch
import transformers

sys.path.insert(0, str(Path(__file__).resolve().parent))
import train  # noqa: E402

REPO = Path(__file__).resolve().parents[3]
TINY = REPO / "engine/tests/fixtures/golden/qwen2/config.json"
STEPS = 6


def same(a, b, what: str) -> None:
    """Tensors, dicts and lists of them equal, bit for bit."""
    if isinstance(a, torch.Tensor):
        assert torch.equal(a, b), f"{what} differs"
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), f"{what}: keys differ"
        for k in a:
            same(a[k], b[k], f"{what}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), f"{what}: lengths differ"
        for i, (x, y) in enumerate(zip(a, b)):
            same(x, y, f"{what}[{i}]")
    else:
        assert a == b, f"{what}: {a} != {b}"


def main() -> None:
    home = Path(os.environ.get("SPECD_HOME", Path.home() / ".cache/specd"))
    gguf = Path(sys.argv[1]) if len(sys.argv) > 1 else home / "models/qwen2.5-coder-1.5b-instruct-q4_k_m.gguf"
    if not gguf.is_file():
        sys.exit(f"check_segments: no {gguf}: run scripts/fetch-models (or pass a GGUF)")
    torch.set_num_threads(1)
    tok = transformers.AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    cfg = transformers.Qwen2Config(**{**json.loads(TINY.read_text()), "vocab_size": len(tok)})
    torch.manual_seed(7)
    loaded = (transformers.Qwen2ForCausalLM(cfg).eval().requires_grad_(False), tok)
    with tempfile.TemporaryDirectory() as tmp:
        work = os.path.join(tmp, "w")
        a = train.parser().parse_args(
            ["prepare", "--target", "tiny", "--work", work, "--prompts", "6", "--eval-prompts", "2",
             "--gen-tokens", "8", "--gen-deadline", "120", "--code-tokens", "8192", "--eval-tokens", "2048",
             "--draft-vocab", "256", "--device", "cpu", "--seq-len", "64"])
        train.cmd_prepare(a, loaded)

        def run(name: str, *extra: str) -> None:
            args = ["train", "--target", "tiny", "--work", work, "--device", "cpu", "--steps", str(STEPS),
                    "--batch", "2", "--deadline", "1e9", "--eval-windows", "2", "--feature", "last_hidden",
                    "--log-every", "1", "--out", os.path.join(tmp, f"{name}.safetensors"), *extra]
            train.cmd_train(train.parser().parse_args(args), loaded)

        for placement in ("random", "rounds"):
            p = ["--block-placement", placement, "--max-block", "4"]
            whole, parts = os.path.join(tmp, f"whole-{placement}.pt"), os.path.join(tmp, f"parts-{placement}.pt")
            run(f"whole-{placement}", *p, "--state", whole)
            run(f"part0-{placement}", *p, "--segment", "0/2", "--state", parts)
            run(f"part1-{placement}", *p, "--segment", "1/2", "--state", parts,
                "--resume", os.path.join(tmp, f"part0-{placement}.safetensors"))
            w, s = torch.load(whole, weights_only=False), torch.load(parts, weights_only=False)
            assert w["end"] == s["end"] == w["trained_to"] == s["trained_to"] == STEPS, (w["end"], s["end"])
            same(w["drafter"], s["drafter"], "weights")
            same(w["opt"], s["opt"], "optimizer state")
            # One step less trained differs (the check can fail).
            run(f"short-{placement}", *p, "--state", os.path.join(tmp, "short.pt"), "--steps", str(STEPS - 1))
            short = torch.load(os.path.join(tmp, "short.pt"), weights_only=False)
            assert any(not torch.equal(short["drafter"][k], w["drafter"][k]) for k in w["drafter"]), \
                "a step less trained the same weights"
            print(f"segments ({placement} blocks): 0/2 then 1/2 = one call of {STEPS} steps, bit for bit")

        # A segment cut by its deadline (here before its first step) hands the next the
        # schedule where it ends, and the next goes on from there.
        cut = os.path.join(tmp, "cut.pt")
        run("cut0", "--segment", "0/2", "--state", cut, "--deadline", "1e-9")
        c = torch.load(cut, weights_only=False)
        assert (c["end"], c["trained_to"]) == (STEPS // 2, 0), (c["end"], c["trained_to"])
        run("cut1", "--segment", "1/2", "--state", cut, "--resume", os.path.join(tmp, "cut0.safetensors"))
        c = torch.load(cut, weights_only=False)
        assert (c["end"], c["trained_to"]) == (STEPS, STEPS), (c["end"], c["trained_to"])
        print("segments: one cut by its deadline hands on its share of the schedule")

        refusals = [
            (["--segment", "1/2", "--state", os.path.join(tmp, "parts-random.pt"),
              "--resume", os.path.join(tmp, "part0-random.safetensors")], "ends at step"),
            (["--segment", "1/2"], "needs --state"),
            (["--segment", "2/2"], "I must be"),
            (["--segment", "0/2", "--steps", "1"], "cannot be split"),
            (["--segment", "1/2", "--state", cut, "--lr", "5e-4",
              "--resume", os.path.join(tmp, "cut1.safetensors")], "ends at step"),
        ]
        for extra, why in refusals:
            try:
                run("refused", *extra)
            except SystemExit as e:
                assert why in str(e), e
            else:
                raise AssertionError(f"{extra} was not refused")
        print("segments: a state ending elsewhere or from another schedule, none, and segments out of range are refused")
    print("check_segments: all passed")


if __name__ == "__main__":
    main()
