#!/usr/bin/env bash
# Session 30, call A (a fresh machine): `v4` (this tree: the 4- and 8-row warp-per-column
# kernels take a Q4_K chunk's activation scale at its term again, as 29ab53e did; v3 loaded it
# with the row's activations and ran 5 rows 8 % slower than base) against base (29ab53e) and v3:
# the GPU kernel and engine suites on v4 first (scripts/gpu/check), then `specd bench` on the
# synthetic target (the real 1.5B's header, random weights) base / v3 / v4 / v4 with int8 mma
# from 3 rows (SPECD_DOT_MMA_FROM=3), twice; then Nsight Compute over 5-row forwards of v4 and of
# v4 with mma (scripts/gpu/profile-rows), to see which products mma wins at 5 rows.
# Carry .gpu/specd.xz, .gpu/tests-gpu.tar.xz, .xfer/old/specd-29ab53e.xz, .xfer/old/specd-v3.xz
# and .xfer/target-header.gguf (the GLIDE file moved out of the checkout).
set -uo pipefail
T0=$SECONDS
S=~/stash; mkdir -p $OUT/r $S
xz -dc .gpu/specd.xz > $S/specd-v4 && chmod +x $S/specd-v4
cp .gpu/specd.xz $S/ && cp .gpu/tests-gpu.tar.xz $S/tests.tar.xz
xz -dc .xfer/old/specd-29ab53e.xz > $S/specd-base && chmod +x $S/specd-base
xz -dc .xfer/old/specd-v3.xz > $S/specd-v3 && chmod +x $S/specd-v3
python3 scripts/gpu/synth-gguf.py .xfer/target-header.gguf $S/synth.gguf | tail -1
nvidia-smi --query-gpu=name,clocks.sm,clocks.mem,driver_version --format=csv,noheader
echo "setup $((SECONDS-T0)) s"
timeout 200 scripts/gpu/check $OUT/r/check > $OUT/r/check.out 2>&1
echo "check rc=$? $((SECONDS-T0)) s"; grep -v "NOT RUN" $OUT/r/check/summary.txt
for round in 1 2; do
  for v in base v3 v4 v4mma; do
    bin=$S/specd-${v%mma}; envs=()
    [[ $v == v4mma ]] && envs=(SPECD_DOT_MMA_FROM=3)
    env "${envs[@]}" timeout 90 $bin bench --device cuda --model $S/synth.gguf --prompt-tokens 128 --gen-tokens 64 \
      --verify-rows 1,2,3,4,5,8 --repeat 2 > $OUT/r/bench-$v-$round.json 2> $OUT/r/bench-$v-$round.err
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
SPECD=$S/specd-v4 timeout 120 scripts/gpu/profile-rows $S/synth.gguf $OUT/r/prof-v4 5 | grep -E "^\| (dot|mdot)|total"
SPECD=$S/specd-v4 SPECD_DOT_MMA_FROM=3 timeout 120 scripts/gpu/profile-rows $S/synth.gguf $OUT/r/prof-v4mma 5 | grep -E "^\| (dot|mdot)|total"
(cd $OUT && tar -cJf r.tar.xz r && rm -rf r)
echo "all done $((SECONDS-T0)) s"
