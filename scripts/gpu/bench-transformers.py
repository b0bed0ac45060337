#!/usr/bin/env python3
"""Measure Hugging Face transformers' batch-1 decode step cost, the baseline specd's CUDA
executor is compared with.

For each model folder (e.g. made by scripts/gpu/make-random-models.py) or GGUF file (dequantized
by transformers through the `gguf` package) the model is loaded in
bf16 and a --ctx-token random prompt is prefilled; then a forward of `r` new tokens on top of
that cache (r from --rows: 1 is a plain decode step, 6 a speculative verification step) is
timed again and again, every step starting from the same cache length. Variants:

  eager            DynamicCache; the cache is cropped back to ctx after each step
  compiled         StaticCache (max_cache_len ctx+64) and
                   torch.compile(model.forward, mode="max-autotune-no-cudagraphs")
  compiled-graphs  the same with mode="reduce-overhead" (CUDA graphs)

Static-cache steps pass explicit positions (position_ids, and cache_position where the model's
forward still takes it) and the cache's own write counter is reset to ctx after each step.
All models are loaded first and stay in memory. Eager runs first; then the compiled variants in
--variants order, and within each, rows by rows and model by model. Compilation shares one time
budget (--compile-budget, seconds, default 240; on an H200 a reduce-overhead compile took ~31 s
and a max-autotune one 65-77 s per model and rows): a compile that would start with less budget
left than the last compile of the same variant took is skipped, one that runs past the budget
is interrupted, and either is reported as {"error": ...}. As a correctness check each compiled
variant's first output is compared with the eager output for the same step (max_abs_diff), and
every variant's output after the timed steps too (max_abs_diff_last: the cache did go back).

Usage (on the GPU machine):
    scripts/gpu/bench-transformers.py MODELDIR [MODELDIR...] [--ctx 128] [--rows 1,6]
        [--steps 50] [--warmup 10] [--out FILE.jsonl] [--device cuda]
        [--variants eager,compiled-graphs,compiled] [--compile-budget 240]

Output, to stdout (and appended to --out): first a JSON line with the versions and the GPU,
then one per (model, variant, rows):
    {"model", "variant", "rows", "ctx", "ms_per_step" (median), "ms_min", "ms_max",
     "tokens_per_s" (rows / ms_per_step * 1000), ...}
or {"model", "variant", "rows", "ctx", "error"} when a variant failed or was skipped;
a last line {"event": "done", ...}. Times come from CUDA events around each step, each step
synchronized (CPU launch overhead included, as in real batch-1 decoding); with --device cpu
they come from a wall clock.
"""

import argparse
import gc
import inspect
import json
import os
import platform
import signal
import statistics
import sys
import time

import torch

VARIANT_MODES = {
    "compiled": "max-autotune-no-cudagraphs",
    "compiled-graphs": "reduce-overhead",
}


class Reporter:
    def __init__(self, out_path):
        self.out_path = out_path

    def emit(self, obj):
        line = json.dumps(obj)
        print(line, flush=True)
        if self.out_path:
            with open(self.out_path, "a") as f:
                f.write(line + "\n")


def log(msg):
    print(f"# {msg}", file=sys.stderr, flush=True)


class CompileTimeout(BaseException):
    """Raised by SIGALRM; a BaseException so that no `except Exception` inside torch eats it."""


class Deadline:
    """Interrupts the enclosed block after `seconds` (main thread, Unix only)."""

    def __init__(self, seconds):
        self.seconds = max(1, int(seconds))
        self.usable = hasattr(signal, "SIGALRM")

    def _fire(self, signum, frame):
        raise CompileTimeout()

    def __enter__(self):
        if self.usable:
            self.old = signal.signal(signal.SIGALRM, self._fire)
            signal.alarm(self.seconds)
        return self

    def __exit__(self, *exc):
        if self.usable:
            signal.alarm(0)
            signal.signal(signal.SIGALRM, self.old)
        return False


def sync(dev):
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def time_steps(step, reset, warmup, steps, dev):
    """Runs step() warmup + steps times, reset() after each; returns the timed steps in ms."""
    for _ in range(warmup):
        step()
        reset()
    sync(dev)
    times = []
    if dev.type == "cuda":
        start = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)
        for _ in range(steps):
            start.record()
            step()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
            reset()
    else:
        for _ in range(steps):
            t0 = time.perf_counter()
            step()
            times.append((time.perf_counter() - t0) * 1000.0)
            reset()
    return times


def summary(times, rows):
    med = statistics.median(times)
    return {
        "ms_per_step": round(med, 4),
        "ms_min": round(min(times), 4),
        "ms_max": round(max(times), 4),
        "tokens_per_s": round(rows / med * 1000.0, 2),
        "n": len(times),
    }


# ---- cache helpers (transformers 5.x moved these APIs around; keep to what all 5.x have) ----


def new_dynamic_cache(config):
    from transformers import DynamicCache

    try:
        return DynamicCache(config=config)
    except TypeError:
        return DynamicCache()


def new_static_cache(config, max_len, dev):
    from transformers import StaticCache

    try:
        return StaticCache(config=config, max_cache_len=max_len)
    except TypeError:  # early 5.x / 4.x signature
        return StaticCache(
            config=config, max_batch_size=1, max_cache_len=max_len, device=dev, dtype=torch.bfloat16
        )


def seq_len(cache):
    n = cache.get_seq_length()
    return int(n.item()) if torch.is_tensor(n) else int(n)


def crop_dynamic(cache, ctx):
    """Brings a DynamicCache back to ctx tokens. crop() took an absolute length up to 5.17 and
    takes -tokens_to_remove from 5.17 on (positive values are refused from 5.18)."""
    extra = seq_len(cache) - ctx
    if extra == 0:
        return
    params = inspect.signature(cache.crop).parameters
    if "tokens_to_remove" in params:
        cache.crop(-extra)
    else:
        cache.crop(ctx)
    if seq_len(cache) != ctx:  # fall back to slicing the layers directly
        for layer in cache.layers:
            layer.keys = layer.keys[..., :ctx, :]
            layer.values = layer.values[..., :ctx, :]
    if seq_len(cache) != ctx:
        raise RuntimeError(f"could not crop the DynamicCache back to {ctx} tokens")


def rewind_static(cache, ctx):
    """Makes the next write of a StaticCache land at position ctx again. transformers 5.x static
    layers count written tokens themselves (cumulative_length, a tensor with a fixed address
    when compiled) rather than trusting the positions passed in."""
    layers = getattr(cache, "layers", [])
    for layer in layers:
        cl = getattr(layer, "cumulative_length", None)
        if torch.is_tensor(cl):
            cl.fill_(ctx)
        elif isinstance(cl, int):
            layer.cumulative_length = ctx


def position_kwargs(model, start, r, dev):
    pos = torch.arange(start, start + r, device=dev, dtype=torch.long)
    kw = {"position_ids": pos.unsqueeze(0)}
    inner = getattr(model, "base_model", model)
    if "cache_position" in inspect.signature(inner.forward).parameters:
        kw["cache_position"] = pos
    return kw


# ---- the variants ----


def run_eager(model, ctx, rows, prompt, step_ids, args, dev, report, base):
    """Returns {r: logits of the step} for the correctness check of the compiled variants."""
    refs = {}
    cache = new_dynamic_cache(model.config)
    model(input_ids=prompt, past_key_values=cache, use_cache=True, **position_kwargs(model, 0, ctx, dev))
    if seq_len(cache) != ctx:
        raise RuntimeError(f"prefill left {seq_len(cache)} tokens in the cache, not {ctx}")
    for r in rows:
        rec = dict(base, variant="eager", rows=r)
        try:
            ids = step_ids[r]
            kw = position_kwargs(model, ctx, r, dev)
            out = model(input_ids=ids, past_key_values=cache, use_cache=True, **kw)
            refs[r] = out.logits[0, -r:].float().clone()
            crop_dynamic(cache, ctx)

            def step():
                model(input_ids=ids, past_key_values=cache, use_cache=True, **kw)

            times = time_steps(step, lambda: crop_dynamic(cache, ctx), args.warmup, args.steps, dev)
            rec.update(summary(times, r))
            # The cache really went back to ctx each time: the step gives the same logits again.
            out = model(input_ids=ids, past_key_values=cache, use_cache=True, **kw)
            rec["max_abs_diff_last"] = round(float((out.logits[0, -r:].float() - refs[r]).abs().max()), 6)
            crop_dynamic(cache, ctx)
        except Exception as e:  # noqa: BLE001 - report, keep going
            rec["error"] = f"{type(e).__name__}: {e}"[:2000]
        report.emit(rec)
    del cache
    return refs


class Budget:
    """The compile time left to all compiled variants, and the last compile time per variant."""

    def __init__(self, total):
        self.total = total
        self.spent = 0.0
        self.last = {}

    def left(self):
        return self.total - self.spent

    def spend(self, s):
        self.spent += s


def run_compiled(m, variant, r, args, dev, report, budget):
    """One (model, variant, rows) measurement with a StaticCache and a freshly compiled forward."""
    model, ctx = m["model"], args.ctx
    mode = VARIANT_MODES[variant]
    rec = dict(m["base"], variant=variant, rows=r, mode=mode)
    left = budget.left()
    if left <= 0:
        rec["error"] = f"skipped: the compile budget of {budget.total:.0f} s is spent"
        report.emit(rec)
        return
    if variant in budget.last and left < budget.last[variant]:
        rec["error"] = (
            f"skipped: {left:.0f} s of the {budget.total:.0f} s compile budget left, "
            f"the last {variant} compile took {budget.last[variant]:.0f} s"
        )
        report.emit(rec)
        return
    graphs = mode == "reduce-overhead" and dev.type == "cuda"
    ids = m["step_ids"][r]
    ref = m["refs"].get(r)
    cache = fn = None
    try:
        cache = new_static_cache(model.config, ctx + 64, dev)
        # Prefill eagerly (transformers' own advice: the prefill should not be compiled).
        model(input_ids=m["prompt"], past_key_values=cache, use_cache=True, **position_kwargs(model, 0, ctx, dev))
        if seq_len(cache) != ctx:
            raise RuntimeError(f"static prefill left {seq_len(cache)} tokens, not {ctx}")
        fn = torch.compile(model.forward, mode=mode, dynamic=False)
        kw = position_kwargs(model, ctx, r, dev)

        def step():
            if graphs:
                torch.compiler.cudagraph_mark_step_begin()
            return fn(input_ids=ids, past_key_values=cache, use_cache=True, **kw)

        def reset():
            rewind_static(cache, ctx)

        from torch._dynamo.utils import counters

        breaks0 = sum(counters["graph_break"].values())
        t0 = time.perf_counter()
        try:
            with Deadline(left):
                # Compilation, then (reduce-overhead) the CUDA graph warm-up and recording runs.
                for i in range(3):
                    out = step()
                    if i == 0:
                        logits = out.logits[0, -r:].float().clone()
                    reset()
                sync(dev)
        finally:
            budget.spend(time.perf_counter() - t0)
        compile_s = time.perf_counter() - t0
        budget.last[variant] = compile_s
        rec["compile_s"] = round(compile_s, 2)
        rec["graph_breaks"] = sum(counters["graph_break"].values()) - breaks0
        if ref is not None:
            rec["max_abs_diff"] = round(float((logits - ref).abs().max()), 6)
            rec["ref_max_abs"] = round(float(ref.abs().max()), 6)
        times = time_steps(step, reset, args.warmup, args.steps, dev)
        rec.update(summary(times, r))
        if ref is not None:  # the rewind worked: the last step still matches eager
            out = step()
            rec["max_abs_diff_last"] = round(float((out.logits[0, -r:].float() - ref).abs().max()), 6)
            reset()
    except CompileTimeout:
        rec["error"] = f"compile interrupted: the compile budget of {budget.total:.0f} s is spent"
    except Exception as e:  # noqa: BLE001
        rec["error"] = f"{type(e).__name__}: {e}"[:2000]
    report.emit(rec)
    del fn, cache
    torch._dynamo.reset()
    gc.collect()


def model_params(model):
    return sum(p.numel() for p in model.parameters())


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("models", nargs="+", metavar="MODELDIR", help="model folders or GGUF files (needs the gguf package)")
    ap.add_argument("--ctx", type=int, default=128, help="tokens in the cache before each step")
    ap.add_argument("--rows", default="1,6", help="new tokens per step, comma-separated")
    ap.add_argument("--steps", type=int, default=50, help="timed steps per measurement")
    ap.add_argument("--warmup", type=int, default=10, help="untimed steps first")
    ap.add_argument("--out", help="append the JSON lines to this file too")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--variants", default="eager,compiled-graphs,compiled", help="measured in this order")
    ap.add_argument(
        "--compile-budget", type=float, default=240.0, help="seconds of compilation in all (default 240)"
    )
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    rows = [int(x) for x in args.rows.split(",") if x.strip()]
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    for v in variants:
        if v != "eager" and v not in VARIANT_MODES:
            ap.error(f"unknown variant {v!r}")
    if "eager" not in variants and any(v in VARIANT_MODES for v in variants):
        log("no eager variant: the compiled variants are not checked against eager logits")
    dev = torch.device(args.device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        ap.error("CUDA is not available; pass --device cpu")

    import transformers
    from transformers import AutoModelForCausalLM

    try:  # keep max-autotune's per-GEMM tables off stderr
        import torch._inductor.config as inductor_config

        if hasattr(inductor_config, "autotune_num_choices_displayed"):
            inductor_config.autotune_num_choices_displayed = 0
        if hasattr(inductor_config, "max_autotune_report_choices_stats"):
            inductor_config.max_autotune_report_choices_stats = False
    except Exception:  # noqa: BLE001
        pass

    report = Reporter(args.out)
    t_start = time.perf_counter()
    report.emit(
        {
            "event": "start",
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "python": platform.python_version(),
            "cuda": torch.version.cuda,
            "device": str(dev),
            "gpu": torch.cuda.get_device_name(dev) if dev.type == "cuda" else platform.processor() or "cpu",
            "ctx": args.ctx,
            "rows": rows,
            "steps": args.steps,
            "warmup": args.warmup,
            "variants": variants,
            "compile_budget_s": args.compile_budget,
        }
    )

    with torch.inference_mode():
        # All models stay loaded (in GPU memory) for the whole run: the compiled variants go
        # variant by variant, rows by rows, model by model, so that a compile budget that runs
        # out cuts the least useful measurements (larger rows of the last variant) first.
        models = []
        for mdir in args.models:
            name = os.path.basename(os.path.normpath(mdir)).removesuffix(".gguf")
            base = {"model": name, "ctx": args.ctx}
            try:
                t0 = time.perf_counter()
                if mdir.endswith(".gguf"):
                    # A GGUF file: transformers dequantizes it through the `gguf` package.
                    model = AutoModelForCausalLM.from_pretrained(
                        os.path.dirname(os.path.abspath(mdir)), gguf_file=os.path.basename(mdir), dtype=torch.bfloat16
                    )
                else:
                    model = AutoModelForCausalLM.from_pretrained(mdir, dtype=torch.bfloat16)
                model = model.to(dev).eval()
                sync(dev)
                load_s = round(time.perf_counter() - t0, 2)
            except Exception as e:  # noqa: BLE001
                for v in variants:
                    for r in rows:
                        report.emit(dict(base, variant=v, rows=r, error=f"load: {type(e).__name__}: {e}"[:2000]))
                continue
            base.update(
                params=model_params(model),
                load_s=load_s,
                attn=getattr(model.config, "_attn_implementation", None),
            )
            log(f"{name}: loaded in {load_s} s")
            gen = torch.Generator(device="cpu").manual_seed(args.seed)
            vocab = model.config.vocab_size
            prompt = torch.randint(0, vocab, (1, args.ctx), generator=gen).to(dev)
            step_ids = {r: torch.randint(0, vocab, (1, r), generator=gen).to(dev) for r in rows}
            models.append(dict(name=name, model=model, base=base, prompt=prompt, step_ids=step_ids, refs={}))

        if "eager" in variants:
            for m in models:
                try:
                    m["refs"] = run_eager(m["model"], args.ctx, rows, m["prompt"], m["step_ids"], args, dev, report, m["base"])
                except Exception as e:  # noqa: BLE001
                    for r in rows:
                        report.emit(dict(m["base"], variant="eager", rows=r, error=f"{type(e).__name__}: {e}"[:2000]))

        budget = Budget(args.compile_budget)
        for v in variants:
            if v == "eager":
                continue
            for r in rows:
                for m in models:
                    log(f"{m['name']}: {v} rows={r} (compile budget left: {budget.left():.0f} s)")
                    run_compiled(m, v, r, args, dev, report, budget)

    report.emit({"event": "done", "seconds": round(time.perf_counter() - t_start, 1)})


if __name__ == "__main__":
    sys.exit(main())
