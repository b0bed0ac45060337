#!/usr/bin/env bash
# Session 32, a second hold: the head (Q6_K, 151,936 wide) at 5 and 6 verification rows through
# the lane-per-column kernel in passes of 4 rows (SPECD_DOTC_MAX_ROWS=8 SPECD_DOTC_PASS_ROWS=4;
# SPECD_DOTC_MIN_COLS=200000 keeps the Q4_K gate/up products out of it) against the default
# dp4a kernel of 8 rows a pass; Nsight Compute per kernel, and `specd bench` rows. Carry
# .gpu/specd.xz (0a5c6ff's CUDA build) and .xfer/target-header.gguf.
set -uo pipefail
source scripts/gpu/calls.sh
stash_specd new .gpu/specd.xz
synth_target
gpu_clocks
head_env=(SPECD_DOTC_MAX_ROWS=8 SPECD_DOTC_PASS_ROWS=4 SPECD_DOTC_MIN_COLS=200000)
for round in 1 2; do
  bench_rows "new-$round" new "$S/synth.gguf" 1,4,5,6,7,8
  bench_rows "head4-$round" new "$S/synth.gguf" 1,4,5,6,7,8 "${head_env[@]}"
  bench_rows "dotc4-$round" new "$S/synth.gguf" 1,4,5,6,7,8 SPECD_DOTC_MAX_ROWS=8 SPECD_DOTC_PASS_ROWS=4
done
env "${head_env[@]}" SPECD=$S/specd-new timeout 100 scripts/gpu/profile-rows "$S/synth.gguf" \
  "$OUT/r/prof-head4" 5 6 | grep -E "^rows|q6k|q4k|total"
SPECD=$S/specd-new timeout 100 scripts/gpu/profile-rows "$S/synth.gguf" "$OUT/r/prof-new" 6 \
  | grep -E "^rows|q6k|q4k|total"
pack_results
