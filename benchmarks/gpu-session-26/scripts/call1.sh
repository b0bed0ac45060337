#!/usr/bin/env bash
# Session 26, call 1: llama.cpp build in the background; the kernel suite on the binary's kernels
# (with the multi-row lane-per-column test) and on the prefetch variant; then bench, alternated:
# A builtin, B prefetch, C builtin with SPECD_DOTC_MAX_ROWS=8 SPECD_DOTC_Q6K_MIN_COLS=100000; then the engine suite on B + C.
set -uo pipefail
T0=$SECONDS
mkdir -p ~/stash $OUT/r
cp .xfer/llama-src.tar.xz ~/stash/ && STASH=~/stash nice -n 10 scripts/gpu/llamacpp build
xz -dc .gpu/specd.xz > ~/stash/specd && chmod +x ~/stash/specd
python3 scripts/gpu/synth-gguf.py .xfer/target-header.gguf ~/stash/synth.gguf | tail -1
nvidia-smi --query-gpu=name,clocks.sm,clocks.mem,driver_version --format=csv,noheader
kd=~/stash/k-prefetch; mkdir -p $kd
nvcc=$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)
for cu in try/prefetch/*.cu; do $nvcc --fatbin -O3 -std=c++17 -lineinfo -gencode=arch=compute_90,code=sm_90 -o $kd/$(basename $cu .cu).fatbin $cu & done; wait
suites=~/stash/suites; mkdir -p $suites; tar -xJf .gpu/tests-gpu.tar.xz -C $suites
echo "setup $((SECONDS-T0)) s"
suite() {  # name test kernels-dir [env...]
  local name=$1 t=$2 dir=$3; shift 3; local t1=$SECONDS
  env SPECD_KERNELS_DIR=$dir SPECD_BIN=$HOME/stash/specd "$@" timeout 200 $suites/tests/$t --test-threads 1 > $OUT/r/$name.log 2>&1
  echo "$name: rc=$? $((SECONDS-t1))s $(grep -E '^test result' $OUT/r/$name.log | tail -1)"
}
suite kernels-builtin gpu_kernels /nonexistent
C="SPECD_DOTC_MAX_ROWS=8 SPECD_DOTC_Q6K_MIN_COLS=100000"
run A1 /nonexistent; run B1 $kd; run C1 /nonexistent $C
[[ $((SECONDS-T0)) -lt 330 ]] && suite kernels-prefetch gpu_kernels $kd
[[ $((SECONDS-T0)) -lt 430 ]] && { run A2 /nonexistent; run B2 $kd; run C2 /nonexistent $C; }
echo "bench done $((SECONDS-T0)) s"
[[ $((SECONDS-T0)) -lt 470 ]] && suite engine-BC gpu_engine $kd SPECD_DOTC_MAX_ROWS=8 SPECD_DOTC_Q6K_MIN_COLS=100000
tail -2 ~/stash/llama-build.log
(cd $OUT && tar -cJf r.tar.xz r && rm -rf r)
echo "all done $((SECONDS-T0)) s"
