#!/usr/bin/env bash
# Session 30, call C (a fresh machine): why a target-only step is ~40 µs shorter with
# SPECD_GPU_TIMING=1 (bench-spec none on the real target: 743 against 703 tok/s, twice each).
# `v6` (this tree: SPECD_STEP_MARK=start|end|both records the timing events around each step's
# launches without reading them; SPECD_PINNED_READ=1 reads results back through page-locked
# memory instead of straight into pageable memory) through `bench-spec --methods none` on the synthetic target
# (the real 1.5B's header, random weights), each variant twice, interleaved. Carry
# .xfer/exp/specd-v6.xz and .xfer/target-header.gguf.
set -uo pipefail
T0=$SECONDS
S=~/stash; mkdir -p $OUT/r $S
xz -dc .xfer/exp/specd-v6.xz > $S/specd-v6 && chmod +x $S/specd-v6
python3 scripts/gpu/synth-gguf.py .xfer/target-header.gguf $S/synth.gguf | tail -1
nvidia-smi --query-gpu=name,clocks.sm,clocks.mem,driver_version --format=csv,noheader
run() {  # name env...
  local name=$1; shift
  env "$@" timeout 60 $S/specd-v6 bench-spec --device cuda --model $S/synth.gguf --methods none --limit 10 \
    --max-tokens 128 > $OUT/r/$name.out 2>&1
  printf "%-14s rc=%s %s\n" "$name" "$?" "$(grep '^| none' $OUT/r/$name.out | cut -c1-40)"
}
for i in 1 2; do
  run plain-$i
  run timing-$i SPECD_GPU_TIMING=1
  run start-$i SPECD_STEP_MARK=start
  run end-$i SPECD_STEP_MARK=end
  run both-$i SPECD_STEP_MARK=both
  run pinned-$i SPECD_PINNED_READ=1
  run pinned-start-$i SPECD_PINNED_READ=1 SPECD_STEP_MARK=start
  run nopdl-$i SPECD_PDL=0
  run nopdl-timing-$i SPECD_PDL=0 SPECD_GPU_TIMING=1
done
grep -h "prompt  3" $OUT/r/*-1.out | cut -c1-220
(cd $OUT && tar -cJf r.tar.xz r && rm -rf r)
echo "all done $((SECONDS-T0)) s"
