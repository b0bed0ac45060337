#!/usr/bin/env bash
# For the next session's first hold (not run in session 31): this tree (`new`: a narrow
# product's 5-7 verification rows in CTAs of 4 rows with two columns a warp, the defaults since
# 20e75a7) through the GPU suites (the engine and GLIDE suites have not run with these
# defaults), then against `old` (57d6ea6) on the synthetic target, twice, interleaved; llama.cpp's
# build starts in the background at the end. Carry .gpu/specd.xz, .gpu/tests-gpu.tar.xz,
# .xfer/old/specd-57d6ea6.xz, .xfer/target-header.gguf and .xfer/llama-src.tar.xz (the GLIDE file
# and every session's out/ out of the checkout). Then the 19 stash calls and d2.sh.
set -uo pipefail
T0=$SECONDS
S=~/stash; mkdir -p $OUT/r $S
xz -dc .gpu/specd.xz > $S/specd-new && chmod +x $S/specd-new && cp $S/specd-new $S/specd
cp .gpu/specd.xz $S/ && cp .gpu/tests-gpu.tar.xz $S/tests.tar.xz
xz -dc .xfer/old/specd-57d6ea6.xz > $S/specd-old && chmod +x $S/specd-old
python3 scripts/gpu/synth-gguf.py .xfer/target-header.gguf $S/synth.gguf | tail -1
nvidia-smi --query-gpu=name,clocks.sm,clocks.mem,driver_version --format=csv,noheader
timeout 200 scripts/gpu/check $OUT/r/check > $OUT/r/check.out 2>&1
echo "check rc=$? $((SECONDS-T0)) s"; grep -v "NOT RUN" $OUT/r/check/summary.txt
for round in 1 2; do
  for v in old new; do
    timeout 90 $S/specd-$v bench --device cuda --model $S/synth.gguf --prompt-tokens 128 --gen-tokens 64 \
      --verify-rows 1,2,3,4,5,6,7,8 --repeat 2 > $OUT/r/bench-$v-$round.json 2> $OUT/r/bench-$v-$round.err
    echo "$v $round rc=$? $((SECONDS-T0)) s"
    python3 - $OUT/r/bench-$v-$round.json <<'PY'
import json, sys
r = next(json.loads(l) for l in open(sys.argv[1]) if l.startswith("{"))
d = next(x for x in r["decode"] if x["graphs"])
print(f"  decode {d['ms_per_step']} ms;", " ".join(f"{v['rows']}:{v['ms']}" for v in r["verify"]))
PY
  done
done
cp .xfer/llama-src.tar.xz $S/ && STASH=$S nice -n 10 scripts/gpu/llamacpp build
(cd $OUT && tar -cJf r.tar.xz r && rm -rf r)
echo "all done $((SECONDS-T0)) s"
