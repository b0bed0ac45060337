#!/usr/bin/env python3
"""Each profiled kernel's top stall reasons, from `ncu --section WarpStateStats --page raw --csv`.

    scripts/gpu/stalls.py NCU_RAW.csv [TOP]

A line per launch: kernel name, grid, then the TOP (default 6) reasons its warps waited, in
the unit Nsight Compute reports them (for `..._issue_stalled_<reason>_per_issue_active.ratio`,
cycles a warp spent stalled for that reason per instruction issued; the section's other
families, such as `..._per_warp_active.pct`, when that one is absent). Used by
scripts/gpu/try-kernels.
"""
import collections
import csv
import re
import sys

STALL = re.compile(r"issue_stalled_(\w+?)_(per_[\w.]+)$")
PREFERRED = ("per_issue_active.ratio", "per_warp_active.pct")


def main():
    path = sys.argv[1]
    top = int(sys.argv[2]) if len(sys.argv) > 2 else 6
    rows = [r for r in csv.reader(open(path, newline="")) if r]
    head = next((i for i, r in enumerate(rows) if "Kernel Name" in r), None)
    if head is None:
        sys.exit(f"stalls: no kernel rows in {path} (did ncu run? see its .err)")
    names, units = rows[head], rows[head + 1]
    col = {n: i for i, n in enumerate(names)}
    families = collections.defaultdict(list)
    for n in names:
        m = STALL.search(n.split("__", 1)[-1])
        if m:
            families[m.group(2)].append((m.group(1), n))
    if not families:
        sys.exit(f"stalls: no issue_stalled metrics in {path}")
    family = next((f for f in PREFERRED if f in families), max(families, key=lambda f: len(families[f])))
    grid = next((col[g] for g in ("launch__grid_size", "Grid Size") if g in col), None)
    unit = units[col[families[family][0][1]]] if len(units) == len(names) else ""
    print(f"stall reasons ({family}{', ' + unit if unit else ''})")
    for r in rows[head + 2:]:
        if len(r) != len(names):
            continue
        kernel = r[col["Kernel Name"]] + (f" grid {r[grid]}" if grid is not None else "")
        vals = []
        for reason, n in families[family]:
            if reason == "selected":  # issuing, not waiting: about one a cycle issued
                continue
            try:
                vals.append((float(r[col[n]].replace(",", "")), reason))
            except ValueError:
                continue
        vals.sort(reverse=True)
        print(kernel + ": " + ", ".join(f"{reason} {v:.2f}" for v, reason in vals[:top]))


if __name__ == "__main__":
    main()
