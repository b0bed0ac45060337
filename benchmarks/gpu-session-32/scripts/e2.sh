#!/usr/bin/env bash
# Session 32, after e1.sh and the 19 stash calls of the target (scripts/gpu/pieces stash, one
# piece a call): session 31's d2.sh, the real pair with `old` (57d6ea6) and `new` (this tree)
# alternating, and, when VAR names a kernel variant carried under .xfer/var (e1.sh), `new` with
# it for 5 and 6 rows (SPECD_DOTC_MAX_ROWS=6); the GLIDE file back in the checkout; llama.cpp's
# tg128 before and after; `specd bench` verification rows of each.
set -uo pipefail
source scripts/gpu/calls.sh
VAR=${VAR:-}
wait_llama
join_target || { echo "join failed"; exit 1; }
gpu_clocks
llama_bench 1
methods=none,glide:4:c0.4,glide+ngram:4:c0.4,glide+ngram:adaptive:6:c0.4
var_env=()
[[ -n $VAR ]] && var_env=(SPECD_KERNELS_DIR=$PWD/.xfer/var/$VAR SPECD_DOTC_MAX_ROWS=6)
for round in 1 2; do
  spec "old-$round" old "$methods"
  spec "new-$round" new "$methods"
  [[ -n $VAR ]] && spec "$VAR-$round" new "$methods" "${var_env[@]}"
done
for v in old new; do
  bench_rows "$v" "$v" "$TARGET" 1,2,3,4,5,6,7
done
[[ -n $VAR ]] && bench_rows "$VAR" new "$TARGET" 1,2,3,4,5,6,7 "${var_env[@]}"
llama_bench 2
pack_results
