#!/usr/bin/env bash
# For the next session's first hold (not run in session 31): this tree (`new`: a narrow
# product's 5-7 verification rows in CTAs of 4 rows with two columns a warp, the defaults since
# 20e75a7) through the GPU suites (the engine and GLIDE suites have not run with these
# defaults), then against `old` (57d6ea6) on the synthetic target, twice, interleaved; llama.cpp's
# build starts in the background at the end. Carry .gpu/specd.xz, .gpu/tests-gpu.tar.xz,
# .xfer/old/specd-57d6ea6.xz, .xfer/target-header.gguf and .xfer/llama-src.tar.xz (the GLIDE file
# and every session's out/ out of the checkout). Then the 19 stash calls and d2.sh.
set -uo pipefail
source scripts/gpu/calls.sh
stash_specd new .gpu/specd.xz && cp "$S/specd-new" "$S/specd"
cp .gpu/specd.xz "$S/" && cp .gpu/tests-gpu.tar.xz "$S/tests.tar.xz"
stash_specd old .xfer/old/specd-57d6ea6.xz
synth_target
gpu_clocks
check_suites
for round in 1 2; do
  for v in old new; do
    bench_rows "$v-$round" "$v" "$S/synth.gguf" 1,2,3,4,5,6,7,8
  done
done
cp .xfer/llama-src.tar.xz "$S/" && STASH=$S nice -n 10 scripts/gpu/llamacpp build
pack_results
