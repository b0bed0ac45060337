#!/usr/bin/env bash
# Session 29 (planned): the real pair's draft lengths and stops on the GPU now that verification
# rows cost 17-19 % of a step (session 28), and what the default server runs (glide+ngram, k = 4,
# the 40 % stop its calibration derives). After the stash calls of the target
# (scripts/gpu/pieces stash, one piece a call, the GLIDE file moved out of the checkout while they
# travel); carry .gpu/specd.xz, .gpu/tests-gpu.tar.xz and .xfer/llama-src.tar.xz.
set -uo pipefail
T0=$SECONDS
S=~/stash; mkdir -p $OUT/r $S/models
# The binary: $S/specd where a call before left one (ab.sh: the one that won), else the carried one.
if [[ ! -x $S/specd ]]; then
  xz -dc .gpu/specd.xz > $S/specd && chmod +x $S/specd
  # What scripts/gpu/e2e unpacks in the next call (../gpu-session-27/scripts/call3.sh).
  cp .gpu/specd.xz $S/ && cp .gpu/tests-gpu.tar.xz $S/tests.tar.xz
fi
if [[ ! -f $S/llama-build.log ]]; then
  cp .xfer/llama-src.tar.xz $S/ && STASH=$S nice -n 10 scripts/gpu/llamacpp build
fi
name=qwen2.5-coder-1.5b-instruct-q4_k_m.gguf
[[ -f $S/models/$name ]] || scripts/gpu/pieces join $S $name --out $S/models || { echo "join failed"; exit 1; }
T=$S/models/$name
glide=models/glide/glide-qwen2.5-coder-1.5b-instruct.safetensors
nvidia-smi --query-gpu=name,clocks.sm,clocks.mem,driver_version --format=csv,noheader
spec() {  # name methods [env...]
  local name=$1 methods=$2; shift 2
  env "$@" timeout 150 $S/specd bench-spec --device cuda --model $T --glide $glide \
    --methods $methods --max-tokens 128 > $OUT/r/spec-$name.out 2> $OUT/r/spec-$name.err
  echo "== $name rc=$? $((SECONDS-T0)) s"; grep -E "^\| " $OUT/r/spec-$name.out | grep -v "^|---" | cut -c1-170
}
spec lengths none,glide:2:c0.4,glide:3:c0.4,glide:4:c0.4,glide+ngram:3:c0.4,glide+ngram:4:c0.4,glide+ngram:adaptive:6:c0.4
spec timing none,glide:4:c0.4 SPECD_GPU_TIMING=1
timeout 150 $S/specd bench --device cuda --model $T --prompt-tokens 128 --gen-tokens 64 \
  --verify-rows 1,2,3,4,5 --repeat 2 > $OUT/r/bench.json 2> $OUT/r/bench.err
echo "bench rc=$? $((SECONDS-T0)) s"
for i in $(seq 1 60); do grep -q '^exit ' $S/llama-build.log && break; sleep 5; done
timeout 100 $S/llama-build/bin/llama-bench -m $T -ngl 99 -fa 1 -p 512 -n 128 -r 3 -o md > $OUT/r/llama-bench.md 2> $OUT/r/llama-bench.err
echo "llama-bench rc=$? $((SECONDS-T0)) s"; cat $OUT/r/llama-bench.md
(cd $OUT && tar -cJf r.tar.xz r && rm -rf r)
echo "all done $((SECONDS-T0)) s"
