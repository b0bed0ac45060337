#!/usr/bin/env python3
"""Checks gguf_torch.py (the target's GGUF read straight into PyTorch) against the `gguf`
package and transformers, on the CPU, before a GPU session loads the target with it:

1. every block format the file uses dequantizes to exactly the `gguf` package's values (the
   first rows of one matrix of each format, and every small tensor);
2. the model equals transformers' load of the same file: the same configuration where it
   matters, the same tensors bit for bit, the same logits on a short prompt (within bf16's
   rounding where transformers keeps the weights packed and multiplies in f32, as 5.2x can).

    python3 models/glide/train/check_gguf_torch.py [GGUF]   (torch, transformers, gguf; minutes)

GGUF defaults to $SPECD_HOME/models/qwen2.5-coder-1.5b-instruct-q4_k_m.gguf (scripts/fetch-models).
"""

import os

os.environ["CUDA_VISIBLE_DEVICES"] = ""

import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gguf_torch import dequantize, load_gguf  # noqa: E402


def main() -> None:
    home = Path(os.environ.get("SPECD_HOME", Path.home() / ".cache/specd"))
    path = Path(sys.argv[1]) if len(sys.argv) > 1 else home / "models/qwen2.5-coder-1.5b-instruct-q4_k_m.gguf"
    if not path.is_file():
        sys.exit(f"check_gguf_torch: no {path}: run scripts/fetch-models (or pass a GGUF)")
    from gguf import GGUFReader
    from gguf.quants import dequantize as reference

    reader = GGUFReader(str(path))
    seen = set()
    for t in reader.tensors:
        kind = t.tensor_type.name
        small = t.data.size <= 1 << 16
        if kind in seen and not small:
            continue
        seen.add(kind)
        rows = np.asarray(t.data) if small or t.data.ndim == 1 else np.asarray(t.data[:64])
        want = torch.from_numpy(np.ascontiguousarray(reference(rows, t.tensor_type), dtype=np.float32))
        got = dequantize(t, "cpu")
        got = got if small or t.data.ndim == 1 else got[:64]
        assert torch.equal(got.reshape(want.shape), want), f"{t.name} ({kind}): differs from gguf's by {(got.reshape(want.shape) - want).abs().max()}"
    print(f"blocks: ok ({', '.join(sorted(seen))} equal to the gguf package's)")

    from transformers import AutoModelForCausalLM

    t0 = time.time()
    theirs = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.bfloat16)
    t1 = time.time()
    ours, tok = load_gguf(str(path), "cpu", torch.bfloat16)
    t2 = time.time()
    print(f"load: transformers {t1 - t0:.0f} s, gguf_torch {t2 - t1:.0f} s (this machine's CPU)")
    for key in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                "num_key_value_heads", "rms_norm_eps", "max_position_embeddings", "tie_word_embeddings"):
        a, b = getattr(theirs.config, key), getattr(ours.config, key)
        assert a == b, f"config {key}: transformers {a}, gguf_torch {b}"
    rope = lambda c: (getattr(c, "rope_parameters", None) or {}).get("rope_theta", getattr(c, "rope_theta", None))  # noqa: E731
    assert rope(theirs.config) == rope(ours.config), f"rope theta: {rope(theirs.config)} vs {rope(ours.config)}"
    a, b = theirs.state_dict(), ours.state_dict()
    assert a.keys() == b.keys(), f"tensor names differ: {sorted(a.keys() ^ b.keys())[:6]}"
    for k in a:
        assert torch.equal(a[k], b[k]), f"{k} differs by {(a[k].float() - b[k].float()).abs().max()}"
    ids = tok("def fibonacci(n):\n    ", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        la, lb = theirs(ids).logits.float(), ours(ids).logits.float()
    # transformers from 5.2x may keep GGUF weights packed and multiply in f32 (GgufLinear);
    # then only bf16's rounding may part the logits.
    packed = any(type(m).__name__ == "GgufLinear" for m in theirs.modules())
    if packed:
        worst = (la - lb).abs().max()
        assert worst <= 0.05 * la.abs().max() and torch.equal(la.argmax(-1), lb.argmax(-1)), f"logits differ by {worst}"
    else:
        assert torch.equal(la, lb), f"logits differ by {(la - lb).abs().max()}"
    how = "within bf16 rounding of its packed f32 products" if packed else "equal"
    print(f"model: ok ({len(a)} tensors equal to transformers' load; logits {how}, the same argmax)")
    print("check_gguf_torch: all passed")


if __name__ == "__main__":
    main()
