#!/usr/bin/env bash
# Session 32, first call: session 31's d1.sh (this tree, `new`, through the GPU suites under its
# defaults, then against `old` = 57d6ea6 on the synthetic target), and the lane-per-column
# kernels for 5 and 6 verification rows: kernel files built here from qdot.cu with the 8-row
# slot (dotc_{q4k,q6k}_r8) compiled as RG = 5 or 6 rows a pass and MINB = 1 or 2 CTAs an SM
# (.xfer/var/rR_bB/qdot.fatbin, loaded through SPECD_KERNELS_DIR), sent 5 and 6 rows of the
# gate/up products and the head by SPECD_DOTC_MAX_ROWS=6 (their kernel suite first, bit for bit
# against every other kernel). Carry .gpu/specd.xz .gpu/tests-gpu.tar.xz
# .xfer/old/specd-57d6ea6.xz .xfer/target-header.gguf .xfer/llama-src.tar.xz .xfer/var.
set -uo pipefail
source scripts/gpu/calls.sh
stash_specd new .gpu/specd.xz && cp "$S/specd-new" "$S/specd"
cp .gpu/specd.xz "$S/" && cp .gpu/tests-gpu.tar.xz "$S/tests.tar.xz"
stash_specd old .xfer/old/specd-57d6ea6.xz
cp -r .xfer/var "$S/kv"
synth_target
gpu_clocks
check_suites
work=$(mktemp -d) && tar -xJf .gpu/tests-gpu.tar.xz -C "$work"
for v in r5_b1 r6_b1; do
  SPECD_KERNELS_DIR=$S/kv/$v timeout 150 "$work/tests/gpu_kernels" --test-threads 1 \
    > "$OUT/r/kernels-$v.log" 2>&1
  echo "kernels $v rc=$? $(grep -E '^test result' "$OUT/r/kernels-$v.log" | tail -1) $((SECONDS - T0)) s"
done
for round in 1 2; do
  for v in old new; do
    bench_rows "$v-$round" "$v" "$S/synth.gguf" 1,2,3,4,5,6,7,8
  done
  for v in r5_b1 r5_b2 r6_b1; do
    bench_rows "$v-$round" new "$S/synth.gguf" 4,5,6 SPECD_KERNELS_DIR=$S/kv/$v SPECD_DOTC_MAX_ROWS=6
  done
  bench_rows "r5_b1-q4k-$round" new "$S/synth.gguf" 5,6 SPECD_KERNELS_DIR=$S/kv/r5_b1 \
    SPECD_DOTC_MAX_ROWS=6 SPECD_DOTC_Q6K_MIN_COLS=10000000
done
cp .xfer/llama-src.tar.xz "$S/" && STASH=$S nice -n 10 scripts/gpu/llamacpp build
if (( SECONDS - T0 < 400 )); then
  SPECD=$S/specd-new timeout 60 scripts/gpu/profile-rows "$S/synth.gguf" "$OUT/r/prof-new" 5 | tail -25
  SPECD=$S/specd-new SPECD_KERNELS_DIR=$S/kv/r5_b1 SPECD_DOTC_MAX_ROWS=6 timeout 60 \
    scripts/gpu/profile-rows "$S/synth.gguf" "$OUT/r/prof-r5_b1" 5 | tail -25
fi
pack_results
