#!/usr/bin/env python3
"""Prints the tables of a scripts/gpu/bench results folder: specd's decode step against the
roofline, the anchor and transformers; verification cost by rows; one draft-and-verify cycle
(the 1.5B shape drafting for the 7B shape); aggregate tokens/s by batch; where a decode step's kernel time goes (Nsight Compute).
Usage: summarize.py DIR [--profile-only]"""
import json, pathlib, sys

d = pathlib.Path(sys.argv[1])


def lines(name):
    p = d / name
    if not p.exists():
        return []
    out = []
    for l in p.read_text().splitlines():
        l = l.strip()
        if l.startswith("{"):
            try:
                out.append(json.loads(l))
            except json.JSONDecodeError:
                pass
    return out


def decode(r, graphs=True):
    """A `specd bench` result's decode measurement with CUDA graphs on (or off)."""
    return next(x for x in r["decode"] if x["graphs"] == graphs)


def kernel_profile(prof):
    """The per-kernel table of an Nsight Compute CSV (scripts/gpu/bench's ncu-7b.csv,
    scripts/gpu/profile's ncu.csv), in µs per decode step. Where the capture holds several
    steps, only whole ones count: the launches after the first argmax_finish (a step's last
    launch) through the last; a capture of one step counts as it is."""
    import csv, collections, io
    rows = [l for l in prof.read_text().splitlines() if l.startswith('"')]
    if not rows:
        return
    launches = {}  # launch ID → [name, duration µs, DRAM bytes], in launch order
    for r in csv.DictReader(io.StringIO("\n".join(rows))):
        name = r.get("Kernel Name", "?").split("(")[0]
        if name.startswith(("matmul", "dot", "mdot", "qgemm")):
            # One row per product: the grid size tells QKV, O, gate/up, down and the head apart.
            name = f"{name} grid {r.get('Grid Size', '?').split(',')[0].strip('( ')}"
        entry = launches.setdefault(r.get("ID", "?"), [name, 0.0, 0.0])
        unit = r.get("Metric Unit", "")
        try:
            v = float(r.get("Metric Value", "0").replace(",", ""))
        except ValueError:
            continue
        m = r.get("Metric Name", "")
        if m == "gpu__time_duration.sum":
            entry[1] += v * {"ns": 1e-3, "nsecond": 1e-3, "us": 1.0, "usecond": 1.0, "ms": 1e3,
                             "msecond": 1e3}[unit]
        elif m == "dram__bytes_read.sum":
            entry[2] += v * {"byte": 1, "Kbyte": 1e3, "Mbyte": 1e6, "Gbyte": 1e9, "B": 1, "KB": 1e3,
                             "MB": 1e6, "GB": 1e9}[unit]
    order = list(launches.values())
    ends = [i for i, e in enumerate(order) if e[0] == "argmax_finish"]
    if len(ends) >= 2:
        order, steps = order[ends[0] + 1 : ends[-1] + 1], len(ends) - 1
    else:
        steps = max(1, sum(e[0] == "argmax_partial" for e in order))
    dur = collections.defaultdict(float)
    cnt = collections.Counter()
    byts = collections.defaultdict(float)
    for name, us, b in order:
        dur[name] += us
        cnt[name] += 1
        byts[name] += b
    total = sum(dur.values())
    print()
    print(f"## Where a decode step's kernel time goes ({prof.name}: Nsight Compute, graphs off, "
          f"{steps} step(s), µs per step)")
    print("| kernel | launches a step | µs a step | µs each | share | DRAM read GB/s |")
    print("|---|---|---|---|---|---|")
    for fam, us in sorted(dur.items(), key=lambda x: -x[1]):
        bw = byts[fam] / (us * 1e-6) / 1e9 if us else 0
        print(f"| {fam} | {cnt[fam] / steps:g} | {us / steps:.0f} | {us / cnt[fam]:.1f} | "
              f"{100 * us / total:.0f} % | {bw:.0f} |")
    print(f"| total | {sum(cnt.values()) / steps:g} | {total / steps:.0f} | | | |")


if "--profile-only" in sys.argv:
    # scripts/gpu/profile's folder: the kernel table alone.
    for prof in sorted(d.glob("ncu*.csv")):
        kernel_profile(prof)
    sys.exit(0)

shapes = ["qwen2.5-1.5b-shape", "qwen2.5-7b-shape"]
specd = {s: (lines(f"specd-{s}.json") or [None])[0] for s in shapes}
anchor = {a.get("shape", "").replace("qwen2.5-", "qwen2.5-") + "-shape": a for a in lines("anchor.jsonl") if "shape" in a}
tf = {}
tfc = {}
for r in lines("transformers.jsonl"):
    if "ms_per_step" in r:
        key = (pathlib.Path(r["model"]).name, r["rows"])
        if r.get("variant") == "eager":
            tf[key] = r["ms_per_step"]
        elif r.get("variant") == "compiled-graphs":
            tfc[key] = r["ms_per_step"]

print("## Decode, batch 1, 128-token cache (ms per step)")
print("| shape | bytes/step | copy TB/s | roofline | specd graphs | % roofline | specd no graphs | product kernel | torch graph anchor | transformers eager | transformers compiled + graphs |")
print("|---|---|---|---|---|---|---|---|---|---|---|")
for s in shapes:
    r = specd[s]
    if not r:
        print(f"| {s} | (failed: see specd-{s}.err) |")
        continue
    g, n = decode(r), decode(r, False)
    a = anchor.get(s, {}).get("graph_ms")
    t = tf.get((s, 1))
    fmt = lambda v: "–" if v is None else f"{v:.2f}"
    print(f"| {s} | {r['bytes_per_step']/1e9:.2f} GB | {r['copy_bandwidth_TBps']:.2f} | {r['roofline_ms']:.2f} | {g['ms_per_step']:.2f} | {g['pct_of_roofline']:.0f} % | {n['ms_per_step']:.2f} | {r.get('matmul')} | {fmt(a)} | {fmt(t)} | {fmt(tfc.get((s, 1)))} |")
print()
print("## Row-product kernels side by side (decode ms, 6-row verification ms, 128-token prefill tok/s)")
for s in shapes:
    r = specd[s]
    if r and r.get("sweep"):
        print(f"- {s}: " + ", ".join(f"{v['matmul']}: {v['decode_ms']:.2f} / {v['verify6_ms']:.2f}" + (f" / {v['pp_tokens_per_s']:.0f}" if "pp_tokens_per_s" in v else "") for v in r["sweep"]))
print()
print("## Programmatic dependent launch (PDL) on and off, same kernel (ms: decode, 6-row verification)")
for s in shapes:
    r, off = specd[s], (lines(f"specd-{s}-nopdl.json") or [None])[0]
    if r and off:
        def dv(x):
            g = decode(x)["ms_per_step"]
            six = next((v["ms"] for v in x["verify"] if v["rows"] == 6), float("nan"))
            return g, six
        (a, a6), (b, b6) = dv(r), dv(off)
        print(f"- {s} ({off.get('matmul')}): on {a:.2f} / {a6:.2f}, off {b:.2f} / {b6:.2f}")
print()
print("## Launches and host time per decode step")
print("| shape | graphs: launches | host µs | no graphs: launches | host µs |")
print("|---|---|---|---|---|")
for s in shapes:
    r = specd[s]
    if r:
        g, n = decode(r), decode(r, False)
        print(f"| {s} | {g['launches_per_step']} | {g['host_us_per_step']} | {n['launches_per_step']} | {n['host_us_per_step']} |")
print()
print("## Verification of k + 1 rows (greedy verdict on the device), ms and against one row")
for s in shapes:
    r = specd[s]
    if r:
        print(f"- {s}: " + ", ".join(f"{v['rows']}: {v['ms']:.2f} ({v['vs_one_row']:.2f}×)" for v in r["verify"]))
        for name, src in (("eager", tf), ("compiled + graphs", tfc)):
            t6 = src.get((s, 6)); t1 = src.get((s, 1))
            if t1 and t6:
                print(f"  transformers {name}: 1 row {t1:.2f} ms, 6 rows {t6:.2f} ms ({t6/t1:.2f}×)")
print()
dr, tg = specd.get("qwen2.5-1.5b-shape"), specd.get("qwen2.5-7b-shape")
if dr and tg:
    d1, t1 = decode(dr)["ms_per_step"], decode(tg)["ms_per_step"]
    print("## One draft-and-verify cycle: 1.5B-shape drafter, 7B-shape target (ms)")
    print("| k | k drafter steps | verify k+1 rows | cycle | target-only for the same tokens at full acceptance | ratio |")
    print("|---|---|---|---|---|---|")
    for v in tg["verify"]:
        k = v["rows"] - 1
        if k == 0:
            continue
        cycle = k * d1 + v["ms"]
        print(f"| {k} | {k*d1:.2f} | {v['ms']:.2f} | {cycle:.2f} | {(k+1)*t1:.2f} | {(k+1)*t1/cycle:.2f}× |")
    print()
print("## Aggregate decode tokens/s by batch (one row per sequence)")
for s in shapes:
    r = specd[s]
    if r:
        print(f"- {s}: " + ", ".join(f"{b['batch']}: {b['tokens_per_s']:.0f}" for b in r["batch"]))

for prof in sorted(d.glob("ncu*.csv")):
    kernel_profile(prof)

for s in shapes:
    p = d / f"load-{s}.md"
    if p.exists() and p.read_text().strip():
        print()
        print(f"## The engine on the GPU: `specd bench-load` on {s}")
        print(p.read_text().strip())
