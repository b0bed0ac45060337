#!/usr/bin/env bash
# Session 27, the real target (joined from 19 stashed pieces of 57 MiB, sha256 checked) and the
# committed GLIDE drafter: llama.cpp CUDA built in the background (scripts/gpu/llamacpp); specd
# `bench` decode and verification rows; `bench-spec` on the 20 code prompts (128 tokens, greedy)
# with this tree's binary and SPECD_GLIDE_CHAIN=1 (the device picks GLIDE's greedy drafts and
# chains a round), the same binary as it is by default (device picks), and the 0ff706c binary (session 26's kernels, the host
# picks); then `llama-bench` tg128 / pp512 on the same file.
set -uo pipefail
T0=$SECONDS
S=~/stash; mkdir -p $OUT/r $S/models
cp .xfer/llama-src.tar.xz $S/ && STASH=$S nice -n 10 scripts/gpu/llamacpp build
name=qwen2.5-coder-1.5b-instruct-q4_k_m.gguf
[[ -f $S/models/$name ]] || scripts/gpu/pieces join $S $name --out $S/models || { echo "join failed"; exit 1; }
T=$S/models/$name
nvidia-smi --query-gpu=name,clocks.sm,clocks.mem,driver_version --format=csv,noheader
echo "setup $((SECONDS-T0)) s"
timeout 120 $S/specd bench --device cuda --model $T --prompt-tokens 128 --gen-tokens 64 \
  --verify-rows 1,2,3,5 --batch 1 --repeat 2 > $OUT/r/bench.json 2> $OUT/r/bench.err
echo "bench rc=$? $((SECONDS-T0)) s"
python3 -c "import json,sys; d=json.load(open(sys.argv[1])); print('decode', json.dumps(d.get('decode'))[:200]); print('verify', json.dumps(d.get('verify'))[:300])" $OUT/r/bench.json || tail -3 $OUT/r/bench.err
glide=models/glide/glide-qwen2.5-coder-1.5b-instruct.safetensors
spec() {  # name binary methods [env...]
  local name=$1 bin=$2 methods=$3; shift 3
  env "$@" timeout 150 $bin bench-spec --device cuda --model $T --glide $glide \
    --methods $methods --max-tokens 128 > $OUT/r/spec-$name.out 2> $OUT/r/spec-$name.err
  echo "== $name rc=$? $((SECONDS-T0)) s"; grep -E "^\| " $OUT/r/spec-$name.out | grep -v "^|---" | cut -c1-160
}
M=none,ngram:6,glide:4,glide:adaptive:6,glide+ngram:adaptive:6
spec chain $S/specd $M SPECD_GLIDE_CHAIN=1
spec picks $S/specd none,glide:4,glide+ngram:adaptive:6
spec old $S/specd-old none,glide:4,glide+ngram:adaptive:6
spec chain2 $S/specd none,glide:4,glide+ngram:adaptive:6 SPECD_GLIDE_CHAIN=1
spec chainT $S/specd none,glide:4 SPECD_GPU_TIMING=1 SPECD_GLIDE_CHAIN=1
grep -h "glide:4" $OUT/r/spec-chainT.err | head -3
for i in $(seq 1 60); do grep -q '^exit ' $S/llama-build.log && break; sleep 5; done
tail -1 $S/llama-build.log
timeout 120 $S/llama-build/bin/llama-bench -m $T -ngl 99 -fa 1 -p 512 -n 128 -r 3 -o md > $OUT/r/llama-bench.md 2> $OUT/r/llama-bench.err
echo "llama-bench rc=$? $((SECONDS-T0)) s"; cat $OUT/r/llama-bench.md
(cd $OUT && tar -cJf r.tar.xz r && rm -rf r)
echo "all done $((SECONDS-T0)) s"
