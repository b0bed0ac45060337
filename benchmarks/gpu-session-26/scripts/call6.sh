#!/usr/bin/env bash
set -uo pipefail
T0=$SECONDS
mkdir -p $OUT/f
nvcc=$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)
kd=~/stash/k-pf_r8; mkdir -p $kd
for cu in try/pf_r8/*.cu; do $nvcc --fatbin -O3 -std=c++17 -lineinfo -gencode=arch=compute_90,code=sm_90 -o $kd/$(basename $cu .cu).fatbin $cu & done; wait
export SPECD_DOTC_MAX_ROWS=4 SPECD_DOTC_Q6K_MIN_COLS=65536
run() {  # name dir
  SPECD_KERNELS_DIR=$2 timeout 90 ~/stash/specd bench --device cuda --model ~/stash/synth.gguf \
    --prompt-tokens 128 --gen-tokens 64 --verify-rows 1,2,3,4,5,8 --batch 1,4,64 --repeat 2 > $OUT/f/bench-$1.json 2> $OUT/f/bench-$1.err
  python3 -c "import json,sys; d=json.load(open(sys.argv[1])); print(sys.argv[2], 'pp', d.get('pp_tokens_per_s'), 'decode', d['decode'][0]['ms_per_step'], 'verify', [(v['rows'], v['ms']) for v in d['verify']], [(b['batch'], b['tokens_per_s']) for b in d['batch']])" $OUT/f/bench-$1.json $1 || tail -3 $OUT/f/bench-$1.err
}
for i in 1 2; do run C4-$i /nonexistent; run pf_attn-$i ~/stash/k-pf_attn; run pf_r8-$i $kd; done
suites=~/stash/suites
SPECD_KERNELS_DIR=$kd timeout 120 $suites/tests/gpu_kernels --test-threads 1 > $OUT/f/kernels.log 2>&1; echo "kernels pf_r8 rc=$? $(grep -E '^test result' $OUT/f/kernels.log | tail -1)"
for t in gpu_engine gpu_glide; do
  SPECD_KERNELS_DIR=$kd SPECD_BIN=$HOME/stash/specd timeout 100 $suites/tests/$t --test-threads 1 > $OUT/f/$t.log 2>&1
  echo "$t pf_r8 rc=$? $(grep -E '^test result' $OUT/f/$t.log | tail -1)"
done
(cd $OUT && tar -cJf f.tar.xz f && rm -rf f)
echo "all done $((SECONDS-T0)) s"
