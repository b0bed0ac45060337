#!/usr/bin/env bash
# Session 29's call for the next hold (build the tree first: scripts/gpu/build): `v3` (this
# tree: rows loaded ahead only by the kernels of one and two rows a pass, the 4- and 8-row
# kernels walking row after row at their old register budget; sampled verification deciding in
# the forward with prompt chunks riding along) against 29ab53e (`base`) and `v1` (every kernel
# loading ahead, two rows at a time): the GPU suites on v3 first (scripts/gpu/check), then
# `specd bench` on the synthetic target (the real 1.5B's header, random weights: the real shapes
# and formats, no pieces to move), base / v1 / v3 / v3p4 twice (v3p4: v3 with the widest
# products' 5 to 8 rows through the lane-per-column kernels in passes of 4). Carry
# .gpu/specd.xz, .gpu/tests-gpu.tar.xz, .xfer/old/specd-29ab53e.xz, .xfer/old/specd-v1.xz and
# .xfer/target-header.gguf (the GLIDE file and ../out moved out of the checkout).
set -uo pipefail
T0=$SECONDS
S=~/stash; mkdir -p $OUT/r $S
xz -dc .gpu/specd.xz > $S/specd-v3 && chmod +x $S/specd-v3
# What scripts/gpu/e2e unpacks in a later call (../gpu-session-27/scripts/call3.sh).
cp .gpu/specd.xz $S/ && cp .gpu/tests-gpu.tar.xz $S/tests.tar.xz
xz -dc .xfer/old/specd-29ab53e.xz > $S/specd-base && chmod +x $S/specd-base
[[ -f .xfer/old/specd-v1.xz ]] && xz -dc .xfer/old/specd-v1.xz > $S/specd-v1 && chmod +x $S/specd-v1
python3 scripts/gpu/synth-gguf.py .xfer/target-header.gguf $S/synth.gguf | tail -1
nvidia-smi --query-gpu=name,clocks.sm,clocks.mem,driver_version --format=csv,noheader
echo "setup $((SECONDS-T0)) s"
timeout 200 scripts/gpu/check $OUT/r/check > $OUT/r/check.out 2>&1
echo "check rc=$? $((SECONDS-T0)) s"; cat $OUT/r/check/summary.txt
# v3p4: v3 with 5 to 8 rows of the widest products (gate and up, the head) through the
# lane-per-column kernels in passes of at most 4 rows (SPECD_DOTC_PASS_ROWS).
for round in 1 2; do
  for v in base v1 v3 v3p4; do
    bin=$S/specd-${v%p4}; envs=()
    [[ $v == v3p4 ]] && envs=(SPECD_DOTC_MAX_ROWS=8 SPECD_DOTC_PASS_ROWS=4)
    [[ -x $bin ]] || continue
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
(cd $OUT && tar -cJf r.tar.xz r && rm -rf r)
echo "all done $((SECONDS-T0)) s"
