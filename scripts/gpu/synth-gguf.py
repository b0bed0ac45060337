#!/usr/bin/env python3
"""A GGUF with a real model's header and random weights in the same formats, from the header alone.

Moving the 1.5B target to the GPU machine takes 30–34 pieces (about 105–120 s of held machine time);
its header (metadata, tokenizer, tensor shapes and formats) is the first 6 MB. For measuring
kernels and steps, whose speed does not depend on the weights' values, this script rebuilds a
file of the same layout there: every quantized block gets random quants and small positive
scales (finite logits, so sampling and argmax behave), F32 tensors are ones (norms) or small
values (biases). Outputs are meaningless: use it for speed, never for acceptance or text.

    scripts/gpu/synth-gguf.py header OUT      # on the GPU machine
    scripts/gpu/synth-gguf.py --cut GGUF OUT  # here: OUT = the header of GGUF (up to its data)

Numpy only (no `gguf` package). Seeded, so two runs give the same file.
"""

import struct
import sys

try:
    import numpy as np
except ImportError:  # --cut, run on machines without numpy, needs only the header parser
    np = None

# Block size (weights) and bytes per block of the formats the real pair uses.
FORMATS = {0: ("F32", 1, 4), 1: ("F16", 1, 2), 8: ("Q8_0", 32, 34), 12: ("Q4_K", 256, 144),
           14: ("Q6_K", 256, 210), 6: ("Q5_0", 32, 22), 30: ("BF16", 1, 2)}


class Reader:
    def __init__(self, data):
        self.data, self.at = data, 0

    def take(self, fmt):
        v = struct.unpack_from("<" + fmt, self.data, self.at)
        self.at += struct.calcsize("<" + fmt)
        return v[0] if len(v) == 1 else v

    def string(self):
        n = self.take("Q")
        s = self.data[self.at:self.at + n]
        self.at += n
        return s.decode("utf-8", "replace")

    def value(self, kind):
        scalar = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q",
                  12: "d"}
        if kind in scalar:
            return self.take(scalar[kind])
        if kind == 8:
            return self.string()
        if kind == 9:
            inner, n = self.take("I"), self.take("Q")
            return [self.value(inner) for _ in range(n)]
        raise ValueError(f"unknown GGUF value type {kind}")


def parse(header):
    """(metadata dict, [(name, dims, type, offset)], data start) of a GGUF header."""
    r = Reader(header)
    magic, version = r.take("I"), r.take("I")
    if magic != 0x46554747 or version < 2:
        raise SystemExit("not a GGUF v2+ file")
    n_tensors, n_kv = r.take("Q"), r.take("Q")
    meta = {}
    for _ in range(n_kv):
        key = r.string()
        meta[key] = r.value(r.take("I"))
    tensors = []
    for _ in range(n_tensors):
        name = r.string()
        dims = [r.take("Q") for _ in range(r.take("I"))]
        tensors.append((name, dims, r.take("I"), r.take("Q")))
    align = meta.get("general.alignment", 32)
    return meta, tensors, (r.at + align - 1) // align * align


def block_bytes(rng, kind, n_blocks):
    """n_blocks random blocks of a quantized format, with scales that keep values small."""
    name, _, size = FORMATS[kind]
    b = rng.integers(0, 256, size=(n_blocks, size), dtype=np.uint8)
    half = lambda v: np.frombuffer(np.float16(v).tobytes(), np.uint8)
    if name == "Q4_K":  # d, dmin, then 6-bit scales and mins
        b[:, 0:2], b[:, 2:4] = half(0.002), half(0.001)
    elif name == "Q6_K":  # ql, qh, i8 scales[16], d at the end
        b[:, 192:208] = rng.integers(-32, 32, size=(n_blocks, 16)).astype(np.int8).view(np.uint8)
        b[:, 208:210] = half(0.0005)
    elif name in ("Q8_0", "Q5_0"):
        b[:, 0:2] = half(0.002)
    return b


def main():
    if sys.argv[1] == "--cut":
        src, out = sys.argv[2], sys.argv[3]
        with open(src, "rb") as f:
            head = f.read(64 << 20)
        _, _, start = parse(head)
        with open(out, "wb") as f:
            f.write(head[:start])
        print(f"{out}: {start} bytes of header")
        return
    src, out = sys.argv[1], sys.argv[2]
    if np is None:
        raise SystemExit("numpy is needed to write random weights (only --cut works without it)")
    with open(src, "rb") as f:
        head = f.read()
    _, tensors, start = parse(head)
    rng = np.random.default_rng(0)
    with open(out, "wb") as f:
        f.write(head[:start])
        for name, dims, kind, offset in sorted(tensors, key=lambda t: t[3]):
            if kind not in FORMATS:
                raise SystemExit(f"{name}: GGUF type {kind} is not one this script knows")
            fname, block, size = FORMATS[kind]
            count = int(np.prod(dims))
            f.seek(start + offset)
            if fname == "F32":
                v = np.ones(count, np.float32) if "norm" in name else \
                    rng.normal(0, 0.02, count).astype(np.float32)
                f.write(v.tobytes())
            elif fname in ("F16", "BF16"):
                f.write(rng.integers(0x3c00 - 2048, 0x3c00 - 1024, count, dtype=np.uint16).tobytes())
            else:
                f.write(block_bytes(rng, kind, count // block).tobytes())
    print(f"{out}: {len(tensors)} tensors, random weights in the header's formats")


if __name__ == "__main__":
    main()
