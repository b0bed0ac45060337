#!/usr/bin/env bash
set -uo pipefail
T0=$SECONDS
mkdir -p $OUT/g ~/stash
xz -dc .gpu/specd.xz > ~/stash/specd && chmod +x ~/stash/specd
python3 scripts/gpu/synth-gguf.py .xfer/target-header.gguf ~/stash/synth.gguf | tail -1
suites=~/stash/suites; mkdir -p $suites; tar -xJf .gpu/tests-gpu.tar.xz -C $suites tests/gpu_kernels
echo "setup $((SECONDS-T0)) s"
run() {  # name [env...]
  local name=$1; shift
  env "$@" timeout 60 ~/stash/specd bench --device cuda --model ~/stash/synth.gguf \
    --prompt-tokens 128 --gen-tokens 32 --verify-rows 1,2,3,4,5,6,8 --batch 1 --repeat 2 > $OUT/g/bench-$name.json 2> $OUT/g/bench-$name.err
  python3 -c "import json,sys; d=json.load(open(sys.argv[1])); print(sys.argv[2], 'decode', d['decode'][0]['ms_per_step'], 'verify', [(v['rows'], v['ms']) for v in d['verify']])" $OUT/g/bench-$name.json $name || tail -3 $OUT/g/bench-$name.err
}
for i in 1 2; do
  run A$i X=1; run Y4$i SPECD_DOT_ROWS_PER_CTA=4; run Y4L$i SPECD_DOT_ROWS_PER_CTA=4 SPECD_DOTC_MAX_ROWS=8; run Y2$i SPECD_DOT_ROWS_PER_CTA=2
done
timeout 100 $suites/tests/gpu_kernels --test-threads 1 > $OUT/g/kernels.log 2>&1; echo "kernels rc=$? $(grep -E '^test result' $OUT/g/kernels.log | tail -1)"
(cd $OUT && tar -cJf g.tar.xz g && rm -rf g)
echo "all done $((SECONDS-T0)) s"
