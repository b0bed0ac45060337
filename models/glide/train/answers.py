"""The target's answers kept between GPU sessions: an answer cache.

Generating the target's greedy answers is most of what `train.py prepare` spends on a GPU
(2.7 M answer tokens took 231 s of session 18's 1,800), and a session's answers were lost with
its machine. Greedy answers are deterministic, so they can be kept: `prepare --answers-out FILE`
writes the answers this call generated, and a later `prepare --answers-in FILE...` trains on
them again and answers only prompts none of them covers, so each session adds answers instead
of making the same ones again.

A cache holds (prompt + answer ids, index of the first answer id) pairs, as `prepare` makes
them, with what they depend on: the longest answer (`--gen-tokens`) and a fingerprint of the
target (samples of its weights, its chat template and end ids); a cache made for another target
or answer length is refused. `--answers-in` adds every kept answer to the training data, those
of other prompt ranges too (that is the point: each session adds answers); each cache records
the prompt range it answered (`--skip-prompts`, `--prompts`, how many were answered), so the
same data can be made again without it: answers are greedy, and a cache only saves time.

File: an xz-compressed `torch.save` of int32 tensors (ids laid end to end, lengths, starts).
"""

from __future__ import annotations

import lzma

import torch

FORMAT = "specd-glide-answers/1"


def target_fingerprint(model, tok) -> str:
    """A short fingerprint of the target: sums (as f64, the same on any device) over samples of
    its weights (embedding and head rows, the first layer's query and down projections, the
    final norm: two quantizations of one model differ in them) and a hash of its chat template
    and end-of-turn ids."""
    import hashlib

    m = model.model
    samples = [
        m.embed_tokens.weight[:256],
        model.get_output_embeddings().weight[:256],
        m.layers[0].self_attn.q_proj.weight,
        m.layers[0].mlp.down_proj.weight,
        m.norm.weight,
    ]
    sums = [f"{float(t.detach().to('cpu', torch.float64).abs().sum()):.6e}" for t in samples]
    text = f"{tok.chat_template}|{tok.convert_tokens_to_ids('<|im_end|>')}|{tok.eos_token_id}"
    return "/".join(sums) + "/" + hashlib.sha256(text.encode()).hexdigest()[:16]


def save_answers(path: str, answers: list[tuple[list[int], int]], gen_tokens: int, fingerprint: str, prompts: dict | None = None) -> None:
    """Writes the cache (through a temporary file: a call cut off mid-write leaves no partial
    cache for the next prepare to read). `prompts` says which prompt range it answered."""
    import os

    lengths = torch.tensor([len(ids) for ids, _ in answers], dtype=torch.int32)
    starts = torch.tensor([s for _, s in answers], dtype=torch.int32)
    flat = torch.tensor([t for ids, _ in answers for t in ids], dtype=torch.int32)
    blob = {
        "format": FORMAT,
        "gen_tokens": gen_tokens,
        "target": fingerprint,
        "ids": flat,
        "lengths": lengths,
        "starts": starts,
        "prompts": prompts or {},
    }
    part = path + ".partial"
    with lzma.open(part, "wb", preset=3) as f:
        torch.save(blob, f)
    os.replace(part, path)


def load_answers(path: str, gen_tokens: int, fingerprint: str) -> list[tuple[list[int], int]]:
    import io

    try:
        with lzma.open(path, "rb") as f:
            blob = torch.load(io.BytesIO(f.read()), weights_only=True)
    except Exception as e:
        raise SystemExit(f"{path}: not a readable answer cache ({e!r})") from e
    if not isinstance(blob, dict) or blob.get("format") != FORMAT:
        raise SystemExit(f"{path}: not an answer cache ({FORMAT})")
    if blob["gen_tokens"] != gen_tokens:
        raise SystemExit(f"{path}: answers of at most {blob['gen_tokens']} tokens, but --gen-tokens is {gen_tokens}")
    if blob["target"] != fingerprint:
        raise SystemExit(f"{path}: answers of another target (fingerprint {blob['target']}, this one {fingerprint})")
    ids = blob["ids"].tolist()
    out, at = [], 0
    for n, s in zip(blob["lengths"].tolist(), blob["starts"].tolist()):
        out.append((ids[at : at + n], s))
        at += n
    return out


def merge(caches: list[list[tuple[list[int], int]]]) -> dict[tuple[int, ...], tuple[list[int], int]]:
    """The cached answers by prompt (its ids); the first cache to answer a prompt wins."""
    known: dict[tuple[int, ...], tuple[list[int], int]] = {}
    for cache in caches:
        for ids, start in cache:
            known.setdefault(tuple(ids[:start]), (ids, start))
    return known


if __name__ == "__main__":
    # A round trip and the refusals (CPU, a second): python3 models/glide/train/answers.py
    import os
    import tempfile

    answers = [([1, 2, 3, 40, 41], 3), ([7, 8, 90], 2), ([1, 2, 3, 40, 41], 3)]
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "a.pt.xz")
        save_answers(path, answers, 192, "fp", {"skip": 0, "count": 3, "answered": 3})
        assert load_answers(path, 192, "fp") == answers, "the round trip changed the answers"
        assert not os.path.exists(path + ".partial"), "the temporary file was left"
        broken = os.path.join(tmp, "broken.pt.xz")
        with open(path, "rb") as f, open(broken, "wb") as g:
            g.write(f.read()[:40])
        try:
            load_answers(broken, 192, "fp")
        except SystemExit as e:
            assert "not a readable answer cache" in str(e), e
        else:
            raise AssertionError("a cut-off cache was read")
        for gen, fp, what in ((128, "fp", "--gen-tokens"), (192, "other", "another target")):
            try:
                load_answers(path, gen, fp)
            except SystemExit as e:
                assert what in str(e), e
            else:
                raise AssertionError(f"a cache of {what} was taken")
        known = merge([answers, [([7, 8, 91], 2)]])
        assert known == {(1, 2, 3): ([1, 2, 3, 40, 41], 3), (7, 8): ([7, 8, 90], 2)}, known
    print("answers: ok")
