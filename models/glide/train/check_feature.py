#!/usr/bin/env python3
"""Checks the drafter's optional feature (`--feature last_hidden`) on the tiny Qwen2 of
engine/tests/fixtures/golden/qwen2, on the CPU, before a GPU run trains with it:

1. a drafter without a feature, resumed into one with it, gives the same logits (the feature's
   projection starts at zero), full rank and low rank;
2. one optimizer step moves the feature's projection, and then only the rows that take the
   feature change (the first row of a block whose row before is a loss row);
3. the file round trip keeps every weight, the configuration included;
4. resuming into a narrower MLP keeps the channels with the largest weights, unchanged;
5. resuming into a wider MLP gives the same logits, and one step moves the new channels;
6. `last_hidden_chain` (later rows of a block read the drafter's own hidden state): a trained
   `last_hidden` file resumes into it; one pass gives `last_hidden`'s logits; with as many
   passes as rows, every row equals computing the rows one after another (each later row of a
   block fed the hidden state its row before computed, the rows before it already final: what
   specd's drafter cache would hold); one step trains it;
7. `last_hidden_chain` with `chain_norm` (the chained rows' own norm weights, zero at the
   start): resumed from the `last_hidden` file it gives `last_hidden`'s logits with every pass
   count; one step opens the chained rows' norm, after which they change and as many passes as
   rows still equal row after row;
8. `verified_rank` (verified rows kept in the drafter's cache with a projection of the target's
   hidden state): a trained `last_hidden` file resumes into it with the same logits; after one
   step every row equals a plain causal pass over its own history laid out as specd's cache
   holds it (the rows before its block as verified, its block's as drafted); rows of the first
   block, and rows that see only a prompt's rows, do not change (a prompt's rows keep no target
   state: specd catches up on them after the prefill); the file round trip keeps it;
9. `--block-placement rounds`: `simulate_rounds` places a hand-worked example's rounds as specd
   would; with as many passes as rows, `rounds_starts` reaches a placement that its own drafts
   place again (the fixed point), with blocks per sequence.

    python3 models/glide/train/check_feature.py      (torch and transformers, CPU only)
"""

import os

os.environ["CUDA_VISIBLE_DEVICES"] = ""

import sys
import tempfile
from dataclasses import replace
from pathlib import Path

import torch
import transformers

sys.path.insert(0, str(Path(__file__).resolve().parent))
from glide_model import GlideConfig, GlideDrafter, load_glide, random_block_starts, rms_norm, save_glide  # noqa: E402
from target import embed_weight, head_weight, target_shapes  # noqa: E402
from train import (  # noqa: E402
    drafter_logits, drafter_pass, feature_inputs, fixed_starts, generated_rows, rounds_starts, simulate_rounds, soft_ce, target_pass,
)

REPO = Path(__file__).resolve().parents[3]
TARGET = REPO / "engine/tests/fixtures/golden/qwen2"


def main() -> None:
    torch.manual_seed(7)
    target = transformers.Qwen2ForCausalLM.from_pretrained(TARGET, dtype=torch.float32, attn_implementation="eager")
    target.eval().requires_grad_(False)
    shapes = target_shapes(target)
    vocab = torch.randperm(shapes.vocab_size)[:100].sort().values
    plain_cfg = GlideConfig(1, 2, 1, 8, 48, 1e-6, shapes.num_layers - 1, len(vocab), shapes)
    embed, head = embed_weight(target).detach(), head_weight(target).detach()
    plain = GlideDrafter(plain_cfg, embed, vocab, head)
    with torch.no_grad():
        for p in plain.parameters():
            p.copy_(1.0 + 0.2 * torch.randn_like(p) if p.dim() == 1 else 0.15 * torch.randn_like(p))
    ids = torch.randint(0, shapes.vocab_size, (2, 24))
    mask = torch.ones_like(ids, dtype=torch.bool)
    mask[0, :9] = False  # a prompt: rows 0..8 predict prompt tokens
    mask[:, -1] = False
    gen = torch.Generator().manual_seed(3)
    starts = random_block_starts(ids.shape[1], 4, gen)
    layer = plain_cfg.target_layer
    base, _ = drafter_logits(plain, target, ids, mask, layer, starts)

    with tempfile.TemporaryDirectory() as tmp:
        plain_file = os.path.join(tmp, "plain.safetensors")
        save_glide(plain_file, plain, dtype=torch.float32)
        for rank in (0, 16):
            cfg = replace(plain_cfg, feature="last_hidden", feature_rank=rank)
            model = load_glide(plain_file, embed, head, cfg)
            same, _ = drafter_logits(model, target, ids, mask, layer, starts)
            assert torch.allclose(same, base, atol=1e-5), f"rank {rank}: a fresh feature changed the logits"

            opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
            logits, tlogits = drafter_logits(model, target, ids, mask, layer, starts, vocab)
            soft_ce(logits, tlogits, mask).backward()
            opt.step()
            assert model.feature_proj.weight.abs().sum() > 0, f"rank {rank}: the projection did not train"
            # Freeze everything but the feature's weights at their trained values, the rest at
            # the plain drafter's: then only feature rows can differ from `base`.
            probe = load_glide(plain_file, embed, head, cfg)
            with torch.no_grad():
                probe.feature_proj.weight.copy_(model.feature_proj.weight)
                probe.feature_norm.copy_(model.feature_norm)
                if rank:
                    probe.feature_down.weight.copy_(model.feature_down.weight)
            moved, _ = drafter_logits(probe, target, ids, mask, layer, starts)
            changed = (moved - base).abs().amax(-1) > 1e-6  # [B, T]
            first = starts == torch.arange(ids.shape[1])
            fed = first[None] & torch.cat([torch.zeros_like(mask[:, :1]), mask[:, :-1]], dim=1)
            # A changed row is a feature row or a later row that attends to one.
            seen = torch.cumsum(fed.int(), dim=1) > 0
            assert changed.any(), f"rank {rank}: the trained feature changed nothing"
            assert not (changed & ~seen).any(), f"rank {rank}: rows before any feature row changed"
            assert not changed[0, :9].any(), f"rank {rank}: prompt rows took a feature"

            path = os.path.join(tmp, f"feature{rank}.safetensors")
            save_glide(path, model, dtype=torch.float32)
            back = load_glide(path, embed, head)
            assert back.cfg == cfg, f"rank {rank}: the configuration changed in the file"
            again, _ = drafter_logits(back, target, ids, mask, layer, starts)
            now, _ = drafter_logits(model, target, ids, mask, layer, starts)
            assert torch.allclose(again, now, atol=1e-6), f"rank {rank}: the file round trip changed the logits"
            print(f"rank {rank}: ok ({int(changed.sum())} of {changed.numel()} rows moved by the feature)")
            if rank == 0:
                check_chain(path, model, embed, head, target, ids, mask, layer, vocab)
                verified = check_verified(path, model, embed, head, target, ids, mask, layer, vocab)
                check_rounds(verified, target, ids, mask, layer)

        narrow = load_glide(plain_file, embed, head, replace(plain_cfg, intermediate_size=32))
        a, b = plain.layers[0], narrow.layers[0]
        score = a.gate_proj.weight.norm(dim=1) * a.up_proj.weight.norm(dim=1) * a.down_proj.weight.norm(dim=0)
        keep = torch.topk(score, 32).indices.sort().values
        assert b.gate_proj.weight.shape == (32, shapes.hidden_size)
        assert torch.equal(b.gate_proj.weight, a.gate_proj.weight[keep]), "the kept gate rows differ"
        assert torch.equal(b.down_proj.weight, a.down_proj.weight[:, keep]), "the kept down columns differ"
        assert torch.equal(b.q_proj.weight, a.q_proj.weight), "narrowing the MLP changed attention"
        drafter_logits(narrow, target, ids, mask, layer, starts)
        print("narrower MLP: ok (the 32 strongest of 48 channels kept)")

        wide = load_glide(plain_file, embed, head, replace(plain_cfg, intermediate_size=96))
        assert wide.layers[0].gate_proj.weight.shape == (96, shapes.hidden_size)
        same, _ = drafter_logits(wide, target, ids, mask, layer, starts)
        assert torch.allclose(same, base, atol=1e-5), "a wider MLP changed the logits at the start"
        opt = torch.optim.SGD([p for p in wide.parameters() if p.requires_grad], lr=0.5)
        logits, tlogits = drafter_logits(wide, target, ids, mask, layer, starts, vocab)
        soft_ce(logits, tlogits, mask).backward()
        opt.step()
        new_down = wide.layers[0].down_proj.weight[:, 48:]
        assert new_down.abs().sum() > 0, "the new channels' down columns did not train"
        print("wider MLP: ok (48 → 96 channels, the same logits before training)")
    print("check_feature: all passed")


def row_after_row(chain, target, ids, layer, starts, mask):
    """A chaining drafter's logits computed one row after another, as specd drafts: each later
    row of a block reads the final hidden state its row before computed, with everything before
    it already in place."""
    T = ids.shape[1]
    tk, tv, _, hidden = target_pass(target, ids, layer, None, hidden=True)
    f, first, later = feature_inputs(hidden, starts, mask)
    pos = torch.arange(T)[None].expand(ids.shape[0], -1)
    feat, rows = f.clone(), first | later
    with torch.no_grad(), torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        for t in range(1, T):
            if later[:, t].any():
                h = chain.hidden(ids, pos, tk, tv, starts, feat, rows, later)
                feat[:, t] = torch.where(later[:, t, None], h[:, t - 1].to(feat.dtype), feat[:, t])
        h = chain.hidden(ids, pos, tk, tv, starts, feat, rows, later)
        return h @ chain.head_rows.to(h.dtype).T, later


def check_chain(path, trained, embed, head, target, ids, mask, layer, vocab) -> None:
    cfg = replace(trained.cfg, feature="last_hidden_chain")
    chain = load_glide(path, embed, head, cfg)
    k = 4
    T = ids.shape[1]
    starts = torch.arange(T) // k * k
    one, _ = drafter_logits(trained, target, ids, mask, layer, starts)
    got, _ = drafter_logits(chain, target, ids, mask, layer, starts, passes=1)
    assert torch.allclose(got, one, atol=1e-6), "chain: one pass differs from last_hidden"
    full, _ = drafter_logits(chain, target, ids, mask, layer, starts, passes=T)
    assert not torch.allclose(full, one, atol=1e-4), "chain: the own hidden state changed nothing"
    want, later = row_after_row(chain, target, ids, layer, starts, mask)
    assert torch.allclose(full, want, atol=1e-5), f"chain: {T} passes differ from row after row by {(full - want).abs().max()}"
    opt = torch.optim.SGD([p for p in chain.parameters() if p.requires_grad], lr=0.5)
    logits, tlogits = drafter_logits(chain, target, ids, mask, layer, starts, vocab, passes=2)
    before = chain.feature_proj.weight.clone()
    soft_ce(logits, tlogits, mask).backward()
    opt.step()
    assert not torch.equal(chain.feature_proj.weight, before), "chain: one step did not move the projection"
    print(f"chain: ok ({int(later.sum())} rows read the drafter's own hidden state; {T} passes = row after row)")

    # 7. The chained rows' own norm, zero at the start: last_hidden's logits whatever the passes.
    gated = load_glide(path, embed, head, replace(cfg, chain_norm=True))
    assert torch.equal(gated.chain_norm, torch.zeros_like(gated.chain_norm)), "chain_norm: not zero at the start"
    for passes in (1, 2, T):
        got, _ = drafter_logits(gated, target, ids, mask, layer, starts, passes=passes)
        assert torch.allclose(got, one, atol=1e-6), f"chain_norm: {passes} passes differ from last_hidden at the start"
    opt = torch.optim.SGD([p for p in gated.parameters() if p.requires_grad], lr=0.5)
    logits, tlogits = drafter_logits(gated, target, ids, mask, layer, starts, vocab, passes=2)
    soft_ce(logits, tlogits, mask).backward()
    opt.step()
    assert gated.chain_norm.abs().sum() > 0, "chain_norm: one step did not open the chained rows' norm"
    full, _ = drafter_logits(gated, target, ids, mask, layer, starts, passes=T)
    assert not torch.allclose(full, one, atol=1e-4), "chain_norm: the opened norm changed nothing"
    want, _ = row_after_row(gated, target, ids, layer, starts, mask)
    assert torch.allclose(full, want, atol=1e-5), f"chain_norm: {T} passes differ from row after row by {(full - want).abs().max()}"
    with tempfile.TemporaryDirectory() as tmp:
        again_path = os.path.join(tmp, "gated.safetensors")
        save_glide(again_path, gated, dtype=torch.float32)
        back = load_glide(again_path, embed, head)
        assert back.cfg == gated.cfg and torch.equal(back.chain_norm, gated.chain_norm), "chain_norm: the file round trip lost it"
    print("chain_norm: ok (resumed at zero = last_hidden for 1, 2 and all passes; one step opens it; row after row holds)")


def cache_as_specd_keeps_it(model, target, ids, layer, starts, mask):
    """A `verified_rank` drafter's logits computed row by row with the plain causal layer (no
    verified stream): row i's history is the rows before its block with their verified inputs
    and its own block's rows with their drafted inputs, as specd's cache holds them."""
    T = ids.shape[1]
    tk, tv, _, hidden = target_pass(target, ids, layer, None, hidden=True)
    f, first, _ = feature_inputs(hidden, starts, mask)
    pos = torch.arange(T)[None].expand(ids.shape[0], -1)
    rows = []
    with torch.no_grad():
        drafted = model.embed[ids].float() + model.feature_input(f, first)
        verified = drafted + model.verified_input(f, generated_rows(mask))
        for i in range(T):
            x = torch.where((torch.arange(i + 1) < starts[i])[None, :, None], verified[:, : i + 1], drafted[:, : i + 1])
            h = model.layers[0](x, pos[:, : i + 1], tk, tv, starts[: i + 1])
            rows.append(rms_norm(h[:, i], model.norm, model.cfg.rms_norm_eps))
    h = torch.stack(rows, dim=1)
    return h @ model.head_rows.T


def check_verified(path, trained, embed, head, target, ids, mask, layer, vocab) -> None:
    cfg = replace(trained.cfg, verified_rank=8)
    model = load_glide(path, embed, head, cfg)
    gen = torch.Generator().manual_seed(5)
    with torch.no_grad():
        tk, tv, _, hidden = target_pass(target, ids, layer, None, hidden=True)
        pos = torch.arange(ids.shape[1])[None].expand(ids.shape[0], -1)
        for starts in (torch.arange(ids.shape[1]) // 4 * 4, random_block_starts(ids.shape[1], 4, gen)):
            # In f32 (drafter_logits runs in bf16, where the masked attention rounds otherwise).
            f, first, _ = feature_inputs(hidden, starts, mask)
            one = trained.hidden(ids, pos, tk, tv, starts, f, first)
            got = model.hidden(ids, pos, tk, tv, starts, f, first, verified_rows=generated_rows(mask))
            assert torch.allclose(got, one, atol=1e-5), f"verified: a fresh projection changed the rows by {(got - one).abs().max()}"
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    logits, tlogits = drafter_logits(model, target, ids, mask, layer, starts, vocab)
    soft_ce(logits, tlogits, mask).backward()
    opt.step()
    assert model.verified_up.weight.abs().sum() > 0, "verified: one step did not move the projection"
    with torch.no_grad():
        tk, tv, _, hidden = target_pass(target, ids, layer, None, hidden=True)
        f, first, _ = feature_inputs(hidden, starts, mask)
        pos = torch.arange(ids.shape[1])[None].expand(ids.shape[0], -1)
        h = model.hidden(ids, pos, tk, tv, starts, f, first, verified_rows=generated_rows(mask))
        got = h @ model.head_rows.T
        plain = model.hidden(ids, pos, tk, tv, starts, f, first, verified_rows=torch.zeros_like(pos, dtype=torch.bool))
    want = cache_as_specd_keeps_it(model, target, ids, layer, starts, mask)
    assert torch.allclose(got, want, atol=1e-4), f"verified: differs from the cache as specd keeps it by {(got - want).abs().max()}"
    changed = (h - plain).abs().amax(-1) > 1e-6
    assert changed.any(), "verified: the trained projection changed nothing"
    assert not changed[:, starts == 0].any(), "verified: rows of the first block changed (they see no verified row)"
    # Sample 0's prompt (rows 0..8 predict prompt tokens): its rows up to 9 keep no target
    # state, so a row whose block starts by then sees none.
    assert not changed[0, starts <= 9].any(), "verified: a row saw a prompt row kept with the target's state"
    with tempfile.TemporaryDirectory() as tmp:
        again = os.path.join(tmp, "verified.safetensors")
        save_glide(again, model, dtype=torch.float32)
        back = load_glide(again, embed, head)
        assert back.cfg == model.cfg, "verified: the configuration changed in the file"
        a, _ = drafter_logits(back, target, ids, mask, layer, starts)
        b, _ = drafter_logits(model, target, ids, mask, layer, starts)
        assert torch.allclose(a, b, atol=1e-6), "verified: the file round trip changed the logits"
    print(f"verified: ok (resumed = last_hidden; {int(changed.sum())} of {changed.numel()} rows moved; row by row as specd's cache holds)")
    return model


def check_rounds(model, target, ids, mask, layer) -> None:
    # Rows 2..10 are loss rows (row 2 the prompt's last: the target alone chooses row 3's
    # token); rounds of 3 from row 3: at 3 none accepted (next at 4), at 4 all three (row 7
    # caught up on, next at 8), at 8 none (next at 9), at 9 the two left.
    m = torch.zeros(1, 12, dtype=torch.bool)
    m[0, 2:11] = True
    hits = torch.zeros_like(m)
    hits[0, [2, 4, 5, 6, 9, 10]] = True
    starts, rounds = simulate_rounds(hits, m, 3)
    assert starts[0].tolist() == [0, 1, 2, 3, 4, 4, 4, 7, 8, 9, 9, 11], starts
    assert rounds == [(0, 3), (3, 3), (0, 3), (2, 2)], rounds
    out = target_pass(target, ids, layer, None, hidden=True)
    # A random drafter never agrees with the target: take as the "target's choice" the
    # drafter's own under blocks of four, every fifth row changed, so rounds have lengths.
    with torch.no_grad():
        want = model.vocab_ids[drafter_pass(model, ids, mask, fixed_starts(mask, 4), out).argmax(-1)]
    want[:, ::5] = (want[:, ::5] + 1) % target.config.vocab_size
    T = ids.shape[1]
    starts, rounds = rounds_starts(model, ids, mask, out, want, 4, T)
    with torch.no_grad():
        logits = drafter_pass(model, ids, mask, starts, out)
    again, _ = simulate_rounds((model.vocab_ids[logits.argmax(-1)] == want) & mask, mask, 4)
    assert torch.equal(again, starts), f"rounds: {T} passes did not reach a fixed point: {starts} then {again}"
    assert not torch.equal(starts[0], starts[1]), "rounds: both sequences got the same blocks"
    # Blocks per sequence ([B, T]) give each sequence what its own blocks ([T]) give it alone.
    pos = torch.arange(T)[None]
    with torch.no_grad():
        f, first, _ = feature_inputs(out[3], starts, mask)
        both = model.hidden(ids, pos.expand(2, -1), out[0], out[1], starts, f, first, verified_rows=generated_rows(mask))
        for b in range(2):
            fb, firstb, _ = feature_inputs(out[3][b : b + 1], starts[b], mask[b : b + 1])
            alone = model.hidden(ids[b : b + 1], pos, out[0][b : b + 1], out[1][b : b + 1], starts[b], fb, firstb,
                                 verified_rows=generated_rows(mask[b : b + 1]))
            assert torch.allclose(both[b], alone[0], atol=1e-5), f"rounds: sequence {b}'s own blocks differ in the batch"
    print(f"rounds: ok ({len(rounds)} rounds, {sum(a for a, _ in rounds)} drafts accepted; a fixed point)")


if __name__ == "__main__":
    main()
