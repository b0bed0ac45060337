#!/usr/bin/env bash
set -uo pipefail
T0=$SECONDS
mkdir -p $OUT/h
nvcc=$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)
$nvcc --version | tail -2
for v in main:kernels/cuda r8:try/pf_r8; do
  kd=~/k-${v%%:*}; mkdir -p $kd
  for cu in ${v#*:}/*.cu; do $nvcc --fatbin -O3 -std=c++17 -lineinfo -gencode=arch=compute_90,code=sm_90 -o $kd/$(basename $cu .cu).fatbin $cu & done
done; wait
echo "nvcc $((SECONDS-T0)) s"
run() {  # name [env...]
  local name=$1; shift
  env "$@" timeout 60 ~/stash/specd bench --device cuda --model ~/stash/synth.gguf \
    --prompt-tokens 128 --gen-tokens 32 --verify-rows 1,2,5,8 --batch 1 --repeat 2 > $OUT/h/bench-$name.json 2> $OUT/h/bench-$name.err
  python3 -c "import json,sys; d=json.load(open(sys.argv[1])); print(sys.argv[2], 'decode', d['decode'][0]['ms_per_step'], 'verify', [(v['rows'], v['ms']) for v in d['verify']])" $OUT/h/bench-$name.json $name || tail -3 $OUT/h/bench-$name.err
}
for i in 1 2; do
  run builtin$i X=1; run main-there$i SPECD_KERNELS_DIR=$HOME/k-main; run r8-there$i SPECD_KERNELS_DIR=$HOME/k-r8 SPECD_DOT_ROWS_PER_CTA=0
done
(cd $OUT && tar -cJf h.tar.xz h && rm -rf h)
echo "all done $((SECONDS-T0)) s"
