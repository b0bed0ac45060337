#!/usr/bin/env bash
# Session 30, after ab4.sh and the 19 stash calls of the target (scripts/gpu/pieces stash, one
# piece a call, the GLIDE file out of the checkout): the real pair with ~/stash/specd (v5), with
# the GLIDE file back in the checkout, nothing carried. As session 29's spec.sh, except that
# llama.cpp's build (started by ab4.sh) is waited for before anything is timed.
set -uo pipefail
T0=$SECONDS
S=~/stash; mkdir -p $OUT/r $S/models
for i in $(seq 1 60); do grep -q '^exit ' $S/llama-build.log 2>/dev/null && break; sleep 5; done
echo "llama.cpp build: $(tail -1 $S/llama-build.log) (waited $((SECONDS-T0)) s)"
name=qwen2.5-coder-1.5b-instruct-q4_k_m.gguf
[[ -f $S/models/$name ]] || scripts/gpu/pieces join $S $name --out $S/models || { echo "join failed"; exit 1; }
T=$S/models/$name
glide=models/glide/glide-qwen2.5-coder-1.5b-instruct.safetensors
nvidia-smi --query-gpu=name,clocks.sm,clocks.mem,driver_version --format=csv,noheader
timeout 100 $S/llama-build/bin/llama-bench -m $T -ngl 99 -fa 1 -p 512 -n 128 -r 3 -o md > $OUT/r/llama-bench.md 2> $OUT/r/llama-bench.err
echo "llama-bench rc=$? $((SECONDS-T0)) s"; cat $OUT/r/llama-bench.md
spec() {  # name methods [env...]
  local name=$1 methods=$2; shift 2
  env "$@" timeout 150 $S/specd bench-spec --device cuda --model $T --glide $glide \
    --methods $methods --max-tokens 128 > $OUT/r/spec-$name.out 2> $OUT/r/spec-$name.err
  echo "== $name rc=$? $((SECONDS-T0)) s"; grep -E "^\| " $OUT/r/spec-$name.out | grep -v "^|---" | cut -c1-170
}
spec lengths none,glide:2:c0.4,glide:3:c0.4,glide:4:c0.4,glide+ngram:3:c0.4,glide+ngram:4:c0.4,glide+ngram:adaptive:6:c0.4
spec again none,glide+ngram:3:c0.4,glide+ngram:4:c0.4
timeout 150 $S/specd bench --device cuda --model $T --prompt-tokens 128 --gen-tokens 64 \
  --verify-rows 1,2,3,4,5,6 --repeat 2 > $OUT/r/bench.json 2> $OUT/r/bench.err
echo "bench rc=$? $((SECONDS-T0)) s"
timeout 100 $S/llama-build/bin/llama-bench -m $T -ngl 99 -fa 1 -p 512 -n 128 -r 3 -o md > $OUT/r/llama-bench-2.md 2> $OUT/r/llama-bench-2.err
echo "llama-bench (again) rc=$? $((SECONDS-T0)) s"; grep tg128 $OUT/r/llama-bench-2.md
(cd $OUT && tar -cJf r.tar.xz r && rm -rf r)
echo "all done $((SECONDS-T0)) s"
