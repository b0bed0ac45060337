#!/usr/bin/env bash
set -uo pipefail
T0=$SECONDS
mkdir -p $OUT/d
suites=~/stash/suites; [[ -x $suites/tests/gpu_kernels ]] || { mkdir -p $suites; tar -xJf .gpu/tests-gpu.tar.xz -C $suites; }
for t in gpu_engine gpu_glide; do
  env SPECD_DOTC_MAX_ROWS=4 SPECD_DOTC_Q6K_MIN_COLS=65536 SPECD_BIN=$HOME/stash/specd timeout 150 $suites/tests/$t --test-threads 1 > $OUT/d/$t.log 2>&1
  echo "$t (C4) rc=$? $(grep -E '^test result' $OUT/d/$t.log | tail -1)"
done
run() {  # name [env...]
  local name=$1; shift
  env "$@" timeout 90 ~/stash/specd bench --device cuda --model ~/stash/synth.gguf \
    --prompt-tokens 128 --gen-tokens 32 --verify-rows 1 --batch 2,4,16,64 --repeat 2 > $OUT/d/bench-$name.json 2> $OUT/d/bench-$name.err
  python3 -c "import json,sys; d=json.load(open(sys.argv[1])); print(sys.argv[2], 'decode', d['decode'][0]['ms_per_step'], 'batch', json.dumps(d.get('batch'))[:500])" $OUT/d/bench-$name.json $name || tail -3 $OUT/d/bench-$name.err
}
run A X=1; run C4 SPECD_DOTC_MAX_ROWS=4 SPECD_DOTC_Q6K_MIN_COLS=65536; run A2 X=1; run C42 SPECD_DOTC_MAX_ROWS=4 SPECD_DOTC_Q6K_MIN_COLS=65536
(cd $OUT && tar -cJf d.tar.xz d && rm -rf d)
echo "all done $((SECONDS-T0)) s"
