#!/usr/bin/env bash
# For the next session (not run in session 31), after d1.sh and the 19 stash calls of the target
# (scripts/gpu/pieces stash, one piece a call): the real pair, `old` (57d6ea6) and `new` (this
# tree) alternating, with the GLIDE file back in the checkout, nothing carried; llama.cpp's tg128
# before and after; `specd bench` verification rows of both.
set -uo pipefail
source scripts/gpu/calls.sh
wait_llama
join_target || { echo "join failed"; exit 1; }
gpu_clocks
llama_bench 1
methods=none,glide:4:c0.4,glide+ngram:4:c0.4,glide+ngram:adaptive:6:c0.4
for round in 1 2; do
  spec "old-$round" old "$methods"
  spec "new-$round" new "$methods"
done
for v in old new; do
  bench_rows "$v" "$v" "$TARGET" 1,2,3,4,5,6,7
done
llama_bench 2
pack_results
