#!/usr/bin/env python3
"""llama.cpp CPU baseline: prefill (pp128) and decode (tg64) speed of one or more GGUF models.

Run with the venv made by scripts/bench/setup-llamacpp:

    ~/.cache/specd/bench/venv/bin/python scripts/bench/llamacpp_bench.py MODEL.gguf [MODEL.gguf ...]

What is measured (per model, each in its own child process so peak RSS is per model):
  * pp128: one llama_decode() of a 128-token prompt batch (n_batch = n_ubatch = 512, logits only
    for the last position) on an empty KV cache. t/s = 128 / wall time of that call.
  * tg64:  after the prompt, 64 greedy steps; each step is one llama_decode() of a single token
    (the argmax of the previous logits) at the next position. Only the llama_decode() calls are
    timed (the argmax in Python is not); t/s = 64 / sum of the 64 step times. Prompt time is
    excluded.
  * one untimed warm-up round (pages the mmap'd weights in, warms caches), then --reps timed
    rounds; each round clears the KV cache first. Median, min and max are reported.
  * contention: the share of all cores that other processes used during the timed rounds is
    reported ("other_procs_cpu_fraction"); with 2 threads on 2 cores, anything well above 0
    disturbs the numbers. --wait-idle LOAD waits for a quiet machine before each model.
  * peak RSS: resource.getrusage(RUSAGE_SELF).ru_maxrss of the child (the mmap'd weights that were
    touched count, as they do for specd).

Settings: n_threads = n_threads_batch = 2 (--threads), n_ctx = 1024, flash attention off (the
llama-cpp-python default; --flash-attn turns it on), mmap on, CPU only.

Output: one JSON object per model on stdout (one line each); a human-readable table on stderr.
The greedy continuation (token ids) is in the JSON, so other engines can check identical output.
"""

import argparse
import ctypes
import hashlib
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time

PROMPT_SEED = (
    "You are a careful senior engineer. Review the following Python module and explain any bugs.\n\n"
    "import os\nimport sys\nfrom typing import List, Optional\n\n\n"
    "def read_lines(path: str) -> List[str]:\n"
    "    with open(path, 'r', encoding='utf-8') as f:\n"
    "        return [line.rstrip('\\n') for line in f]\n\n\n"
    "def parse_config(lines: List[str]) -> dict:\n"
    "    config = {}\n"
    "    for i, line in enumerate(lines):\n"
    "        if not line or line.startswith('#'):\n"
    "            continue\n"
    "        key, _, value = line.partition('=')\n"
    "        config[key.strip()] = value.strip()\n"
    "    return config\n\n\n"
    "class Cache:\n"
    "    def __init__(self, capacity: int = 128):\n"
    "        self.capacity = capacity\n"
    "        self.items = {}\n"
    "        self.order = []\n\n"
    "    def get(self, key: str) -> Optional[str]:\n"
    "        if key in self.items:\n"
    "            self.order.remove(key)\n"
    "            self.order.append(key)\n"
    "            return self.items[key]\n"
    "        return None\n\n"
    "    def put(self, key: str, value: str) -> None:\n"
    "        if len(self.items) >= self.capacity:\n"
    "            oldest = self.order.pop(0)\n"
    "            del self.items[oldest]\n"
    "        self.items[key] = value\n"
    "        self.order.append(key)\n"
)


def sha256_prefix(path, n=12):
    side = path + ".sha256"
    if os.path.exists(side):
        with open(side) as f:
            return f.read().split()[0][:n]
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()[:n]


def cpu_name():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def cpu_busy_jiffies():
    """System-wide busy CPU time (jiffies) from /proc/stat, or None."""
    try:
        with open("/proc/stat") as f:
            parts = f.readline().split()[1:]
    except OSError:
        return None
    v = [int(x) for x in parts]
    # user nice system idle iowait irq softirq steal ...
    return v[0] + v[1] + v[2] + v[5] + v[6] + (v[7] if len(v) > 7 else 0)


class Contention:
    """How much CPU other processes used while we measured (fraction of all cores)."""

    def __init__(self):
        self.tick = os.sysconf("SC_CLK_TCK")
        self.b0 = cpu_busy_jiffies()
        t = os.times()
        self.own0 = t.user + t.system
        self.w0 = time.perf_counter()

    def other_fraction(self):
        b1 = cpu_busy_jiffies()
        if self.b0 is None or b1 is None:
            return None
        t = os.times()
        own = t.user + t.system - self.own0
        wall = time.perf_counter() - self.w0
        other = (b1 - self.b0) / self.tick - own
        return max(0.0, other / (wall * (os.cpu_count() or 1)))


def wait_idle(max_load, timeout_s):
    """Wait until the 1-minute load average is at most max_load (or timeout). Returns waited s."""
    t0 = time.time()
    while time.time() - t0 < timeout_s:
        if os.getloadavg()[0] <= max_load:
            break
        time.sleep(5)
    return time.time() - t0


def summarize(xs):
    return {
        "median": statistics.median(xs),
        "min": min(xs),
        "max": max(xs),
        "runs": xs,
    }


def bench_one(args):
    """Runs in the child process: load one model, measure, print one JSON line."""
    import llama_cpp
    import numpy as np

    path = args.model[0]
    llm = llama_cpp.Llama(
        model_path=path,
        n_ctx=args.ctx,
        n_batch=512,
        n_ubatch=512,
        n_threads=args.threads,
        n_threads_batch=args.threads,
        n_gpu_layers=0,
        flash_attn=args.flash_attn,
        verbose=False,
    )
    ctx = llm.ctx
    n_vocab = llm.n_vocab()
    mem = llama_cpp.llama_get_memory(ctx)

    # The prompt: exactly n_prompt tokens of code-review text (no BOS; Qwen adds none).
    prompt = llm.tokenize(PROMPT_SEED.encode(), add_bos=False, special=False)
    while len(prompt) < args.prompt:
        prompt += prompt
    prompt = prompt[: args.prompt]

    batch = llama_cpp.llama_batch_init(max(args.prompt, 1), 0, 1)

    def fill(tokens, pos0, last_logits_only=True):
        batch.n_tokens = len(tokens)
        for i, t in enumerate(tokens):
            batch.token[i] = t
            batch.pos[i] = pos0 + i
            batch.n_seq_id[i] = 1
            batch.seq_id[i][0] = 0
            batch.logits[i] = 0
        batch.logits[len(tokens) - 1] = 1

    def argmax_last():
        ptr = llama_cpp.llama_get_logits_ith(ctx, -1)
        logits = np.ctypeslib.as_array(ptr, shape=(n_vocab,))
        return int(np.argmax(logits))

    def one_round():
        llama_cpp.llama_memory_clear(mem, True)
        fill(prompt, 0)
        t0 = time.perf_counter()
        rc = llama_cpp.llama_decode(ctx, batch)
        llama_cpp.llama_synchronize(ctx)
        t_pp = time.perf_counter() - t0
        if rc != 0:
            raise RuntimeError(f"llama_decode(prompt) returned {rc}")
        tok = argmax_last()
        out = [tok]
        step_times = []
        pos = len(prompt)
        for _ in range(args.gen):
            fill([tok], pos)
            t0 = time.perf_counter()
            rc = llama_cpp.llama_decode(ctx, batch)
            llama_cpp.llama_synchronize(ctx)
            step_times.append(time.perf_counter() - t0)
            if rc != 0:
                raise RuntimeError(f"llama_decode(step) returned {rc}")
            pos += 1
            tok = argmax_last()
            out.append(tok)
        return t_pp, step_times, out

    one_round()  # warm-up, not counted
    load_before = os.getloadavg()[0]
    cont = Contention()
    pp_tps, tg_tps, step_ms_median, outputs = [], [], [], []
    for _ in range(args.reps):
        t_pp, steps, out = one_round()
        pp_tps.append(args.prompt / t_pp)
        tg_tps.append(args.gen / sum(steps))
        step_ms_median.append(statistics.median(steps) * 1e3)
        outputs.append(out)
    llama_cpp.llama_batch_free(batch)
    other_cpu = cont.other_fraction()

    # The first generated token comes from the prompt logits; the 64 timed steps evaluate
    # out[0..63] and yield out[1..64].
    deterministic = all(o == outputs[0] for o in outputs)
    rss_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    result = {
        "engine": "llama.cpp",
        "llama_cpp_python": llama_cpp.__version__,
        "model": os.path.basename(path),
        "model_sha256_prefix": sha256_prefix(path),
        "model_bytes": os.path.getsize(path),
        "cpu": cpu_name(),
        "n_cpus": os.cpu_count(),
        "threads": args.threads,
        "n_ctx": args.ctx,
        "n_batch": 512,
        "flash_attn": args.flash_attn,
        "pp_tokens": args.prompt,
        "tg_tokens": args.gen,
        "reps": args.reps,
        "pp_tps": summarize(pp_tps),
        "tg_tps": summarize(tg_tps),
        "tg_step_ms_median": summarize(step_ms_median),
        "peak_rss_mib": round(rss_kib / 1024, 1),
        "loadavg1_before": load_before,
        "other_procs_cpu_fraction": None if other_cpu is None else round(other_cpu, 3),
        "greedy_deterministic": deterministic,
        "prompt_ids": prompt,
        "greedy_ids": outputs[0],
        "greedy_text": llm.detokenize(outputs[0]).decode("utf-8", errors="replace"),
        "system_info": llama_cpp.llama_print_system_info().decode().strip(),
    }
    llm.close()
    print(json.dumps(result), flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", nargs="+", help="GGUF file(s)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--ctx", type=int, default=1024)
    ap.add_argument("--prompt", type=int, default=128, help="prompt tokens (pp)")
    ap.add_argument("--gen", type=int, default=64, help="decoded tokens (tg)")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--flash-attn", action="store_true", help="flash attention on (default off)")
    ap.add_argument("--wait-idle", type=float, default=None, metavar="LOAD",
                    help="before each model, wait (up to --wait-timeout s) until loadavg(1m) <= LOAD")
    ap.add_argument("--wait-timeout", type=float, default=600)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.child:
        bench_one(args)
        return

    results = []
    for m in args.model:
        if args.wait_idle is not None:
            waited = wait_idle(args.wait_idle, args.wait_timeout)
            print(f"waited {waited:.0f} s for idle (loadavg {os.getloadavg()[0]:.2f})", file=sys.stderr)
        cmd = [sys.executable, os.path.abspath(__file__), "--child", m,
               "--threads", str(args.threads), "--ctx", str(args.ctx),
               "--prompt", str(args.prompt), "--gen", str(args.gen), "--reps", str(args.reps)] + (["--flash-attn"] if args.flash_attn else [])
        p = subprocess.run(cmd, stdout=subprocess.PIPE, text=True)
        if p.returncode != 0:
            print(f"benchmark of {m} failed (exit {p.returncode})", file=sys.stderr)
            sys.exit(p.returncode)
        line = p.stdout.strip().splitlines()[-1]
        print(line, flush=True)
        results.append(json.loads(line))

    e = sys.stderr
    print(f"\nllama.cpp (llama-cpp-python {results[0]['llama_cpp_python']}), {results[0]['cpu']}, "
          f"{args.threads} threads, n_ctx {args.ctx}, flash_attn {args.flash_attn}, median of {args.reps} (min..max)", file=e)
    hdr = f"{'model':<44} {'sha256':<12} {'pp%d t/s' % args.prompt:>22} {'tg%d t/s' % args.gen:>20} {'step ms':>8} {'peak RSS':>10} {'other':>6}"
    print(hdr, file=e)
    # 'other' = share of all cores used by other processes during the timed rounds; numbers
    # taken with it well above 0 are disturbed (2 cores, 2 threads: any other load hurts).
    print("-" * len(hdr), file=e)
    for r in results:
        pp, tg = r["pp_tps"], r["tg_tps"]
        print(f"{r['model']:<44} {r['model_sha256_prefix']:<12} "
              f"{pp['median']:>8.1f} ({pp['min']:.1f}..{pp['max']:.1f}) "
              f"{tg['median']:>7.2f} ({tg['min']:.2f}..{tg['max']:.2f}) "
              f"{r['tg_step_ms_median']['median']:>8.2f} {r['peak_rss_mib']:>7.0f} MiB "
              f"{r['other_procs_cpu_fraction']!s:>6}", file=e)


if __name__ == "__main__":
    main()
