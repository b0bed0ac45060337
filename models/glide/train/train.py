#!/usr/bin/env python3
"""Trains specd's GLIDE drafter for a frozen target (Qwen2.5-Coder-1.5B-Instruct by default).

Two stages, each rerunnable with the same seeds:

  prepare  loads the target, collects permissively licensed Python source on this machine
           (corpus.py; a held-out split by content hash), has the target answer code prompts
           made from that source (self-distillation: greedy, its own chat template, decoded in
           large batches by fastgen.py), picks the
           draft vocabulary (the most frequent target tokens in the training text) and writes
           everything to WORK/data.pt, with WORK/manifest.json naming every source and licence.
  train    trains the drafter on that data against the target's own distributions: for each
           row, the target's next-token distribution renormalized on the draft vocabulary is the
           label (soft cross-entropy); the cross-attention reads the target layer's keys and
           values under the paper's block-wise mask (random blocks of 1..MAX_BLOCK rows, each row
           seeing target positions before its block). Writes OUT (specd's GLIDE file) and
           WORK/report.json (losses, held-out agreement and simulated acceptance).

Usage (the GPU machine: scripts/gpu/train-glide runs both):
  python3 train.py prepare --target TARGET.gguf --work WORK
  python3 train.py train   --target TARGET.gguf --work WORK --out glide.safetensors
  python3 train.py train   ... --resume glide.safetensors   (more steps from a file it wrote)
  python3 train.py train   ... --steps S --segment 0/2 --state STATE   then
  python3 train.py train   ... --steps S --segment 1/2 --state STATE --resume glide.safetensors
                           (one schedule of S steps over two calls, as one call of S steps
                           would train it: check_segments.py)
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from answers import load_answers, merge, save_answers, target_fingerprint  # noqa: E402
from corpus import collect, make_prompts  # noqa: E402
from fastgen import FastDecoder  # noqa: E402
from glide_model import CONFIG_KEY, GlideConfig, GlideDrafter, load_glide, random_block_starts, save_glide  # noqa: E402
from target import embed_weight, head_weight, load_target, save_target, target_pass, target_shapes  # noqa: E402

REPO = Path(__file__).resolve().parents[3]
START = time.time()
GEN_SORT_RUN = 4


def _version(package: str) -> str:
    import importlib.metadata

    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "absent"


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def bench_prompt_texts() -> list[str]:
    """bench-spec's 20 prompts, in its order."""
    path = REPO / "scripts/bench/code_prompts.json"
    return [p["text"] for p in json.loads(path.read_text())["prompts"]]


def bench_prompts() -> set[str]:
    """bench-spec's prompts: none may be used for training."""
    return {t.strip() for t in bench_prompt_texts()}


# ---------------------------------------------------------------- prepare


@torch.no_grad()
def generate_answers(model, tok, prompts: list[list[int]], batch: int, batch_tokens: int, max_new: int, device: str, deadline: float):
    """The target's greedy chat answers to `prompts` (their chat ids, `chat_ids`): (prompt +
    answer ids, index of the first answer id).

    A batch holds at most `batch` prompts and at most `batch_tokens` ids once answered (rows ×
    (longest prompt + `max_new`)): the static cache of fastgen.py holds that many positions."""
    if not prompts:
        return []
    eos = end_ids(tok)
    decoder = FastDecoder(model)
    out = []
    t0 = time.time()
    ids = prompts
    # Batches of similar length (less padding): sorted within runs of GEN_SORT_RUN batches,
    # so that a deadline still leaves a sample of every length.
    run = batch * GEN_SORT_RUN
    ids = [x for i in range(0, len(ids), run) for x in sorted(ids[i : i + run], key=len)]
    done = answer_tokens = 0
    for group in length_batches(ids, batch, batch_tokens, max_new):
        if time.time() - t0 > deadline:
            log(f"  generation deadline: {done} of {len(prompts)} prompts answered")
            break
        for prompt, answer in zip(group, decoder.generate(group, max_new, eos)):
            # Through the first end-of-turn token (the target emits it; the drafter should
            # learn to propose it too).
            out.append((list(prompt) + answer, len(prompt)))
            answer_tokens += len(answer)
        done += len(group)
        rate = answer_tokens / max(time.time() - t0, 1e-9)
        log(f"  answered {done}/{len(prompts)} prompts ({len(group)} in this batch; {answer_tokens} answer tokens, {rate:.0f}/s)")
    return out


def end_ids(tok) -> list[int]:
    return [tok.convert_tokens_to_ids(t) for t in ("<|im_end|>", "<|endoftext|>") if t in tok.get_vocab()]


def chat_ids(tok, prompts: list[str]) -> list[list[int]]:
    if not prompts:
        return []  # the tokenizer fails on an empty batch
    texts = [
        tok.apply_chat_template([{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True)
        for p in prompts
    ]
    return tok(texts, add_special_tokens=False)["input_ids"]


@torch.no_grad()
def check_fastgen(model, tok, prompts: list[str], max_new: int) -> None:
    """fastgen.py's answers against transformers' `generate`, one prompt at a time: logged, and
    fatal only if no answer agrees on its first 16 tokens (bf16 rounding may flip near ties
    later on, which changes the rest of an answer)."""
    eos = end_ids(tok)
    ids = chat_ids(tok, prompts)
    fast = FastDecoder(model).generate(ids, max_new, eos)
    same = prefix = 0
    for p, f in zip(ids, fast):
        x = torch.tensor([p], device=model.device)
        ref = model.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=max_new, do_sample=False,
                             eos_token_id=eos, pad_token_id=eos[-1])[0, len(p):].tolist()
        ref = ref[: next((j + 1 for j, t in enumerate(ref) if t in eos), len(ref))]
        same += int(ref == f)
        prefix += int(ref[:16] == f[:16])
    log(f"  fastgen check: {same}/{len(ids)} answers equal transformers' generate, {prefix}/{len(ids)} on their first 16 tokens")
    if prefix == 0:
        raise SystemExit("fastgen.py disagrees with transformers' generate from the start: not generating with it")


def length_batches(ids: list[list[int]], rows: int, tokens: int, max_new: int):
    """Consecutive groups of `ids` of at most `rows` prompts and at most `tokens` ids once
    padded to the group's longest prompt and answered."""
    group: list[list[int]] = []
    longest = 0
    for x in ids:
        if group and (len(group) == rows or (len(group) + 1) * (max(longest, len(x)) + max_new) > tokens):
            yield group
            group, longest = [], 0
        group.append(x)
        longest = max(longest, len(x))
    if group:
        yield group


def tokenize_files(tok, files, limit: int, eos: int) -> list[int]:
    """Files' tokens, each file followed by `eos`, until `limit` tokens."""
    ids: list[int] = []
    for i in range(0, len(files), 256):
        enc = tok([f.text for f in files[i : i + 256]], add_special_tokens=False)["input_ids"]
        for e in enc:
            ids.extend(e)
            ids.append(eos)
        if len(ids) >= limit:
            break
    return ids[:limit]


def draft_vocab_of(glide_file: str) -> torch.Tensor:
    """The target ids of a GLIDE file's draft vocabulary, in row order."""
    from safetensors import safe_open

    from glide_model import VOCAB_TENSOR

    with safe_open(glide_file, "pt") as f:
        return f.get_tensor(VOCAB_TENSOR).long()


def windows(ids: list[int], length: int) -> torch.Tensor:
    n = len(ids) // length
    return torch.tensor(ids[: n * length], dtype=torch.int32).view(n, length)


def cmd_prepare(a, loaded=None) -> None:
    random.seed(a.seed)
    torch.manual_seed(a.seed)
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    if loaded is None:
        log(f"loading the target {a.target}")
        loaded = load_target(a.target, a.device)
    model, tok = loaded
    if a.save_target:
        # The dequantized target as a Hugging Face folder: `train --target DIR` loads it in
        # seconds instead of dequantizing the GGUF again.
        log(f"saving the dequantized target to {a.save_target}")
        save_target(model, tok, a.save_target)
    eos = tok.convert_tokens_to_ids("<|endoftext|>")
    # Answer caches are read (and refused) before anything is generated.
    fingerprint = target_fingerprint(model, tok)
    cached = merge([load_answers(p, a.gen_tokens, fingerprint) for p in a.answers_in])

    log("collecting Python source")
    corpus = collect()
    held_in = [f for f in corpus.files if not f.held_out]
    held_out = [f for f in corpus.files if f.held_out]
    log(f"  {len(corpus.files)} files from {len(corpus.licences)} packages ({len(held_out)} held out)")

    # Held-out answers answer prompts made from held-out files, and are generated first, so
    # that neither the split nor the files chosen depend on how fast generation runs.
    exclude = bench_prompts()
    eval_prompts = make_prompts(held_out, a.eval_prompts, a.seed + 1, exclude, a.prompts_per_file)
    prompts = make_prompts(held_in, a.skip_prompts + a.prompts, a.seed, exclude, a.prompts_per_file)[a.skip_prompts :]
    log(f"  {len(prompts)} training prompts (after the first {a.skip_prompts}) and {len(eval_prompts)} held-out ones")
    check_fastgen(model, tok, eval_prompts[:4], 64)
    log(f"generating the target's answers to {len(eval_prompts)} held-out and {len(prompts)} training prompts")
    t0 = time.time()
    distill_eval = generate_answers(
        model, tok, chat_ids(tok, eval_prompts), a.gen_batch, a.gen_batch_tokens, a.gen_tokens, a.device, a.gen_deadline
    )
    # Answers kept by earlier sessions (answers.py, read first) train again; only prompts none
    # of them answered are answered now.
    todo = [ids for ids in chat_ids(tok, prompts) if tuple(ids) not in cached]
    if a.answers_in:
        log(f"  {len(cached)} answers from {len(a.answers_in)} cache file(s); {len(prompts) - len(todo)} of this call's prompts among them")
    fresh = generate_answers(
        model, tok, todo, a.gen_batch, a.gen_batch_tokens, a.gen_tokens, a.device, a.gen_deadline - (time.time() - t0)
    )
    gen_s = time.time() - t0
    if a.answers_out:
        answered = {"skip": a.skip_prompts, "count": a.prompts, "answered": len(fresh), "seed": a.seed}
        save_answers(a.answers_out, fresh, a.gen_tokens, fingerprint, answered)
        log(f"  kept this call's {len(fresh)} answers in {a.answers_out} ({os.path.getsize(a.answers_out)} bytes)")
    distill = list(cached.values()) + fresh
    # bench-spec's prompts, answered as bench-spec measures them (128 tokens): for evaluation
    # only, so that the report can be set beside what specd measures on them.
    bench_eval = generate_answers(model, tok, chat_ids(tok, bench_prompt_texts()), a.gen_batch, a.gen_batch_tokens, 128, a.device, 60)

    log("tokenizing the source")
    random.Random(a.seed + 2).shuffle(held_in)
    random.Random(a.seed + 3).shuffle(held_out)
    code = tokenize_files(tok, held_in, a.code_tokens, eos)
    code_eval = tokenize_files(tok, held_out, a.eval_tokens, eos)

    counts = torch.bincount(torch.tensor(code, dtype=torch.long), minlength=model.config.vocab_size)
    for ids, start in distill:
        counts += torch.bincount(torch.tensor(ids[start:], dtype=torch.long), minlength=model.config.vocab_size)
    if a.vocab_from:
        # The draft vocabulary of an earlier drafter, so that `train --resume` can go on from it.
        vocab_ids = draft_vocab_of(a.vocab_from)
        log(f"  the draft vocabulary of {a.vocab_from}: {len(vocab_ids)} tokens")
    else:
        vocab_ids = torch.argsort(counts, descending=True, stable=True)[: a.draft_vocab]

    in_vocab = torch.zeros(model.config.vocab_size, dtype=torch.bool)
    in_vocab[vocab_ids] = True
    answer_eval_tokens = torch.tensor([t for ids, s in distill_eval for t in ids[s:]], dtype=torch.long)
    coverage = {
        "held_out_code": float(in_vocab[torch.tensor(code_eval, dtype=torch.long)].float().mean()),
        "held_out_answers": float(in_vocab[answer_eval_tokens].float().mean()),
    }
    stats = {
        "files": len(corpus.files),
        "held_out_files": len(held_out),
        "code_tokens": len(code),
        "code_eval_tokens": len(code_eval),
        "prompts": len(prompts),
        "answers": len(distill),
        "cached_answers": len(cached),
        "new_answers": len(fresh),
        "answer_tokens": sum(len(i) - s for i, s in distill),
        "eval_prompts": len(eval_prompts),
        "eval_answers": len(distill_eval),
        "generation_seconds": round(gen_s, 1),
        "draft_vocab": a.draft_vocab,
        "draft_vocab_coverage": coverage,
    }
    log(f"  {json.dumps(stats)}")
    torch.save(
        {
            "code": windows(code, a.seq_len),
            "code_eval": windows(code_eval, a.seq_len),
            "distill": distill,
            "distill_eval": distill_eval,
            "bench_eval": bench_eval,
            "vocab_ids": vocab_ids,
            "stats": stats,
            "args": vars(a),
        },
        work / "data.pt",
    )
    (work / "manifest.json").write_text(
        json.dumps({"sources": corpus.manifest(), "example_prompts": prompts[:10], "stats": stats}, indent=1)
    )
    log(f"wrote {work / 'data.pt'}")


# ---------------------------------------------------------------- train


def padded(samples, length: int, pad: int):
    """Right-padded ids `[B, length]` and the rows whose next token is an answer token. A
    sample longer than `length` loses the start of its prompt (the target's labels are then
    its distribution on the shorter context, which is what the drafter sees too)."""
    ids = torch.full((len(samples), length), pad, dtype=torch.long)
    mask = torch.zeros((len(samples), length), dtype=torch.bool)
    for r, (toks, start) in enumerate(samples):
        cut = max(0, len(toks) - length)
        toks, start = toks[cut:], max(start - cut, 1)
        ids[r, : len(toks)] = torch.tensor(toks)
        # Row p predicts token p + 1: rows start-1 .. len-2.
        mask[r, start - 1 : len(toks) - 1] = True
    return ids, mask


def answer_batch(distill, rng: random.Random, tokens: int, longest: int):
    """Answers drawn at random until the batch, padded to its longest sample (a multiple of
    64, at most `longest`), would hold more than `tokens` ids."""
    picks, width = [], 0
    while True:
        s = distill[rng.randrange(len(distill))]
        w = min(longest, -(-len(s[0]) // 64) * 64)
        if picks and (len(picks) + 1) * max(width, w) > tokens:
            return padded(picks, width, 0)
        picks.append(s)
        width = max(width, w)


def batches(data, a, rng: random.Random):
    """An endless, seeded mix of code windows and target answers, each batch about
    batch × seq_len ids."""
    code, distill = data["code"], data["distill"]
    # Answers are few next to source (run 2 drew each of its 2,688 about 18 times and did worse
    # on new prompts than run 1): past --answer-epochs draws per answer, batches are source.
    allowed = a.answer_epochs * len(distill)
    drawn = 0
    while True:
        if rng.random() < a.distill_share and drawn < allowed:
            ids, mask = answer_batch(distill, rng, a.batch * a.seq_len, a.answer_len)
            drawn += ids.shape[0]
        else:
            rows = [rng.randrange(code.shape[0]) for _ in range(a.batch)]
            ids = code[rows].long()
            mask = torch.ones_like(ids, dtype=torch.bool)
            mask[:, -1] = False
        yield ids, mask


def feature_inputs(hidden, starts, mask):
    """What a drafter with a feature reads (see glide_model.GlideDrafter.feature_input): the
    target's final hidden state of the row before each row, the rows that take it (the first
    row of each block whose row before is a loss row: a row of answer or source; the rows of a
    prompt are read as catch-up in specd, without a feature), and the rows a
    `last_hidden_chain` drafter feeds its own hidden state (the later rows of such blocks)."""
    feature = torch.zeros_like(hidden)
    feature[:, 1:] = hidden[:, :-1]
    first = starts == torch.arange(starts.shape[-1], device=starts.device)
    first = first if first.dim() == 2 else first[None]
    before = generated_rows(mask)
    return feature, first & before, ~first & before


def generated_rows(mask):
    """The rows whose row before is a loss row (answer or source): the rows specd's
    verification computes the row before of. A `verified_rank` drafter keeps these with the
    target's state added once verified; a prompt's rows (caught up on after the prefill) keep
    none."""
    before = torch.zeros_like(mask)
    before[:, 1:] = mask[:, :-1]
    return before


def drafter_logits(drafter, target, ids, mask, layer, starts, vocab_ids=None, passes: int = 2):
    """The target's pass over `ids` and the drafter's logits under the block starts `starts`:
    (drafter logits, target logits). A `last_hidden_chain` drafter runs `passes` passes
    (`GlideDrafter.forward_chain`)."""
    out = target_pass(target, ids, layer, vocab_ids, hidden=drafter.cfg.feature != "none")
    return drafter_pass(drafter, ids, mask, starts, out, passes), out[2]


def drafter_pass(drafter, ids, mask, starts, out, passes: int = 2):
    """The drafter's logits under the block starts `starts` (`[T]` or `[B, T]`), given the
    target's pass `out` over `ids` (`target_pass`, with the hidden states for a drafter with a
    feature)."""
    k, v = out[:2]
    pos = torch.arange(ids.shape[1], device=ids.device)[None].expand(ids.shape[0], -1)
    amp = "cuda" if ids.device.type == "cuda" else "cpu"
    with torch.autocast(device_type=amp, dtype=torch.bfloat16):
        if drafter.cfg.feature == "none":
            return drafter(ids, pos, k, v, starts)
        f, first, later = feature_inputs(out[3], starts, mask)
        if drafter.cfg.feature == "last_hidden_chain":
            return drafter.forward_chain(ids, pos, k, v, starts, f, first, later, passes)
        verified = generated_rows(mask) if drafter.cfg.verified_rank else None
        return drafter(ids, pos, k, v, starts, f, first, verified)


def first_round_rows(mask) -> list[int]:
    """Where specd's first round of drafts starts in each sequence: the row after its first
    loss row (the target chooses the first answer token alone, from the prompt's last row, and
    the drafter drafts from the row of that token on); past the end when it has none."""
    first = torch.where(mask.any(dim=1), mask.int().argmax(dim=1), mask.shape[1])
    return (first + 1).tolist()


def fixed_starts(mask, k: int):
    """Blocks of k rows from each sequence's first round (`first_round_rows`); the rows before
    it are blocks of their own."""
    B, T = mask.shape
    t = torch.arange(T, device=mask.device)[None].expand(B, -1)
    r0 = torch.tensor(first_round_rows(mask), device=mask.device)[:, None]
    return torch.where(t >= r0, r0 + (t - r0) // k * k, t)


def simulate_rounds(hits, mask, k: int):
    """specd's rounds of k drafts over each sequence, given which rows' drafts equal the
    target's choice (`hits`, `[B, T]`): the first round starts at `first_round_rows`, a round
    at s accepts the leading hits of rows s..s+k-1 (a of them) and the next starts at s + a + 1;
    after a fully accepted round the row of its last draft is caught up on as a block of its
    own. Returns the block starts `[B, T]` (rows outside rounds are blocks of their own) and each
    round's (accepted, drafted)."""
    B, T = hits.shape
    hit, m = hits.tolist(), mask.tolist()
    starts = [list(range(T)) for _ in range(B)]
    rounds = []
    for b, s in enumerate(first_round_rows(mask)):
        end = T - m[b][::-1].index(True) if True in m[b] else 0
        while s < end:
            e = min(s + k, end)
            starts[b][s:e] = [s] * (e - s)
            a = 0
            while a < e - s and hit[b][s + a]:
                a += 1
            rounds.append((a, e - s))
            s = e + 1 if a == e - s else s + a + 1
    return torch.tensor(starts, device=hits.device), rounds


@torch.no_grad()
def rounds_starts(drafter, ids, mask, out, want, k: int, passes: int):
    """Block starts placed as specd's rounds place them for this drafter (`simulate_rounds`):
    `passes` passes, the first over blocks of k, each later one under the placement the pass
    before gave (a row's draft depends on where its round starts, so the placement is a fixed
    point approached pass by pass; two or three passes leave few rounds moving). `want`: the
    target's choice after each row, as target ids (training passes its choice over the draft
    vocabulary, which counts a hit where the target's own choice lies outside it: ~3 % of answer
    tokens; the report passes the full vocabulary's). Returns the starts and the last pass's
    rounds."""
    starts = fixed_starts(mask, k)
    rounds = []
    for _ in range(passes):
        logits = drafter_pass(drafter, ids, mask, starts, out)
        hits = (drafter.vocab_ids[logits.argmax(-1)] == want) & mask
        starts, rounds = simulate_rounds(hits, mask, k)
    return starts, rounds


def soft_ce(logits, target_logits, rows):
    """Cross-entropy against the target's distribution on the draft vocabulary, over `rows`."""
    p = torch.softmax(target_logits.float(), dim=-1)
    per_row = -(p * torch.log_softmax(logits.float(), dim=-1)).sum(-1)
    return (per_row * rows).sum() / rows.sum().clamp(min=1)


@torch.no_grad()
def evaluate(drafter, target, a, ids, mask, cfg, device, k: int = 4) -> dict:
    """Top-1 agreement with the target's argmax over the full vocabulary, and greedy acceptance
    simulated on blocks of k rows (the drafts after a verification): accepted = the leading rows
    whose draft equals the target's choice."""
    agree = total = 0
    accepted, blocks, rounds = [], 0, []
    vocab_ids = drafter.vocab_ids
    for i in range(0, ids.shape[0], a.batch):
        x = ids[i : i + a.batch].to(device)
        m = mask[i : i + a.batch].to(device)
        T = x.shape[1]
        starts = torch.arange(T, device=device) // k * k
        out = target_pass(target, x, cfg.target_layer, None, hidden=cfg.feature != "none")
        logits, full = drafter_pass(drafter, x, m, starts, out, passes=k), out[2]
        draft = vocab_ids[logits.argmax(-1)]
        want = full.argmax(-1)
        rounds += rounds_starts(drafter, x, m, out, want, k, 3)[1]
        hit = (draft == want) & m & (starts > 0)[None]
        agree += int(hit.sum())
        total += int((m & (starts > 0)[None]).sum())
        nb = T // k
        h = hit[:, 1 * k : nb * k].view(x.shape[0], nb - 1, k)
        valid = (m & (starts > 0)[None])[:, k : nb * k].view(x.shape[0], nb - 1, k).all(-1)
        lead = torch.cumprod(h.int(), dim=-1).sum(-1)
        accepted.append(lead[valid].float())
        blocks += int(valid.sum())
    acc = torch.cat(accepted) if accepted else torch.zeros(0)
    a_sum = sum(acc_ for acc_, _ in rounds)
    d_sum = sum(drafted for _, drafted in rounds)
    return {
        "top1_agreement": agree / max(total, 1),
        "k": k,
        "blocks": blocks,
        "acceptance_rate": float(acc.mean() / k) if blocks else 0.0,
        "mean_accepted_length": float(acc.mean() + 1) if blocks else 0.0,
        # As specd places its rounds (after a rejection the next starts at once), approached
        # in three passes (`rounds_starts`); agreement.py computes it exactly.
        "rounds": {
            "rounds": len(rounds),
            "acceptance_rate": a_sum / max(d_sum, 1),
            "mean_accepted_length": a_sum / max(len(rounds), 1) + 1,
        },
    }


def resumed_width(path: str) -> int:
    """The MLP width of the GLIDE file at `path` (0 without one)."""
    if not path:
        return 0
    from safetensors import safe_open

    with safe_open(path, "pt") as f:
        return GlideConfig.from_json(f.metadata()[CONFIG_KEY]).intermediate_size


def cmd_train(a, loaded=None) -> None:
    random.seed(a.seed)
    torch.manual_seed(a.seed)
    work = Path(a.work)
    data = torch.load(work / "data.pt", weights_only=False)
    prepared = data["code"].shape[1]
    if a.seq_len != prepared:
        log(f"--seq-len {a.seq_len} given, but the data was prepared in windows of {prepared}: using {prepared}")
        a.seq_len = prepared
    if loaded is None:
        log(f"loading the target {a.target}")
        loaded = load_target(a.target, a.device)
    target, _ = loaded
    shapes = target_shapes(target)
    layer = shapes.num_layers - 1 if a.target_layer < 0 else a.target_layer
    vocab_ids = data["vocab_ids"].to(a.device)
    if a.chain_norm and a.feature != "last_hidden_chain":
        raise SystemExit(f"--chain-norm is for --feature last_hidden_chain, not {a.feature}")
    if a.resume:
        # A drafter goes on with its own draft vocabulary: the data's is counted on the data
        # `prepare` collected (another prompt range gives another), and is only what a new
        # drafter starts from (`prepare --vocab-from` makes the two agree).
        resumed = draft_vocab_of(a.resume).to(a.device)
        if not torch.equal(resumed, vocab_ids):
            shared = len(set(resumed.tolist()) & set(vocab_ids.tolist()))
            log(f"--resume {a.resume}: keeping its draft vocabulary ({len(resumed)} tokens, {shared} in the data's)")
            vocab_ids = resumed
    cfg = GlideConfig(
        num_layers=1,
        num_heads=a.heads,
        num_kv_heads=a.kv_heads,
        head_dim=a.head_dim,
        intermediate_size=a.intermediate or resumed_width(a.resume) or 1024,
        rms_norm_eps=target.config.rms_norm_eps,
        target_layer=layer,
        draft_vocab_size=len(vocab_ids),
        target=shapes,
        feature=a.feature,
        feature_rank=a.feature_rank,
        chain_norm=a.chain_norm,
        verified_rank=a.verified_rank,
    )
    if a.resume:
        # A later call in the same hold goes on from the drafter an earlier one wrote (or a
        # drafter without a feature gains one, its weights starting at zero).
        log(f"resuming from {a.resume}")
        drafter = load_glide(a.resume, embed_weight(target).detach(), head_weight(target).detach(), cfg).to(a.device)
        if drafter.cfg.to_json() != cfg.to_json() or not torch.equal(drafter.vocab_ids, vocab_ids):
            raise SystemExit(f"--resume {a.resume}: its shapes or draft vocabulary differ from this run's ({drafter.cfg.to_json()} vs {cfg.to_json()})")
    else:
        drafter = GlideDrafter(cfg, embed_weight(target).detach(), vocab_ids, head_weight(target).detach()).to(a.device)
        tl = target.model.layers[layer]
        drafter.init_from_target(
            {
                "q_proj": tl.self_attn.q_proj.weight.float(),
                "o_proj": tl.self_attn.o_proj.weight.float(),
                "input_layernorm": tl.input_layernorm.weight.float(),
                "post_attention_layernorm": tl.post_attention_layernorm.weight.float(),
            },
            target.model.norm.weight.float(),
        )
    named = [(n, p) for n, p in drafter.named_parameters() if p.requires_grad]
    params = [p for _, p in named]
    n_params = sum(p.numel() for p in params)
    log(f"drafter: {n_params / 1e6:.2f} M parameters, config {cfg.to_json()}")
    # The feature's weights learn at --feature-lr-scale of the rest: at the full rate its
    # projection, starting at zero, swamped the first rows (run 5: 100 steps lost).
    groups = [
        {"params": [p for n, p in named if not n.startswith("feature_")], "scale": 1.0},
        {"params": [p for n, p in named if n.startswith("feature_")], "scale": a.feature_lr_scale},
    ]
    opt = torch.optim.AdamW([g for g in groups if g["params"]], lr=a.lr, betas=(0.9, 0.95), weight_decay=0.0)
    first, end = segment_steps(a)
    # What a segment's state must agree on with the segment after it.
    schedule = {k: getattr(a, k) for k in ("steps", "seed", "batch", "lr", "feature_lr_scale", "max_block",
                                           "block_placement", "distill_share", "answer_len", "answer_epochs")}
    if first > 0:
        # A later segment goes on exactly where the one before stopped: its f32 weights and
        # the optimizer's moments (the file --resume names is their bf16 copy).
        state = torch.load(a.state, map_location="cpu", weights_only=False)
        if state["schedule"] != schedule or state["end"] != first:
            raise SystemExit(f"--state {a.state}: it ends at step {state['end']} of a schedule of {state['schedule']}, "
                             f"but segment {a.segment} starts at {first} of {schedule}")
        drafter.load_state_dict(state["drafter"])
        opt.load_state_dict(state["opt"])
        log(f"segment {a.segment}: steps {first}..{end} of {a.steps}, from {a.state} "
            f"(trained to step {state['trained_to']})")

    def lr_at(step: int, progress: float) -> float:
        """Warm-up over the first 5 %, then cosine down to a tenth of --lr."""
        warm = min(1.0, max((step + 1) / (0.05 * a.steps), progress / 0.05))
        return a.lr * warm * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0))))

    rng = random.Random(a.seed)
    gen = torch.Generator().manual_seed(a.seed)
    losses = []
    tokens_seen = 0
    stream = batches(data, a, rng)
    # A segment draws what the steps before it drew, and drops it: the segments of a schedule
    # train on the batches and blocks one call of all its steps would.
    for _ in range(first):
        ids, _ = next(stream)
        if a.block_placement == "random":
            random_block_starts(ids.shape[1], a.max_block, gen)
    t0 = time.time()
    # The time training may take: the schedule follows whichever runs out first, steps or
    # time, so that a run cut by a deadline still ends annealed.
    budget = a.deadline
    if a.until:
        budget = min(budget, a.until - (t0 - START))
    chain_passes = a.chain_passes or a.max_block
    if cfg.feature == "last_hidden_chain" and chain_passes < 2:
        raise SystemExit(f"--chain-passes {chain_passes}: a chained drafter needs at least 2 (1 never feeds a row its own)")
    next_step = first
    for step in range(first, end):
        # Time runs the segment's share of the schedule, and sets the schedule once it is a
        # step or more ahead of the steps: a segment cut by its deadline still ends where the
        # next one starts, and one with time to spare follows its steps exactly (so segments
        # train what one call of all their steps does).
        by_time = (first + (end - first) * (time.time() - t0) / budget) / a.steps
        progress = by_time if by_time > (step + 1) / a.steps else step / a.steps
        if by_time >= end / a.steps:
            log(f"training deadline reached after {step - first} steps")
            break
        next_step = step + 1
        for group in opt.param_groups:
            group["lr"] = lr_at(step, progress) * group["scale"]
        ids, mask = next(stream)
        ids, mask = ids.to(a.device), mask.to(a.device)
        out = target_pass(target, ids, layer, vocab_ids, hidden=cfg.feature != "none")
        if a.block_placement == "rounds":
            want = vocab_ids[out[2].argmax(-1)]
            starts, _ = rounds_starts(drafter, ids, mask, out, want, a.max_block, a.placement_passes)
        else:
            starts = random_block_starts(ids.shape[1], a.max_block, gen, a.device)
        logits, tlogits = drafter_pass(drafter, ids, mask, starts, out, chain_passes), out[2]
        rows = mask & (starts > 0)
        loss = soft_ce(logits, tlogits, rows)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        tokens_seen += int(rows.sum())
        losses.append(float(loss.detach()))
        if step % a.log_every == 0 or step == end - 1:
            recent = sum(losses[-a.log_every :]) / len(losses[-a.log_every :])
            log(f"step {step}/{a.steps} loss {recent:.4f} lr {opt.param_groups[0]['lr']:.2e} ({time.time() - t0:.0f} s)")
    train_s = time.time() - t0
    # Kept now, written last (after the drafter's file): a call that dies before leaves the
    # state of the segment before, and the segment can run again.
    state = {"schedule": schedule, "end": end, "trained_to": next_step,
             "drafter": {k: v.detach().cpu().clone() for k, v in drafter.state_dict().items()},
             "opt": opt.state_dict()} if a.state else None

    drafter.eval()
    code_eval = data["code_eval"][: a.eval_windows].long()
    code_mask = torch.ones_like(code_eval, dtype=torch.bool)
    code_mask[:, -1] = False
    d_ids, d_mask = padded(data["distill_eval"], a.answer_len, 0)
    evals = {}
    if "bench_eval" in data:
        # Not a held-out set of the training distribution: bench-spec's own prompts, never
        # trained on, to compare with specd's acceptance on them.
        b_ids, b_mask = padded(data["bench_eval"], a.answer_len, 0)
        evals["bench_spec_answers"] = evaluate(drafter, target, a, b_ids, b_mask, cfg, a.device)
    report = {
        "config": json.loads(cfg.to_json()),
        "parameters": n_params,
        "steps": len(losses),
        "segment": {"segment": a.segment, "first": first, "end": end, "trained_to": next_step},
        "batch": a.batch,
        "seq_len": a.seq_len,
        "tokens_seen": tokens_seen,
        "train_seconds": round(train_s, 1),
        "loss_first_50": sum(losses[:50]) / max(1, len(losses[:50])),
        "loss_last_50": sum(losses[-50:]) / max(1, len(losses[-50:])),
        "held_out_code": evaluate(drafter, target, a, code_eval, code_mask, cfg, a.device),
        "held_out_answers": evaluate(drafter, target, a, d_ids, d_mask, cfg, a.device),
        **evals,
        "data": data["stats"],
        "args": vars(a),
        "versions": {"torch": torch.__version__, "transformers": _version("transformers"), "gguf": _version("gguf")},
    }
    shown = ("loss_first_50", "loss_last_50", "held_out_code", "held_out_answers", *evals)
    log(json.dumps({k: report[k] for k in shown}))
    save_glide(a.out, drafter.cpu(), dtype=torch.bfloat16)
    (work / "report.json").write_text(json.dumps(report, indent=1))
    log(f"wrote {a.out} ({os.path.getsize(a.out)} bytes) and {work / 'report.json'}")
    if state is not None:
        torch.save(state, a.state + ".part")
        os.replace(a.state + ".part", a.state)
        log(f"kept the state at step {end} of {a.steps} (trained to {next_step}) in {a.state}")


def segment_steps(a) -> tuple[int, int]:
    """The steps `[first, end)` of `--steps` that `--segment I/N` trains: the I-th of N equal
    shares of one schedule (warm-up and cosine over all of them)."""
    try:
        i, n = (int(v) for v in a.segment.split("/"))
    except ValueError:
        raise SystemExit(f"--segment {a.segment}: expected I/N, e.g. 0/2")
    if not 0 <= i < n:
        raise SystemExit(f"--segment {a.segment}: I must be 0 to N - 1")
    if a.steps < n:
        raise SystemExit(f"--segment {a.segment}: --steps {a.steps} cannot be split into {n}")
    if i > 0 and not (a.state and a.resume):
        raise SystemExit(f"--segment {a.segment}: a later segment needs --state (and --resume) from the one before")
    return i * a.steps // n, (i + 1) * a.steps // n


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    for name in ("prepare", "train", "all"):
        p = sub.add_parser(name)
        p.add_argument("--target", required=True, help="the target: a GGUF file or a Hugging Face folder")
        p.add_argument("--work", required=True, help="folder for data.pt, manifest.json, report.json")
        p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
        p.add_argument("--seed", type=int, default=20261203)
        p.add_argument("--seq-len", type=int, default=512)
    for p in (sub.choices["prepare"], sub.choices["all"]):
        prepare_args(p)
    for p in (sub.choices["train"], sub.choices["all"]):
        train_args(p)
    return ap


def main() -> None:
    a = parser().parse_args()
    if a.cmd == "all":
        log(f"loading the target {a.target}")
        loaded = load_target(a.target, a.device)
        cmd_prepare(a, loaded)
        cmd_train(a, loaded)
    else:
        {"prepare": cmd_prepare, "train": cmd_train}[a.cmd](a)


def prepare_args(p) -> None:
    p.add_argument("--prompts", type=int, default=65536, help="code prompts the target answers (at most --prompts-per-file per file)")
    p.add_argument("--prompts-per-file", type=int, default=6, help="most prompts made from one source file")
    p.add_argument("--eval-prompts", type=int, default=384, help="prompts made from held-out files, answered for evaluation")
    p.add_argument("--gen-batch", type=int, default=1024, help="most prompts answered at once")
    p.add_argument("--gen-batch-tokens", type=int, default=512 * 1024, help="ids a generation batch may hold, answers included")
    p.add_argument("--gen-tokens", type=int, default=192, help="longest answer (bench-spec measures 128 tokens)")
    p.add_argument("--gen-deadline", type=float, default=330, help="seconds after which no new batch is answered")
    p.add_argument("--save-target", default="", help="also save the dequantized target here (a Hugging Face folder)")
    p.add_argument("--code-tokens", type=int, default=12_000_000, help="training tokens of source")
    p.add_argument("--eval-tokens", type=int, default=262_144, help="held-out tokens of source")
    p.add_argument("--draft-vocab", type=int, default=16384)
    p.add_argument("--vocab-from", default="", help="take the draft vocabulary from this GLIDE file (to --resume training it)")
    p.add_argument("--skip-prompts", type=int, default=0, help="leave out the first N training prompts (answered by an earlier run)")
    p.add_argument("--answers-in", nargs="*", default=[], help="answer caches of earlier calls (answers.py): trained on, their prompts not answered again")
    p.add_argument("--answers-out", default="", help="keep the answers this call generates in this answer cache (answers.py)")


def train_args(p) -> None:
    p.add_argument("--out", required=True, help="the GLIDE file to write")
    p.add_argument("--resume", default="", help="a GLIDE file to go on training from (same data and shapes)")
    p.add_argument("--steps", type=int, default=6000)
    p.add_argument("--segment", default="0/1",
                   help="I/N: train the I-th of N equal shares of --steps' schedule (one call each, 0 first), "
                        "going on from the --state the one before kept")
    p.add_argument("--state", default="",
                   help="where a segment keeps its f32 weights and optimizer state for the next (read by segments after the first)")
    p.add_argument("--deadline", type=float, default=520, help="seconds after which training stops")
    p.add_argument("--until", type=float, default=0, help="seconds after the start of the program when training stops (0: none)")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--max-block", type=int, default=6, help="largest block of the block-wise mask (with --block-placement rounds: every round's)")
    p.add_argument("--block-placement", choices=("random", "rounds"), default="random",
                   help="random: blocks of 1..--max-block rows; rounds: as specd's rounds place them for the drafter being "
                        "trained (after a rejection the next round starts at once), found in --placement-passes no-grad passes")
    p.add_argument("--placement-passes", type=int, default=2, help="passes that place the blocks with --block-placement rounds")
    p.add_argument("--answer-len", type=int, default=1344, help="longest prompt + answer trained (longer ones lose the prompt's start)")
    p.add_argument("--answer-epochs", type=float, default=8, help="draws per answer, on average, after which batches are source only")
    p.add_argument("--distill-share", type=float, default=0.7, help="share of batches of target answers")
    p.add_argument("--target-layer", type=int, default=-1, help="target layer read (-1: the last)")
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--kv-heads", type=int, default=2)
    p.add_argument("--head-dim", type=int, default=128)
    p.add_argument("--intermediate", type=int, default=0,
                   help="the MLP's width (default: the --resume file's, else 1024); another width widens or narrows a resumed file")
    p.add_argument("--feature", choices=("none", "last_hidden", "last_hidden_chain"), default="none",
                   help="last_hidden: a block's first row also reads the target's final hidden state before it; "
                        "last_hidden_chain: and its later rows the drafter's own")
    p.add_argument("--chain-norm", action="store_true",
                   help="last_hidden_chain: the chained rows get their own norm weights, zero at the start "
                        "(a resumed last_hidden drafter starts exactly where it was)")
    p.add_argument("--chain-passes", type=int, default=0,
                   help="passes of a last_hidden_chain drafter in training (default --max-block: every row of a block reads a chained state; at least 2)")
    p.add_argument("--feature-rank", type=int, default=0, help="rank of the feature's projection (0: full)")
    p.add_argument("--verified-rank", type=int, default=0,
                   help="with --feature last_hidden: verified rows are kept in the drafter's cache with a projection of this rank "
                        "of the target's hidden state at the row before added (0: none)")
    p.add_argument("--feature-lr-scale", type=float, default=0.1, help="the feature's weights learn at this share of --lr")
    p.add_argument("--eval-windows", type=int, default=256)
    p.add_argument("--log-every", type=int, default=50)


if __name__ == "__main__":
    main()
