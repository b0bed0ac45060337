#!/usr/bin/env bash
# Session 31, hold 1, call 1 (a fresh machine): main (57d6ea6: timing events on by default, a
# chained GLIDE round's span, gpu_kernels' dp4a handle, the aligned-word loader shared) through
# the GPU suites; `specd bench` and `bench-spec --methods none` on the synthetic target (the real
# 1.5B's header, random weights) as built and with SPECD_GPU_TIMING=0, interleaved, twice; then
# Nsight Compute's stall and occupancy sections over the products of one 1-row and one 5-row
# forward (which limits each kernel: the next kernel work reads this). Carry .gpu/specd.xz,
# .gpu/tests-gpu.tar.xz and .xfer/target-header.gguf (the GLIDE file out of the checkout).
set -uo pipefail
T0=$SECONDS
S=~/stash; mkdir -p $OUT/r $S
xz -dc .gpu/specd.xz > $S/specd && chmod +x $S/specd
cp .gpu/specd.xz $S/ && cp .gpu/tests-gpu.tar.xz $S/tests.tar.xz
python3 scripts/gpu/synth-gguf.py .xfer/target-header.gguf $S/synth.gguf | tail -1
nvidia-smi --query-gpu=name,clocks.sm,clocks.mem,driver_version --format=csv,noheader
echo "setup $((SECONDS-T0)) s"
timeout 200 scripts/gpu/check $OUT/r/check > $OUT/r/check.out 2>&1
echo "check rc=$? $((SECONDS-T0)) s"; grep -v "NOT RUN" $OUT/r/check/summary.txt
for round in 1 2; do
  for v in default off; do
    envs=(); [[ $v == off ]] && envs=(SPECD_GPU_TIMING=0)
    env "${envs[@]}" timeout 60 $S/specd bench-spec --device cuda --model $S/synth.gguf --methods none --limit 10 \
      --max-tokens 128 > $OUT/r/none-$v-$round.out 2>&1
    printf "none %-8s %s rc=%s %s\n" "$v" "$round" "$?" "$(grep '^| none' $OUT/r/none-$v-$round.out | cut -c1-40)"
    env "${envs[@]}" timeout 90 $S/specd bench --device cuda --model $S/synth.gguf --prompt-tokens 128 --gen-tokens 64 \
      --verify-rows 1,2,3,4,5,6,8 --repeat 2 > $OUT/r/bench-$v-$round.json 2> $OUT/r/bench-$v-$round.err
    echo "bench $v $round rc=$? $((SECONDS-T0)) s"
    python3 - $OUT/r/bench-$v-$round.json <<'PY'
import json, sys
r = next(json.loads(l) for l in open(sys.argv[1]) if l.startswith("{"))
d = next(x for x in r["decode"] if x["graphs"])
print(f"  decode {d['ms_per_step']} ms, pp {r['pp_tokens_per_s']} tok/s;",
      " ".join(f"{v['rows']}:{v['ms']}" for v in r["verify"]))
PY
  done
done
source scripts/gpu/common.sh
ncu=$(find_ncu); "$ncu" --version | tail -1
for rows in 1 5; do
  SPECD_CUDA_GRAPHS=0 SPECD_PROFILE_ROWS=$rows timeout 150 "$ncu" --profile-from-start off \
    --clock-control none --cache-control none --kernel-name regex:dot --launch-count 16 \
    --section SpeedOfLight --section Occupancy --section LaunchStats --section WarpStateStats \
    --section SchedulerStats --section MemoryWorkloadAnalysis \
    $S/specd bench --device cuda --model $S/synth.gguf --prompt-tokens 128 --gen-tokens 10 \
    --verify-rows "1,$rows" --repeat 1 > $OUT/r/ncu-sections-$rows.txt 2> $OUT/r/ncu-sections-$rows.err
  echo "ncu rows $rows rc=$? $((SECONDS-T0)) s ($(grep -c 'dot' $OUT/r/ncu-sections-$rows.txt) lines naming a product)"
done
(cd $OUT && tar -cJf r.tar.xz r && rm -rf r)
echo "all done $((SECONDS-T0)) s"
