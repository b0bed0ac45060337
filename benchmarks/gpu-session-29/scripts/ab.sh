#!/usr/bin/env bash
# Session 29, after the stash calls: the row products with their loads issued ahead (`v1`, this
# tree's kernels/cuda/qdot.cu: rows loaded two at a time, at most 80 registers; `v2`: four at a
# time, registers unbounded) against 29ab53e's (`base`): the GPU suites on v1 first
# (scripts/gpu/check), then `specd bench` on the real target, base / v1 / v2, twice, decode and
# verification rows 1, 2, 3, 5, 8. Stashes v1 and the tests for the calls after, and starts
# building llama.cpp there. Carry .gpu/specd.xz and .gpu/tests-gpu.tar.xz; the last stash call
# left base and v2 (~/stash/specd-base, specd-v2) and llama.cpp's source in the stash (the
# three with the tests and the checkout are more than a call carries).
set -uo pipefail
T0=$SECONDS
S=~/stash; mkdir -p $OUT/r $S/models
xz -dc .gpu/specd.xz > $S/specd-v1 && chmod +x $S/specd-v1
cp .gpu/specd.xz $S/ && cp .gpu/tests-gpu.tar.xz $S/tests.tar.xz
STASH=$S nice -n 10 scripts/gpu/llamacpp build
name=qwen2.5-coder-1.5b-instruct-q4_k_m.gguf
[[ -f $S/models/$name ]] || scripts/gpu/pieces join $S $name --out $S/models || { echo "join failed"; exit 1; }
T=$S/models/$name
nvidia-smi --query-gpu=name,clocks.sm,clocks.mem,driver_version --format=csv,noheader
echo "setup $((SECONDS-T0)) s"
timeout 200 scripts/gpu/check $OUT/r/check > $OUT/r/check.out 2>&1
echo "check rc=$? $((SECONDS-T0)) s"; cat $OUT/r/check/summary.txt
for round in 1 2; do
  for v in base v1 v2; do
    timeout 90 $S/specd-$v bench --device cuda --model $T --prompt-tokens 128 --gen-tokens 64 \
      --verify-rows 1,2,3,5,8 --repeat 2 > $OUT/r/bench-$v-$round.json 2> $OUT/r/bench-$v-$round.err
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
