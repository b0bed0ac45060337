#!/usr/bin/env bash
# Session 31, hold 3, call 1 (a fresh machine): `new` (this tree: a narrow product's
# verification rows may spread over CTAs of their own, SPECD_DOT_WARP_ROWS: the dp4a kernels'
# rows loop starts at the grid's y; and its split dp4a kernels of 4 and 8 rows a pass may take
# two columns a warp, SPECD_DOT_WARP_PAIR_FROM) against `old` (57d6ea6, main before it) on the
# synthetic target (the real 1.5B's header, random weights), twice, interleaved: new as built
# (8 rows a CTA, one column a warp: as old) and with 4, 2 and 1 row(s) a CTA, with two columns
# a warp from 3 rows, and that with 4 rows a CTA; the GPU suites on `new` first; Nsight Compute
# over 5-row forwards with two columns a warp after. (Its `new` is the binary as it ran, with
# those defaults off; the tree's defaults are now 4 rows a CTA and two columns a warp from 5
# rows, so a rerun of this tree would read differently.) Carry .gpu/specd.xz,
# .gpu/tests-gpu.tar.xz, .xfer/old/specd-57d6ea6.xz and .xfer/target-header.gguf (the GLIDE file
# out of the checkout).
set -uo pipefail
T0=$SECONDS
S=~/stash; mkdir -p $OUT/r $S
xz -dc .gpu/specd.xz > $S/specd-new && chmod +x $S/specd-new && cp $S/specd-new $S/specd
cp .gpu/specd.xz $S/ && cp .gpu/tests-gpu.tar.xz $S/tests.tar.xz
xz -dc .xfer/old/specd-57d6ea6.xz > $S/specd-old && chmod +x $S/specd-old
python3 scripts/gpu/synth-gguf.py .xfer/target-header.gguf $S/synth.gguf | tail -1
nvidia-smi --query-gpu=name,clocks.sm,clocks.mem,driver_version --format=csv,noheader
echo "setup $((SECONDS-T0)) s"
timeout 200 scripts/gpu/check $OUT/r/check > $OUT/r/check.out 2>&1
echo "check rc=$? $((SECONDS-T0)) s"; grep -v "NOT RUN" $OUT/r/check/summary.txt
for round in 1 2; do
  for v in old new w4 w2 w1 p3 p3w4; do
    bin=$S/specd-new; envs=()
    case $v in
      old) bin=$S/specd-old ;;
      w4) envs=(SPECD_DOT_WARP_ROWS=4) ;;
      w2) envs=(SPECD_DOT_WARP_ROWS=2) ;;
      w1) envs=(SPECD_DOT_WARP_ROWS=1) ;;
      p3) envs=(SPECD_DOT_WARP_PAIR_FROM=3) ;;
      p3w4) envs=(SPECD_DOT_WARP_PAIR_FROM=3 SPECD_DOT_WARP_ROWS=4) ;;
    esac
    env "${envs[@]}" timeout 90 $bin bench --device cuda --model $S/synth.gguf --prompt-tokens 128 --gen-tokens 64 \
      --verify-rows 1,2,3,4,5,6,8 --repeat 2 > $OUT/r/bench-$v-$round.json 2> $OUT/r/bench-$v-$round.err
    echo "$v $round rc=$? $((SECONDS-T0)) s"
    python3 - $OUT/r/bench-$v-$round.json <<'PY'
import json, sys
r = next(json.loads(l) for l in open(sys.argv[1]) if l.startswith("{"))
d = next(x for x in r["decode"] if x["graphs"])
print(f"  decode {d['ms_per_step']} ms;", " ".join(f"{v['rows']}:{v['ms']}" for v in r["verify"]))
PY
  done
done
SPECD_DOT_WARP_PAIR_FROM=3 SPECD=$S/specd-new timeout 120 scripts/gpu/profile-rows $S/synth.gguf $OUT/r/prof-p3 5 | grep -E "^\| |total"
(cd $OUT && tar -cJf r.tar.xz r && rm -rf r)
echo "all done $((SECONDS-T0)) s"
