#!/usr/bin/env bash
set -uo pipefail
T0=$SECONDS
mkdir -p $OUT/c ~/stash
[[ -x ~/stash/specd ]] || { xz -dc .gpu/specd.xz > ~/stash/specd && chmod +x ~/stash/specd; }
[[ -f ~/stash/synth.gguf ]] || python3 scripts/gpu/synth-gguf.py .xfer/target-header.gguf ~/stash/synth.gguf | tail -1
kd=~/stash/k-r4x2; mkdir -p $kd
nvcc=$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)
for cu in try/r4x2/*.cu; do $nvcc --fatbin -O3 -std=c++17 -lineinfo -gencode=arch=compute_90,code=sm_90 -o $kd/$(basename $cu .cu).fatbin $cu & done; wait
run() {  # name [env...]
  local name=$1; shift
  env "$@" timeout 90 ~/stash/specd bench --device cuda --model ~/stash/synth.gguf \
    --prompt-tokens 128 --gen-tokens 64 --verify-rows 1,2,3,4,5,6,8 --batch 1 --repeat 2 > $OUT/c/bench-$name.json 2> $OUT/c/bench-$name.err
  python3 -c "import json,sys; d=json.load(open(sys.argv[1])); print(sys.argv[2], 'decode', d['decode'][0]['ms_per_step'], 'verify', [(v['rows'], v['ms']) for v in d['verify']])" $OUT/c/bench-$name.json $name || tail -3 $OUT/c/bench-$name.err
}
for i in 1 2; do
  run A$i X=1; run C4$i SPECD_DOTC_MAX_ROWS=4 SPECD_DOTC_Q6K_MIN_COLS=100000
  run R$i SPECD_KERNELS_DIR=$kd SPECD_DOTC_MAX_ROWS=8 SPECD_DOTC_Q6K_MIN_COLS=100000
done
suites=~/stash/suites; [[ -x $suites/tests/gpu_kernels ]] || { mkdir -p $suites; tar -xJf .gpu/tests-gpu.tar.xz -C $suites; }
if [[ -x $suites/tests/gpu_kernels ]]; then
  SPECD_KERNELS_DIR=$kd timeout 120 $suites/tests/gpu_kernels --test-threads 1 > $OUT/c/kernels-r4x2.log 2>&1
  echo "kernels r4x2 rc=$? $(grep -E '^test result' $OUT/c/kernels-r4x2.log | tail -1)"
fi
(cd $OUT && tar -cJf c.tar.xz c && rm -rf c)
echo "all done $((SECONDS-T0)) s"
