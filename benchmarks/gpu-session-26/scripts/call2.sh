#!/usr/bin/env bash
set -uo pipefail
T0=$SECONDS
mkdir -p $OUT/b
run() {  # name [env...]
  local name=$1; shift
  env "$@" timeout 90 ~/stash/specd bench --device cuda --model ~/stash/synth.gguf \
    --prompt-tokens 128 --gen-tokens 64 --verify-rows 1,2,3,4,5,8 --batch 1 --repeat 2 > $OUT/b/bench-$name.json 2> $OUT/b/bench-$name.err
  python3 -c "import json,sys; d=json.load(open(sys.argv[1])); print(sys.argv[2], 'decode', d['decode'][0]['ms_per_step'], 'verify', [(v['rows'], v['ms']) for v in d['verify']])" $OUT/b/bench-$name.json $name || tail -3 $OUT/b/bench-$name.err
}
for i in 1 2; do
  run A$i X=1; run C4$i SPECD_DOTC_MAX_ROWS=4 SPECD_DOTC_Q6K_MIN_COLS=100000
  run D$i SPECD_DOTC_MAX_ROWS=8; run E$i SPECD_DOTC_Q6K_MIN_COLS=100000
done
for i in 1 2 3 4 5 6 7 8; do grep -q '^exit' ~/stash/llama-build.log && break; sleep 15; done
tail -1 ~/stash/llama-build.log
[[ -x ~/stash/llama-build/bin/llama-bench ]] && timeout 120 ~/stash/llama-build/bin/llama-bench -m ~/stash/synth.gguf -ngl 99 -fa 1 -p 512 -n 128 -r 3 2>&1 | tee $OUT/b/llama-bench-fa1.txt | grep -E 'pp|tg|rror'
run A3 X=1; run C43 SPECD_DOTC_MAX_ROWS=4 SPECD_DOTC_Q6K_MIN_COLS=100000
ncu=$(command -v ncu || ls /usr/local/cuda/bin/ncu /opt/nvidia/nsight-compute/*/ncu 2> /dev/null | head -1)
for v in A C; do
  [[ $((SECONDS-T0)) -gt 420 ]] && break
  extra=X=1; [[ $v == C ]] && extra="SPECD_DOTC_MAX_ROWS=8 SPECD_DOTC_Q6K_MIN_COLS=100000"
  env $extra SPECD_CUDA_GRAPHS=0 timeout 100 $ncu --clock-control none --cache-control none --csv --metrics gpu__time_duration.sum \
    ~/stash/specd bench --device cuda --model ~/stash/synth.gguf --prompt-tokens 16 --gen-tokens 4 --verify-rows 5 --repeat 1 > $OUT/b/ncu-$v.csv 2> $OUT/b/ncu-$v.err
  echo "ncu $v rc=$?"; python3 try/ncu_sum.py $OUT/b/ncu-$v.csv > $OUT/b/ncu-$v.txt 2>&1; head -22 $OUT/b/ncu-$v.txt
done
(cd $OUT && tar -cJf b.tar.xz b && rm -rf b)
echo "all done $((SECONDS-T0)) s"
