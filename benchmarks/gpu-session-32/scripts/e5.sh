#!/usr/bin/env bash
# For the next session (written in session 32, not run: no device time left): the head (Q6_K, 151,936 wide) at 5 and 6 rows through the dp4a
# kernel of 8 rows a pass with two columns a warp (dot_q6k_r8_s2_c2), which the defaults give
# only to narrow products: SPECD_DOTC_Q6K_MIN_COLS=10000000 makes the head "narrow" and
# SPECD_DOT_WARP_ROWS=8 keeps its rows in one CTA (the other narrow products then take 8 rows a
# CTA too: read the head's line). Nsight Compute per kernel. Carry .gpu/specd.xz (0a5c6ff's CUDA
# build) and .xfer/target-header.gguf.
set -uo pipefail
source scripts/gpu/calls.sh
stash_specd new .gpu/specd.xz
synth_target
pair_env=(SPECD_DOTC_Q6K_MIN_COLS=10000000 SPECD_DOT_WARP_ROWS=8)
env "${pair_env[@]}" SPECD=$S/specd-new timeout 100 scripts/gpu/profile-rows "$S/synth.gguf" \
  "$OUT/r/prof-pair" 5 6 | grep -E "^rows|q6k|total"
bench_rows "new" new "$S/synth.gguf" 1,5,6,7
bench_rows "pair" new "$S/synth.gguf" 1,5,6,7 "${pair_env[@]}"
pack_results
