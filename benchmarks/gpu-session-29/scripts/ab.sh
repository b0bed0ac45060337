#!/usr/bin/env bash
# Session 29, after the stash calls: the row products with their loads issued ahead (`v1`, this
# tree's kernels/cuda/qdot.cu) against 29ab53e's (`base`): the GPU suites on v1 first
# (scripts/gpu/check), then `specd bench` on the real target, base / v1 / base / v1, decode and
# verification rows 1, 2, 3, 5, 8. Stashes both binaries, the tests and llama.cpp's source for the
# calls after, and starts building llama.cpp there. Carry .gpu/specd.xz, .gpu/tests-gpu.tar.xz,
# .xfer/old/specd-29ab53e.xz, .xfer/llama-src.tar.xz.
set -uo pipefail
T0=$SECONDS
S=~/stash; mkdir -p $OUT/r $S/models
xz -dc .gpu/specd.xz > $S/specd-v1 && chmod +x $S/specd-v1
xz -dc .xfer/old/specd-29ab53e.xz > $S/specd-base && chmod +x $S/specd-base
cp .gpu/specd.xz $S/ && cp .gpu/tests-gpu.tar.xz $S/tests.tar.xz
cp .xfer/llama-src.tar.xz $S/ && STASH=$S nice -n 10 scripts/gpu/llamacpp build
name=qwen2.5-coder-1.5b-instruct-q4_k_m.gguf
[[ -f $S/models/$name ]] || scripts/gpu/pieces join $S $name --out $S/models || { echo "join failed"; exit 1; }
T=$S/models/$name
nvidia-smi --query-gpu=name,clocks.sm,clocks.mem,driver_version --format=csv,noheader
echo "setup $((SECONDS-T0)) s"
timeout 200 scripts/gpu/check $OUT/r/check > $OUT/r/check.out 2>&1
echo "check rc=$? $((SECONDS-T0)) s"; cat $OUT/r/check/summary.txt
for round in 1 2; do
  for v in base v1; do
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
