#!/usr/bin/env python3
"""Make random-weight Hugging Face model folders with the real shapes of Qwen2.5 models.

The folders hold a config.json and safetensors weights that both transformers and specd load,
so the two can be benchmarked on the very same weights without any download (the GPU machine
has no network). Weights are bf16, drawn from normal(0, 0.02) (biases too), norms are ones,
with a fixed seed. The model is built directly on the target device (no CPU init then copy).

Usage (on the GPU machine):
    scripts/gpu/make-random-models.py OUTDIR [--shapes 1.5b,7b] [--device cuda] [--seed 0]

Creates OUTDIR/qwen2.5-1.5b-shape and OUTDIR/qwen2.5-7b-shape. A folder that already holds a
config.json is left alone (the script is idempotent); a model is written to NAME.tmp first and
renamed when complete. Prints one JSON line per model:
    {"model": ..., "path": ..., "params": ..., "bytes": ..., "seconds": ...}
("skipped": true is added for a folder that already existed). Each folder also gets a byte-level
tokenizer.json (no merges: one token per byte, the rest of the vocabulary filler tokens that
encoding never produces, Qwen's special tokens at their ids) and a tokenizer_config.json with
the ChatML template, so that `specd bench-load` and `serve` can run on the folder; the same
tokenizer for every shape, so one shape may draft for another.

`--tiny` (a test aid, not shown in --help) makes the same two models with tiny shapes
(hidden 64, 2 layers, vocab 1000) in folders named *-tiny, e.g. for a CPU test with
`--device cpu`.
"""

import argparse
import inspect
import json
import os
import shutil
import struct
import sys
import time

import torch

# Real shapes (from the Qwen2.5 config.json files).
SHAPES = {
    "1.5b": dict(
        name="qwen2.5-1.5b-shape",
        hidden_size=1536,
        intermediate_size=8960,
        num_hidden_layers=28,
        num_attention_heads=12,
        num_key_value_heads=2,
        vocab_size=151936,
        tie_word_embeddings=True,
        max_window_layers=21,
    ),
    "7b": dict(
        name="qwen2.5-7b-shape",
        hidden_size=3584,
        intermediate_size=18944,
        num_hidden_layers=28,
        num_attention_heads=28,
        num_key_value_heads=4,
        vocab_size=152064,
        tie_word_embeddings=False,
        max_window_layers=28,
    ),
}

# Small stand-ins with the same structure (GQA, tie / no tie) for CPU tests.
TINY_SHAPES = {
    "1.5b": dict(
        name="qwen2.5-1.5b-shape-tiny",
        hidden_size=64,
        intermediate_size=160,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=1000,
        tie_word_embeddings=True,
        max_window_layers=2,
    ),
    "7b": dict(
        name="qwen2.5-7b-shape-tiny",
        hidden_size=96,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=6,
        num_key_value_heads=2,
        vocab_size=1000,
        tie_word_embeddings=False,
        max_window_layers=2,
    ),
}


def emit(obj):
    print(json.dumps(obj), flush=True)


def make_config(shape):
    from transformers import Qwen2Config

    vocab = shape["vocab_size"]
    # Qwen2.5 base models use <|endoftext|> = 151643 as bos and eos; keep tiny ids in range.
    special = 151643 if vocab > 151643 else vocab - 1
    kwargs = dict(
        vocab_size=vocab,
        hidden_size=shape["hidden_size"],
        intermediate_size=shape["intermediate_size"],
        num_hidden_layers=shape["num_hidden_layers"],
        num_attention_heads=shape["num_attention_heads"],
        num_key_value_heads=shape["num_key_value_heads"],
        hidden_act="silu",
        max_position_embeddings=32768,
        initializer_range=0.02,
        rms_norm_eps=1e-6,
        use_cache=True,
        tie_word_embeddings=shape["tie_word_embeddings"],
        use_sliding_window=False,
        sliding_window=32768,
        max_window_layers=shape["max_window_layers"],
        attention_dropout=0.0,
        bos_token_id=special,
        eos_token_id=special,
    )
    params = inspect.signature(Qwen2Config.__init__).parameters
    if "rope_parameters" in params:  # transformers 5.x
        kwargs["rope_parameters"] = {"rope_type": "default", "rope_theta": 1000000.0}
    else:  # transformers 4.x
        kwargs["rope_theta"] = 1000000.0
    cfg = Qwen2Config(**kwargs)
    cfg.architectures = ["Qwen2ForCausalLM"]
    cfg.dtype = torch.bfloat16  # saved as "dtype" (5.x) / "torch_dtype" (4.x)
    return cfg


@torch.no_grad()
def random_init(model, seed, device):
    gen = torch.Generator(device=device)
    gen.manual_seed(seed)
    seen = set()
    # Sorted by name so the draw order (and thus the weights) never depends on module order.
    for name, p in sorted(model.named_parameters(), key=lambda kv: kv[0]):
        if id(p) in seen:  # tied lm_head / embed_tokens
            continue
        seen.add(id(p))
        if name.endswith("norm.weight"):
            p.fill_(1.0)
        else:
            p.normal_(mean=0.0, std=0.02, generator=gen)


def safetensors_param_count(folder):
    """Counts the elements stored in a folder's safetensors files (reads only the headers)."""
    total = 0
    for fname in sorted(os.listdir(folder)):
        if not fname.endswith(".safetensors"):
            continue
        with open(os.path.join(folder, fname), "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(n))
        for key, info in header.items():
            if key == "__metadata__":
                continue
            count = 1
            for d in info["shape"]:
                count *= d
            total += count
    return total


def folder_bytes(folder):
    return sum(
        os.path.getsize(os.path.join(folder, f))
        for f in os.listdir(folder)
        if os.path.isfile(os.path.join(folder, f))
    )


def fix_config_json(folder):
    """Makes config.json state the dtype under both spellings and the architecture explicitly."""
    path = os.path.join(folder, "config.json")
    with open(path) as f:
        cfg = json.load(f)
    cfg["architectures"] = ["Qwen2ForCausalLM"]
    cfg["model_type"] = "qwen2"
    cfg["use_sliding_window"] = False
    cfg.setdefault("dtype", "bfloat16")
    cfg.setdefault("torch_dtype", "bfloat16")
    with open(path, "w") as f:
        json.dump(cfg, f, indent=2, sort_keys=True)
        f.write("\n")


CHATML = (
    "{%- for m in messages %}{{ '<|im_start|>' + m.role + '\\n' + m.content + '<|im_end|>\\n' }}"
    "{%- endfor %}{%- if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{%- endif %}"
)


def byte_alphabet():
    """GPT-2's byte-to-character table of byte-level BPE: printable bytes map to themselves."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    chars, extra = {}, 0
    for b in range(256):
        if b in keep:
            chars[b] = chr(b)
        else:
            chars[b] = chr(256 + extra)
            extra += 1
    return [chars[b] for b in range(256)]


def write_tokenizer(path, vocab):
    """A byte-level tokenizer.json over `vocab` ids and a ChatML tokenizer_config.json."""
    if vocab > 151645:
        special = {"<|endoftext|>": 151643, "<|im_start|>": 151644, "<|im_end|>": 151645}
    else:
        special = {"<|endoftext|>": vocab - 1, "<|im_start|>": vocab - 3, "<|im_end|>": vocab - 2}
    taken = set(special.values())
    model_vocab = {c: i for i, c in enumerate(byte_alphabet())}
    for i in range(256, vocab):
        if i not in taken:
            model_vocab[f"filler{i}"] = i
    byte_level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}
    tok = {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": [
            {"id": i, "content": t, "single_word": False, "lstrip": False, "rstrip": False,
             "normalized": False, "special": True}
            for t, i in sorted(special.items(), key=lambda kv: kv[1])
        ],
        "normalizer": None,
        "pre_tokenizer": byte_level,
        "post_processor": None,
        "decoder": byte_level,
        "model": {"type": "BPE", "dropout": None, "unk_token": None,
                  "continuing_subword_prefix": None, "end_of_word_suffix": None,
                  "fuse_unk": False, "byte_fallback": False, "vocab": model_vocab, "merges": []},
    }
    with open(os.path.join(path, "tokenizer.json"), "w") as f:
        json.dump(tok, f)
    with open(os.path.join(path, "tokenizer_config.json"), "w") as f:
        json.dump({"chat_template": CHATML, "eos_token": "<|im_end|>"}, f)


def make_one(key, shape, outdir, device, seed):
    from transformers import Qwen2ForCausalLM

    path = os.path.join(outdir, shape["name"])
    if os.path.isfile(os.path.join(path, "config.json")):
        emit(
            {
                "model": shape["name"],
                "path": path,
                "params": safetensors_param_count(path),
                "bytes": folder_bytes(path),
                "seconds": 0.0,
                "skipped": True,
            }
        )
        return
    t0 = time.perf_counter()
    tmp = path + ".tmp"
    if os.path.exists(tmp):
        shutil.rmtree(tmp)
    cfg = make_config(shape)
    old_dtype = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        with torch.device(device):
            model = Qwen2ForCausalLM(cfg)
    finally:
        torch.set_default_dtype(old_dtype)
    model.to(torch.bfloat16)  # a no-op unless some module was built in another dtype
    model.eval()
    if cfg.tie_word_embeddings:
        assert model.lm_head.weight is model.model.embed_tokens.weight, "embeddings are not tied"
    # A different, fixed seed per shape; the same seed always gives the same weights on one device.
    random_init(model, seed * 1000 + sorted(SHAPES).index(key), device)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    save_kwargs = {"max_shard_size": "200GB"}
    if "safe_serialization" in inspect.signature(model.save_pretrained).parameters:
        save_kwargs["safe_serialization"] = True  # transformers 4.x; 5.x always writes safetensors
    model.save_pretrained(tmp, **save_kwargs)
    fix_config_json(tmp)
    del model
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
    if not any(f.endswith(".safetensors") for f in os.listdir(tmp)):
        raise RuntimeError(f"save_pretrained wrote no safetensors file in {tmp}")
    os.replace(tmp, path)
    emit(
        {
            "model": shape["name"],
            "path": path,
            "params": safetensors_param_count(path),
            "bytes": folder_bytes(path),
            "seconds": round(time.perf_counter() - t0, 2),
        }
    )


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("outdir")
    ap.add_argument("--shapes", default="1.5b,7b", help="comma-separated subset of: 1.5b,7b")
    ap.add_argument("--device", default="cuda", help="device to build the weights on (default cuda)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tiny", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()

    table = TINY_SHAPES if args.tiny else SHAPES
    keys = [k.strip().lower() for k in args.shapes.split(",") if k.strip()]
    for k in keys:
        if k not in table:
            ap.error(f"unknown shape {k!r}; known: {','.join(table)}")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        ap.error("CUDA is not available; pass --device cpu")
    os.makedirs(args.outdir, exist_ok=True)
    # One tokenizer for every shape (over the smallest vocabulary), written even into folders
    # that already existed.
    vocab = min(shape["vocab_size"] for shape in table.values())
    for k in keys:
        make_one(k, table[k], args.outdir, args.device, args.seed)
        write_tokenizer(os.path.join(args.outdir, table[k]["name"]), vocab)


if __name__ == "__main__":
    sys.exit(main())
