#!/usr/bin/env bash
# Session 32, the last call of the hold (run inline as below, nothing carried): glide+ngram's
# lengths and thresholds on the real pair with this tree's binary, then the server at 1, 4 and
# 64 clients (session 27's call3.sh: `specd serve --device cuda`, `specd loadtest`).
export OUT
source scripts/gpu/calls.sh
join_target
spec sweep new none,glide+ngram:adaptive:6:c0.4,glide+ngram:adaptive:8:c0.4,glide+ngram:adaptive:8:c0.3,glide+ngram:adaptive:6:c0.3,glide+ngram:6:c0.4,glide+ngram:5:c0.4,glide:adaptive:6:c0.4 | cut -c1-120
cp "$OUT/r/spec-sweep.out" "$OUT/sweep.out"
rm -rf "$OUT/r"
SPECD_E2E_LEVELS=1,4,64 timeout 400 benchmarks/gpu-session-27/scripts/call3.sh 2>&1 | tail -5
tail -30 "$OUT/summary.txt"
