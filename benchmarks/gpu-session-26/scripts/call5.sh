#!/usr/bin/env bash
set -uo pipefail
T0=$SECONDS
mkdir -p $OUT/e
nvcc=$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)
for v in pf_attn pf_mr; do
  kd=~/stash/k-$v; mkdir -p $kd
  for cu in try/$v/*.cu; do $nvcc --fatbin -O3 -std=c++17 -lineinfo -gencode=arch=compute_90,code=sm_90 -o $kd/$(basename $cu .cu).fatbin $cu & done
done; wait
echo "nvcc $((SECONDS-T0)) s"
export SPECD_DOTC_MAX_ROWS=4 SPECD_DOTC_Q6K_MIN_COLS=65536
run() {  # name dir
  SPECD_KERNELS_DIR=$2 timeout 90 ~/stash/specd bench --device cuda --model ~/stash/synth.gguf \
    --prompt-tokens 128 --gen-tokens 64 --verify-rows 1,2,4,5,8 --batch 1 --repeat 2 > $OUT/e/bench-$1.json 2> $OUT/e/bench-$1.err
  python3 -c "import json,sys; d=json.load(open(sys.argv[1])); print(sys.argv[2], 'decode', d['decode'][0]['ms_per_step'], 'verify', [(v['rows'], v['ms']) for v in d['verify']])" $OUT/e/bench-$1.json $1 || tail -3 $OUT/e/bench-$1.err
}
for i in 1 2; do
  run C4-$i /nonexistent; run pf_attn-$i ~/stash/k-pf_attn; run pf_mr-$i ~/stash/k-pf_mr
done
suites=~/stash/suites; SPECD_KERNELS_DIR=~/stash/k-pf_mr timeout 120 $suites/tests/gpu_kernels --test-threads 1 > $OUT/e/kernels-pf_mr.log 2>&1; echo "kernels pf_mr rc=$? $(grep -E "^test result" $OUT/e/kernels-pf_mr.log | tail -1)"
(cd $OUT && tar -cJf e.tar.xz e && rm -rf e)
echo "all done $((SECONDS-T0)) s"
