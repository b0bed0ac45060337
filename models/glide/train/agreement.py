#!/usr/bin/env python3
"""How well a GLIDE file drafts on bench-spec's prompts, teacher-forced in PyTorch: the target
answers each prompt greedily (transformers), then the drafter proposes k tokens at verification
points of the answer, and the accepted length is the leading run of drafts equal to the
target's choice. Two ways of placing the verification points:

- `fixed`: every k rows from the answer's start, as the training report scores held-out text;
- `rounds`: as specd's engine runs, each round of k drafts starting right after the last
  accepted token (so after a rejection the next round starts where the drafter was just
  wrong), each row seeing the target positions verified before its round (the block-wise mask
  of `glide_model.py`, with specd's blocks: prompt rows and the row after a fully accepted
  round are blocks of their own), the round's first row taking the target's feature (the
  verification row before it; not after the prompt, as in training).

And `passesN`: `rounds` as train.py's report approaches it, in N batched passes of the drafter
(`train.rounds_starts`), to tell how far that approximation is from the exact rounds.

All on the same answers: the gap between fixed and rounds is what the protocol alone costs, to tell a
drafter that drafts poorly from specd running it wrongly (compare `rounds` with `specd
bench-spec --methods glide:K --max-tokens T`).

Usage: python3 agreement.py TARGET.gguf GLIDE.safetensors [--prompts N] [--tokens T] [--k K]
CPU is enough (about a minute to load the 1.5B target, then seconds per prompt on 2 cores).
"""

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from glide_model import load_glide  # noqa: E402
from target import embed_weight, head_weight, load_target, target_pass  # noqa: E402
from train import rounds_starts  # noqa: E402

REPO = Path(__file__).resolve().parents[3]


class Teacher:
    """One prompt's greedy answer and the target's pass over it: what the drafter reads."""

    def __init__(self, model, drafter, seq: torch.Tensor, prompt_len: int):
        self.drafter, self.seq, self.prompt_len = drafter, seq, prompt_len
        self.n = seq.shape[1]
        feature = drafter.cfg.feature != "none"
        out = target_pass(model, seq, drafter.cfg.target_layer, hidden=feature)
        self.out = out
        self.k, self.v = out[0], out[1]
        self.want = out[2].argmax(-1)[0]  # the target's choice after each row
        self.feature = None
        if feature:
            self.feature = torch.zeros_like(out[3])
            self.feature[:, 1:] = out[3][:, :-1]  # a row's feature: the target's row before it

    @torch.no_grad()
    def drafts(self, starts: torch.Tensor, feature_rows: torch.Tensor, rows: range) -> torch.Tensor:
        """The drafter's choices (target ids) at `rows`, its rows under block starts `starts`
        (`[n]`) with the feature on `feature_rows` (`[n]` bool); causal, so rows after the last
        wanted one are left out."""
        end = rows.stop
        d = self.drafter
        pos = torch.arange(end, device=self.seq.device)[None]
        f = None if self.feature is None else self.feature[:, :end]
        # A drafter with `verified_rank` reads the rows before a row's block as verified (what
        # specd's catch-up rewrites them with): the answer's rows, whose rows before a
        # verification computed (not the prompt's: specd keeps no target state for them).
        verified = (pos >= self.prompt_len) if d.cfg.verified_rank else None
        h = d.hidden(self.seq[:, :end], pos, self.k, self.v, starts[:end], f, feature_rows[None, :end], verified_rows=verified)
        head = d.own_head if d.own_head is not None else d.head_rows
        logits = h[0, rows.start : end] @ head.to(h.dtype).T
        return d.vocab_ids[logits.argmax(-1)]

    def fixed(self, k: int) -> list[tuple[int, int]]:
        """(accepted, drafted) of each whole block of k answer rows, blocks every k rows from the
        answer's start (rows of the prompt are blocks of their own)."""
        p, n = self.prompt_len, self.n
        starts = torch.tensor([t if t < p else p + (t - p) // k * k for t in range(n)], device=self.seq.device)
        first = starts == torch.arange(n, device=self.seq.device)
        feature_rows = first & (torch.arange(n, device=self.seq.device) > p)
        blocks = (n - 1 - p) // k
        if blocks <= 0:
            return []
        draft = self.drafts(starts, feature_rows, range(p, p + blocks * k))
        hit = (draft == self.want[p : p + blocks * k]).view(blocks, k)
        lead = torch.cumprod(hit.int(), dim=-1).sum(-1)
        return [(int(a), k) for a in lead]

    def rounds(self, k: int, catch_up_feature: bool = False) -> list[tuple[int, int]]:
        """(accepted, drafted) of each round, rounds placed as specd's engine places them. With
        `catch_up_feature`, the row caught up on after a fully accepted round takes the
        target's feature, as a block's first row does in training."""
        p, n, dev = self.prompt_len, self.n, self.seq.device
        starts = torch.arange(n, device=dev)
        feature_rows = torch.zeros(n, dtype=torch.bool, device=dev)
        out = []
        s = p
        # Rows up to n - 2: a draft at row t is checked against the answer's token t + 1.
        while s <= n - 2:
            rows = range(s, min(s + k, n - 1))
            starts[s:] = s
            feature_rows[s] = s > p
            draft = self.drafts(starts, feature_rows, rows)
            hit = draft == self.want[rows.start : rows.stop]
            a = int(torch.cumprod(hit.int(), dim=-1).sum())
            out.append((a, len(rows)))
            # Rows s..s+a stay as drafted; after a fully accepted round the drafter catches up on
            # the last draft's row in a block of its own, without a feature.
            if a == len(rows) and s + a < n:
                starts[s + a] = s + a
                feature_rows[s + a] = catch_up_feature
            s = s + a + 1
            starts[s:] = torch.arange(s, n, device=dev)
        return out

    def passes(self, k: int, n: int) -> list[tuple[int, int]]:
        """(accepted, drafted) of each round as train.py's report places them: `rounds`
        approached in `n` batched passes (`train.rounds_starts`) instead of round by round."""
        # Loss rows as training marks them (from the prompt's last row): rounds then start at
        # the answer's first row, as `rounds`.
        mask = torch.zeros(1, self.n, dtype=torch.bool, device=self.seq.device)
        mask[0, self.prompt_len - 1 : self.n - 1] = True
        return rounds_starts(self.drafter, self.seq, mask, self.out, self.want[None], k, n)[1]


def summary(name: str, results: list[tuple[int, int]]) -> str:
    accepted = sum(a for a, _ in results)
    drafted = sum(d for _, d in results)
    mean = accepted / max(len(results), 1) + 1
    return f"{name} acceptance {accepted / max(drafted, 1):.3f}, mean accepted length {mean:.2f} ({len(results)} blocks)"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("target")
    ap.add_argument("glide")
    ap.add_argument("--prompts", type=int, default=20, help="the first N bench-spec prompts")
    ap.add_argument("--tokens", type=int, default=64, help="answer tokens per prompt")
    ap.add_argument("--k", type=int, default=4, help="drafts per verification")
    ap.add_argument("--passes", type=int, default=3, help="passes of the report's batched rounds (`passesN`)")
    ap.add_argument("--catch-up-feature", action="store_true",
                    help="also `rounds+`: the row caught up on after a fully accepted round takes the target's feature")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    a = ap.parse_args()

    dtype = torch.bfloat16 if a.device.startswith("cuda") else torch.float32
    model, tok = load_target(a.target, a.device, dtype)
    drafter = load_glide(a.glide, embed_weight(model).detach(), head_weight(model).detach()).to(a.device).eval()
    texts = [p["text"] for p in json.loads((REPO / "scripts/bench/code_prompts.json").read_text())["prompts"]]
    every = {"fixed": [], "rounds": [], f"passes{a.passes}": []}
    for i, text in enumerate(texts[: a.prompts]):
        chat = tok.apply_chat_template([{"role": "user", "content": text}], tokenize=False, add_generation_prompt=True)
        ids = tok(chat, return_tensors="pt", add_special_tokens=False)["input_ids"].to(a.device)
        with torch.no_grad():
            seq = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=a.tokens, do_sample=False)
            teacher = Teacher(model, drafter, seq, ids.shape[1])
        fixed, rounds = teacher.fixed(a.k), teacher.rounds(a.k)
        every["fixed"] += fixed
        every["rounds"] += rounds
        every[f"passes{a.passes}"] += teacher.passes(a.k, a.passes)
        if a.catch_up_feature:
            every.setdefault("rounds+", []).extend(teacher.rounds(a.k, catch_up_feature=True))
        print(f"prompt {i}: {seq.shape[1] - ids.shape[1]} answer tokens; {summary('fixed', fixed)}; {summary('rounds', rounds)}", flush=True)
    print(f"all {len(texts[: a.prompts])} prompts, k = {a.k}:")
    for name, results in every.items():
        print("  " + summary(name, results))


if __name__ == "__main__":
    main()
