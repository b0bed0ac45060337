#!/usr/bin/env python3
"""Write llama.cpp's tokenization of a fixed set of strings as an independent reference for
specd's GGUF tokenizer: engine/tests/fixtures/tokenizer/qwen2_llamacpp_refs.json.

Run with the venv made by scripts/bench/setup-llamacpp:

    ~/.cache/specd/bench/venv/bin/python scripts/bench/make_tokenizer_refs.py [--model DRAFT.gguf]
        [--out PATH] [--metadata TARGET.gguf ...]

The draft GGUF (Qwen2.5-Coder-0.5B-Instruct) is loaded with vocab_only=True. Every case is
`tokenize(text.encode(), add_bos=False, special=<flag>)`; then the ids are detokenized again
(llama_detokenize, remove_special=False, unparse_special=<flag>) and "roundtrip" records whether
that gives back the exact input text.

With --metadata it also prints llama.cpp's view of the GGUF metadata (architecture,
tokenizer.ggml.pre, bos/eos ids, chat template head) and, through the `gguf` package, a count of
tensor quantization types.
"""

import argparse
import ctypes
import json
import os
import sys
from collections import Counter, defaultdict

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
MODELS = os.path.expanduser(os.path.join(os.environ.get("SPECD_HOME", "~/.cache/specd"), "models"))
DRAFT = os.path.join(MODELS, "qwen2.5-coder-0.5b-instruct.gguf")
TARGET = os.path.join(MODELS, "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf")
OUT = os.path.join(REPO, "engine", "tests", "fixtures", "tokenizer", "qwen2_llamacpp_refs.json")

CHATML = (
    "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n"
    "<|im_start|>user\nWrite a Python function that reverses a string.<|im_end|>\n"
    "<|im_start|>assistant\n"
    "```python\ndef reverse(s: str) -> str:\n    return s[::-1]\n```<|im_end|>\n"
)

# (text, special) pairs. special=True is the default; a few special-token strings are also
# tokenized with special=False (the markers must then be split as plain text).
TEXTS = [
    # plain words and the fixed anchor
    "def",
    "Hello world",
    "Hello, world!",
    " Hello world",
    "hello   world",
    # code
    "def add(a, b):\n    return a + b\n",
    "    return x",
    "class Foo:\n    def __init__(self):\n        self.x = 1\n\n\n    def bar(self):\n        pass\n",
    "fn main() {\n    let v: Vec<u32> = (0..10).map(|x| x * 2).collect();\n    println!(\"{:?}\", v);\n}\n",
    "impl<'a> Iterator for Tokens<'a> {\n    type Item = &'a str;\n}",
    "const f = async (x) => { return await fetch(`/api/${x}`); };\n",
    "#include <stdio.h>\n\nint main(void) {\n\tprintf(\"%d\\n\", 42);\n\treturn 0;\n}\n",
    "if (a && b || !c) { x += 1; } else { x -= 1; }",
    "for i in range(10):\n\tprint(i)\n",
    "line with trailing spaces   \nnext line\t\t\n",
    "\n\n",
    "a\n\nb\n\n\nc",
    "\r\nwindows\r\nline endings\r\n",
    # numbers
    "12345",
    "3.14159",
    "x = 1234567890 + 0.001 - 42e-3",
    "v1.2.3 and 2024-11-26 at 23:59:59",
    # contractions
    "don't",
    "I'LL be back, we've seen it, they're here, she's gone, I'd go, it's 'quoted'",
    "DON'T SHOUT",
    # Unicode
    "café naïve résumé über Straße",
    "你好世界",
    "こんにちは、世界！カタカナ",
    "🚀 launch",
    "👨\u200d👩\u200d👧\u200d👦 family",
    "e\u0301 a\u0308 n\u0303",
    "مرحبا بالعالم",
    "Привет, мир",
    "mixed 中文 and English 🙂 text",
    # whitespace
    "",
    " ",
    "   ",
    "\t",
    "\n",
    " \n \t \n",
    "                                                                ",
    # punctuation
    "!!!???...,,,;;;:::---___+++===***&&&|||^^^%%%$$$###@@@~~~```'''\"\"\"<<<>>>[[[]]]{{{}}}(((///\\\\\\",
    # special tokens in text
    "<|im_start|>",
    "<|im_end|>",
    "<|endoftext|>",
    "before<|im_start|>user\nhi<|im_end|>after",
    "text <|endoftext|> more text",
    CHATML,
]
SPECIAL_FALSE = [
    "<|im_start|>",
    "<|im_end|>",
    "<|endoftext|>",
    "before<|im_start|>user\nhi<|im_end|>after",
    CHATML,
]


def detokenize(llama_cpp, vocab, ids, special):
    arr = (llama_cpp.llama_token * max(len(ids), 1))(*ids)
    cap = 64 + 64 * len(ids)
    buf = ctypes.create_string_buffer(cap)
    n = llama_cpp.llama_detokenize(vocab, arr, len(ids), buf, cap, False, special)
    if n < 0:
        cap = -n + 1
        buf = ctypes.create_string_buffer(cap)
        n = llama_cpp.llama_detokenize(vocab, arr, len(ids), buf, cap, False, special)
    return buf.raw[:n]


def print_metadata(llama_cpp, path):
    print(f"\n=== {os.path.basename(path)} ===")
    llm = llama_cpp.Llama(model_path=path, vocab_only=True, verbose=False)
    md = llm.metadata
    for k in ["general.architecture", "general.name", "general.file_type", "tokenizer.ggml.model",
              "tokenizer.ggml.pre", "tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id",
              "tokenizer.ggml.padding_token_id", "tokenizer.ggml.add_bos_token",
              "qwen2.context_length", "qwen2.embedding_length", "qwen2.block_count",
              "qwen2.attention.head_count", "qwen2.attention.head_count_kv",
              "qwen2.feed_forward_length", "qwen2.rope.freq_base",
              "qwen2.attention.layer_norm_rms_epsilon"]:
        print(f"  {k} = {md.get(k)}")
    vocab = llama_cpp.llama_model_get_vocab(llm.model)
    print(f"  llama.cpp: n_vocab={llama_cpp.llama_vocab_n_tokens(vocab)} "
          f"bos={llama_cpp.llama_vocab_bos(vocab)} eos={llama_cpp.llama_vocab_eos(vocab)} "
          f"eot={llama_cpp.llama_vocab_eot(vocab)} pad={llama_cpp.llama_vocab_pad(vocab)} "
          f"nl={llama_cpp.llama_vocab_nl(vocab)} add_bos={llama_cpp.llama_vocab_get_add_bos(vocab)}")
    eog = [i for i in range(llama_cpp.llama_vocab_n_tokens(vocab)) if llama_cpp.llama_vocab_is_eog(vocab, i)]
    print(f"  end-of-generation ids: {eog}")
    tmpl = md.get("tokenizer.chat_template", "")
    print(f"  chat_template ({len(tmpl)} chars), first 200: {tmpl[:200]!r}")
    llm.close()
    try:
        import gguf
    except ImportError:
        print("  (gguf package not installed: no tensor types)")
        return
    r = gguf.GGUFReader(path)
    by_type = Counter()
    names = defaultdict(list)
    nbytes = Counter()
    for t in r.tensors:
        tn = t.tensor_type.name
        by_type[tn] += 1
        nbytes[tn] += int(t.n_bytes)
        # collapse the layer index to summarize by tensor role
        role = ".".join(p if not p.isdigit() else "N" for p in t.name.split("."))
        names[(tn, role)].append(t.name)
    print(f"  tensors: {len(r.tensors)}; by type: " +
          ", ".join(f"{k}={v} ({nbytes[k] / 2**20:.1f} MiB)" for k, v in sorted(by_type.items())))
    for (tn, role), lst in sorted(names.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        print(f"    {role:<32} {tn:<6} x{len(lst)}")
    return


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=DRAFT)
    ap.add_argument("--out", default=OUT)
    ap.add_argument("--metadata", nargs="*", default=None,
                    help="GGUF files whose metadata to print (no argument: draft and target)")
    args = ap.parse_args()

    import llama_cpp

    llm = llama_cpp.Llama(model_path=args.model, vocab_only=True, verbose=False)
    vocab = llama_cpp.llama_model_get_vocab(llm.model)

    cases = []
    plan = [(t, True) for t in TEXTS] + [(t, False) for t in SPECIAL_FALSE]
    for text, special in plan:
        ids = llm.tokenize(text.encode("utf-8"), add_bos=False, special=special)
        back = detokenize(llama_cpp, vocab, ids, special)
        cases.append({
            "text": text,
            "special": special,
            "ids": ids,
            "roundtrip": back == text.encode("utf-8"),
        })

    by_text = {(c["text"], c["special"]): c["ids"] for c in cases}
    assert by_text[("def", True)] == [750], by_text[("def", True)]

    doc = {
        "model": os.path.basename(args.model),
        "sha256_prefix": "1d9614638d18",
        "llama_cpp_python": llama_cpp.__version__,
        "generator": "scripts/bench/make_tokenizer_refs.py",
        "call": "Llama(vocab_only=True).tokenize(text.encode(), add_bos=False, special=special); "
                "roundtrip = llama_detokenize(ids, remove_special=False, unparse_special=special) == text",
        "cases": cases,
    }
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w", encoding="utf-8") as f:
        # one case per line: readable, and diffs stay small when a case changes
        head = {k: v for k, v in doc.items() if k != "cases"}
        f.write(json.dumps(head, ensure_ascii=False, indent=1)[:-2] + ',\n "cases": [\n')
        f.write(",\n".join("  " + json.dumps(c, ensure_ascii=False) for c in cases))
        f.write("\n ]\n}\n")

    print(f"wrote {len(cases)} cases to {args.out}")
    for key in [("def", True), ("Hello world", True), (" Hello world", True), ("<|im_end|>", True),
                ("<|im_end|>", False), ("    return x", True), ("12345", True), ("你好世界", True)]:
        print(f"  {key[0]!r:<20} special={key[1]!s:<5} -> {by_text[key]}")
    bad = [c for c in cases if not c["roundtrip"]]
    print(f"roundtrip: {len(cases) - len(bad)}/{len(cases)} exact" +
          ("" if not bad else "; not exact: " + ", ".join(repr(c["text"][:30]) for c in bad)))
    llm.close()

    if args.metadata is not None:
        for p in (args.metadata or [args.model, TARGET]):
            print_metadata(llama_cpp, p)


if __name__ == "__main__":
    main()
