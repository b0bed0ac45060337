#!/usr/bin/env bash
# Session 28, after train.sh in the same hold (the target joined in ~/stash/models, run 7's bf16
# file in ~/stash): the real pair through bench-spec (20 code prompts, 128 tokens, greedy):
# this tree's binary with GLIDE's round chained (SPECD_GLIDE_CHAIN=1) and as it is by default,
# the 0ff706c binary (the host picks every draft), run 7's drafter; llama.cpp CUDA built in the
# background and llama-bench on the same file. Carry .xfer/llama-src.tar.xz.
set -uo pipefail
T0=$SECONDS
S=~/stash; mkdir -p $OUT/r $S/models
cp .xfer/llama-src.tar.xz $S/ && STASH=$S nice -n 10 scripts/gpu/llamacpp build
name=qwen2.5-coder-1.5b-instruct-q4_k_m.gguf
[[ -f $S/models/$name ]] || scripts/gpu/pieces join $S $name --out $S/models || { echo "join failed"; exit 1; }
T=$S/models/$name
nvidia-smi --query-gpu=name,clocks.sm,clocks.mem,driver_version --format=csv,noheader
spec() {  # name binary glide methods [env...]
  local name=$1 bin=$2 glide=$3 methods=$4; shift 4
  env "$@" timeout 150 $bin bench-spec --device cuda --model $T --glide $glide \
    --methods $methods --max-tokens 128 > $OUT/r/spec-$name.out 2> $OUT/r/spec-$name.err
  echo "== $name rc=$? $((SECONDS-T0)) s"; grep -E "^\| " $OUT/r/spec-$name.out | grep -v "^|---" | cut -c1-160
}
run6=models/glide/glide-qwen2.5-coder-1.5b-instruct.safetensors
run7=$S/glide-qwen2.5-coder-1.5b-instruct.safetensors
M=none,glide:4,glide+ngram:adaptive:6
spec chain $S/specd $run6 $M SPECD_GLIDE_CHAIN=1
spec picks $S/specd $run6 $M
spec old $S/specd-old $run6 $M
[[ -f $run7 ]] && spec run7 $S/specd $run7 $M SPECD_GLIDE_CHAIN=1

for i in $(seq 1 60); do grep -q '^exit ' $S/llama-build.log && break; sleep 5; done
tail -1 $S/llama-build.log
timeout 100 $S/llama-build/bin/llama-bench -m $T -ngl 99 -fa 1 -p 512 -n 128 -r 3 -o md > $OUT/r/llama-bench.md 2> $OUT/r/llama-bench.err
echo "llama-bench rc=$? $((SECONDS-T0)) s"; cat $OUT/r/llama-bench.md
(cd $OUT && tar -cJf r.tar.xz r && rm -rf r)
echo "all done $((SECONDS-T0)) s"
