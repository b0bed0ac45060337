#!/usr/bin/env bash
# Session 30, call B (a fresh machine): `v5` (this tree: v4, and a Q4_K product of at least 8,192
# columns, the gate and up products, through int8 mma from 5 rows, SPECD_DOT_MMA_WIDE_FROM) against
# v4 and against v5 with int8 mma for those products from 3 rows (`v5w3`:
# SPECD_DOT_MMA_WIDE_FROM=3 SPECD_DOTC_MAX_ROWS=2), on the synthetic target, twice; the GPU
# suites on v5 first; Nsight Compute over v5's 5-row forwards last; then llama.cpp's build
# starts in the background. Carry .gpu/specd.xz, .gpu/tests-gpu.tar.xz, .xfer/llama-src.tar.xz, .xfer/old/specd-v4.xz and .xfer/target-header.gguf (the GLIDE file moved
# out of the checkout). Leaves ~/stash/specd (v5) and what scripts/gpu/e2e unpacks.
set -uo pipefail
T0=$SECONDS
S=~/stash; mkdir -p $OUT/r $S
xz -dc .gpu/specd.xz > $S/specd-v5 && chmod +x $S/specd-v5 && cp $S/specd-v5 $S/specd
cp .gpu/specd.xz $S/ && cp .gpu/tests-gpu.tar.xz $S/tests.tar.xz
xz -dc .xfer/old/specd-v4.xz > $S/specd-v4 && chmod +x $S/specd-v4
python3 scripts/gpu/synth-gguf.py .xfer/target-header.gguf $S/synth.gguf | tail -1
nvidia-smi --query-gpu=name,clocks.sm,clocks.mem,driver_version --format=csv,noheader
echo "setup $((SECONDS-T0)) s"
timeout 200 scripts/gpu/check $OUT/r/check > $OUT/r/check.out 2>&1
echo "check rc=$? $((SECONDS-T0)) s"; grep -v "NOT RUN" $OUT/r/check/summary.txt
for round in 1 2; do
  for v in v4 v5 v5w3; do
    bin=$S/specd-${v%w3}; envs=()
    [[ $v == v5w3 ]] && envs=(SPECD_DOT_MMA_WIDE_FROM=3 SPECD_DOTC_MAX_ROWS=2)
    env "${envs[@]}" timeout 90 $bin bench --device cuda --model $S/synth.gguf --prompt-tokens 128 --gen-tokens 64 \
      --verify-rows 1,2,3,4,5,6,8 --repeat 2 > $OUT/r/bench-$v-$round.json 2> $OUT/r/bench-$v-$round.err
    echo "$v $round rc=$? $((SECONDS-T0)) s"
    python3 - $OUT/r/bench-$v-$round.json <<'PY'
import json, sys
r = next(json.loads(l) for l in open(sys.argv[1]) if l.startswith("{"))
d = next(x for x in r["decode"] if x["graphs"])
print(f"  decode {d['ms_per_step']} ms, growing {r['decode_growing']['mean_ms']}, pp {r['pp_tokens_per_s']} tok/s;",
      " ".join(f"{v['rows']}:{v['ms']}" for v in r["verify"]))
PY
  done
done
SPECD=$S/specd-v5 timeout 120 scripts/gpu/profile-rows $S/synth.gguf $OUT/r/prof-v5 5 | grep -E "^\| (dot|mdot)|total"
# llama.cpp builds in the background through the stash calls that follow (spec2.sh waits for it).
cp .xfer/llama-src.tar.xz $S/ && STASH=$S nice -n 10 scripts/gpu/llamacpp build
(cd $OUT && tar -cJf r.tar.xz r && rm -rf r)
echo "all done $((SECONDS-T0)) s"
