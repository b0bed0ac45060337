#!/usr/bin/env python3
"""Checks `train.py prepare`'s answer cache (answers.py) end to end on the CPU, before a GPU
session relies on it: a tiny random Qwen2 with the real target's tokenizer (read from the
fetched GGUF) answers a few prompts and keeps them (`--answers-out`); a second prepare given
that cache (`--answers-in`) answers none of them again and trains on the same answers; a cache
of another answer length is refused.

    python3 models/glide/train/check_answers.py [GGUF]    (torch, transformers, gguf; a minute)

GGUF defaults to $SPECD_HOME/models/qwen2.5-coder-1.5b-instruct-q4_k_m.gguf (scripts/fetch-models).
"""

import os

os.environ["CUDA_VISIBLE_DEVICES"] = ""

import json
import sys
import tempfile
from pathlib import Path

import torch
import transformers

sys.path.insert(0, str(Path(__file__).resolve().parent))
import train  # noqa: E402

REPO = Path(__file__).resolve().parents[3]
TINY = REPO / "engine/tests/fixtures/golden/qwen2/config.json"


def main() -> None:
    home = Path(os.environ.get("SPECD_HOME", Path.home() / ".cache/specd"))
    gguf = Path(sys.argv[1]) if len(sys.argv) > 1 else home / "models/qwen2.5-coder-1.5b-instruct-q4_k_m.gguf"
    if not gguf.is_file():
        sys.exit(f"check_answers: no {gguf}: run scripts/fetch-models (or pass a GGUF)")
    tok = transformers.AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    # The tiny fixture's shapes with the real vocabulary (its tokenizer's ids must fit).
    cfg = transformers.Qwen2Config(**{**json.loads(TINY.read_text()), "vocab_size": len(tok)})
    torch.manual_seed(7)
    model = transformers.Qwen2ForCausalLM(cfg).eval().requires_grad_(False)
    loaded = (model, tok)
    small = ["--prompts", "6", "--eval-prompts", "2", "--gen-tokens", "8", "--gen-deadline", "120",
             "--code-tokens", "4096", "--eval-tokens", "2048", "--draft-vocab", "256", "--device", "cpu"]
    with tempfile.TemporaryDirectory() as tmp:
        first, second = os.path.join(tmp, "first.pt.xz"), os.path.join(tmp, "second.pt.xz")
        a = train.parser().parse_args(["prepare", "--target", "tiny", "--work", os.path.join(tmp, "w1"), *small,
                                       "--answers-out", first])
        train.cmd_prepare(a, loaded)
        d1 = torch.load(os.path.join(tmp, "w1/data.pt"), weights_only=False)
        assert d1["stats"]["new_answers"] == 6 and d1["stats"]["cached_answers"] == 0, d1["stats"]
        a = train.parser().parse_args(["prepare", "--target", "tiny", "--work", os.path.join(tmp, "w2"), *small,
                                       "--answers-in", first, "--answers-out", second])
        train.cmd_prepare(a, loaded)
        d2 = torch.load(os.path.join(tmp, "w2/data.pt"), weights_only=False)
        assert d2["stats"]["new_answers"] == 0 and d2["stats"]["cached_answers"] == 6, d2["stats"]
        assert sorted(map(str, d2["distill"])) == sorted(map(str, d1["distill"])), "the cached answers differ"
        # Refused before the corpus is read or anything generated.
        a = train.parser().parse_args(["prepare", "--target", "tiny", "--work", os.path.join(tmp, "w3"),
                                       *small[:4], "--gen-tokens", "16", *small[6:], "--answers-in", first])
        try:
            train.cmd_prepare(a, loaded)
        except SystemExit as e:
            assert "--gen-tokens" in str(e), e
        else:
            raise AssertionError("a cache of 8-token answers was taken for 16-token ones")
    print("check_answers: all passed")


if __name__ == "__main__":
    main()
