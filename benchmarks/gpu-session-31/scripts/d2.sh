#!/usr/bin/env bash
# For the next session (not run in session 31), after d1.sh and the 19 stash calls of the target
# (scripts/gpu/pieces stash, one piece a call): the real pair, `old` (57d6ea6) and `new` (this
# tree) alternating, with the GLIDE file back in the checkout, nothing carried; llama.cpp's tg128
# before and after; `specd bench` verification rows of both.
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
llama() {
  timeout 100 $S/llama-build/bin/llama-bench -m $T -ngl 99 -fa 1 -p 512 -n 128 -r 3 -o md > $OUT/r/llama-bench-$1.md 2> $OUT/r/llama-bench-$1.err
  echo "llama-bench $1 rc=$? $((SECONDS-T0)) s"; grep -E "pp512|tg128" $OUT/r/llama-bench-$1.md
}
spec() {  # name binary methods
  timeout 150 $S/specd-$2 bench-spec --device cuda --model $T --glide $glide \
    --methods $3 --max-tokens 128 > $OUT/r/spec-$1.out 2> $OUT/r/spec-$1.err
  echo "== $1 rc=$? $((SECONDS-T0)) s"; grep -E "^\| " $OUT/r/spec-$1.out | grep -v "^|---" | cut -c1-170
}
llama 1
methods=none,glide:4:c0.4,glide+ngram:4:c0.4,glide+ngram:adaptive:6:c0.4
for round in 1 2; do
  spec old-$round old $methods
  spec new-$round new $methods
done
for v in old new; do
  timeout 100 $S/specd-$v bench --device cuda --model $T --prompt-tokens 128 --gen-tokens 64 \
    --verify-rows 1,2,3,4,5,6,7 --repeat 2 > $OUT/r/bench-$v.json 2> $OUT/r/bench-$v.err
  echo "bench $v rc=$? $((SECONDS-T0)) s"
  python3 - $OUT/r/bench-$v.json <<'PY'
import json, sys
r = next(json.loads(l) for l in open(sys.argv[1]) if l.startswith("{"))
d = next(x for x in r["decode"] if x["graphs"])
print(f"  decode {d['ms_per_step']} ms;", " ".join(f"{v['rows']}:{v['ms']}" for v in r["verify"]))
PY
done
llama 2
(cd $OUT && tar -cJf r.tar.xz r && rm -rf r)
echo "all done $((SECONDS-T0)) s"
