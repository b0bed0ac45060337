#!/bin/bash
# session 35 measurements, quiet machine
cd /work/main
echo "== qmatmul_bench (min of 3, alternated), 2 threads"
for s in 0 1 2 3; do for r in 1 5; do /tmp/ab.sh $s $r 2 3 old new8; done; done
echo "== specd bench verify rows, alternated"
for i in 1 2; do for v in old new; do echo "-- $v round $i"; /tmp/specd-$v bench --prompt-tokens 128 --gen-tokens 32 --verify-rows 1,2,3,4,5,6,8 --repeat 2 2>/dev/null | grep "^{"; done; done
echo "== compare-llamacpp new"
SPECD_BIN=/tmp/specd-new scripts/bench/compare-llamacpp --rounds 3 ~/.cache/specd/models/qwen2.5-coder-1.5b-instruct-q4_k_m.gguf ~/.cache/specd/models/qwen2.5-coder-0.5b-instruct.gguf
echo "== compare-llamacpp old"
SPECD_BIN=/tmp/specd-old scripts/bench/compare-llamacpp --rounds 3 ~/.cache/specd/models/qwen2.5-coder-1.5b-instruct-q4_k_m.gguf ~/.cache/specd/models/qwen2.5-coder-0.5b-instruct.gguf
echo "== done $(date)"
