"""The target's answers kept between GPU sessions: an answer cache.

Generating the target's greedy answers is most of what `train.py prepare` spends on a GPU
(2.7 M answer tokens took 231 s of session 18's 1,800), and a session's answers were lost with
its machine. Greedy answers are deterministic, so they can be kept: `prepare --answers-out FILE`
writes the answers this call generated, and a later `prepare --answers-in FILE...` trains on
them again and answers only prompts none of them covers, so each session adds answers instead
of making the same ones again.

A cache holds (prompt + answer ids, index of the first answer id) pairs, as `prepare` makes
them, with what they depend on: the longest answer (`--gen-tokens`) and a fingerprint of the
target's weights; a cache made for another target or answer length is refused. It is a cache,
not a source: the same command without it makes the same answers again.

File: an xz-compressed `torch.save` of int32 tensors (ids laid end to end, lengths, starts).
"""

from __future__ import annotations

import lzma

import torch

FORMAT = "specd-glide-answers/1"


def target_fingerprint(embed: torch.Tensor) -> str:
    """A short fingerprint of the target's weights (a sum over its first embedding rows, as
    f64: the same weights give the same text on any device)."""
    rows = embed[:256].detach().to("cpu", torch.float64)
    return f"{float(rows.sum()):.6e}/{float(rows.abs().sum()):.6e}"


def save_answers(path: str, answers: list[tuple[list[int], int]], gen_tokens: int, fingerprint: str) -> None:
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
    }
    with lzma.open(path, "wb", preset=3) as f:
        torch.save(blob, f)


def load_answers(path: str, gen_tokens: int, fingerprint: str) -> list[tuple[list[int], int]]:
    with lzma.open(path, "rb") as f:
        blob = torch.load(f, weights_only=True)
    if blob.get("format") != FORMAT:
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
        save_answers(path, answers, 192, "fp")
        assert load_answers(path, 192, "fp") == answers, "the round trip changed the answers"
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
