#!/bin/bash
# vr.sh ROUNDS BIN... : specd bench --verify-rows, builds alternated, one process each
rounds=$1; shift
for r in $(seq $rounds); do for v in "$@"; do
  echo "== $v round $r"; /tmp/specd-$v bench --prompt-tokens 128 --gen-tokens 16 --verify-rows 1,2,4,5,6,8,16 --repeat 2 2>&1 | grep -v "^\s*$" | tail -12
done; done
