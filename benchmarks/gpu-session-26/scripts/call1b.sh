#!/usr/bin/env bash
set -uo pipefail
T0=$SECONDS
mkdir -p $OUT/r
kd=~/stash/k-prefetch
run() {  # name dir [env...]
  local name=$1 dir=$2; shift 2
  env SPECD_KERNELS_DIR=$dir "$@" timeout 90 ~/stash/specd bench --device cuda --model ~/stash/synth.gguf \
    --prompt-tokens 128 --gen-tokens 64 --verify-rows 1,2,3,5,8 --batch 1 --repeat 2 > $OUT/r/bench-$name.json 2> $OUT/r/bench-$name.err
  python3 -c "import json,sys; d=json.load(open(sys.argv[1])); print(sys.argv[2], 'decode', json.dumps(d.get('decode'))[:160]); print('   verify', json.dumps(d.get('verify'))[:400])" $OUT/r/bench-$name.json $name || tail -3 $OUT/r/bench-$name.err
}
C="SPECD_DOTC_MAX_ROWS=8 SPECD_DOTC_Q6K_MIN_COLS=100000"
for i in 1 2; do run A$i /nonexistent; run B$i $kd; run C$i /nonexistent $C; done
echo "bench done $((SECONDS-T0)) s"
grep -E '^test |running' ~/stash/suites/../suites/tests/gpu_engine >/dev/null 2>&1
tail -1 ~/stash/llama-build.log
(cd $OUT && tar -cJf r.tar.xz r && rm -rf r)
echo "all done $((SECONDS-T0)) s"
