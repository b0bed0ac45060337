#!/usr/bin/env bash
# Session 31, hold 2, call 1 (a fresh machine): `new` (this tree: the narrow products of 2 to 8
# rows, q/k/v/o and down, through int8 mma on clusters of 8 CTAs that share a tile's 64
# classes, kernels/cuda/qmma.cu `mdot_*_z{2,4,8}`) against `old` (57d6ea6, main before it) on
# the synthetic target (the real 1.5B's header, random weights), twice, interleaved, with
# variants of the new settings (`off`: no clusters; `z4`: clusters of 4; `from1`: one row too;
# `all`: the gate and up products too, from one row; `allp4`: gate and up on clusters from 2
# rows and the head in lane-per-column passes of 4); the GPU suites on `new` first; Nsight Compute over new's 5-row
# forwards after; then llama.cpp's build starts in the background. Carry .gpu/specd.xz,
# .gpu/tests-gpu.tar.xz, .xfer/old/specd-57d6ea6.xz, .xfer/target-header.gguf and
# .xfer/llama-src.tar.xz (the GLIDE file out of the checkout). Leaves ~/stash/specd (new),
# ~/stash/specd-old and ~/stash/specd.xz for scripts/gpu/e2e.
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
  for v in old new off z4 from1 all allp4; do
    bin=$S/specd-new; envs=()
    case $v in
      old) bin=$S/specd-old ;;
      off) envs=(SPECD_DOT_MMA_CLUSTER_FROM=99) ;;
      z4) envs=(SPECD_DOT_MMA_CLUSTER=4) ;;
      from1) envs=(SPECD_DOT_MMA_CLUSTER_FROM=1) ;;
      all) envs=(SPECD_DOT_MMA_CLUSTER_FROM=1 SPECD_DOTC_MIN_COLS=1000000) ;;
      allp4) envs=(SPECD_DOTC_MIN_COLS=1000000 SPECD_DOTC_MAX_ROWS=8 SPECD_DOTC_PASS_ROWS=4) ;;
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
SPECD=$S/specd-new timeout 120 scripts/gpu/profile-rows $S/synth.gguf $OUT/r/prof-new 5 | grep -E "^\| |total"
cp .xfer/llama-src.tar.xz $S/ && STASH=$S nice -n 10 scripts/gpu/llamacpp build
(cd $OUT && tar -cJf r.tar.xz r && rm -rf r)
echo "all done $((SECONDS-T0)) s"
