#!/usr/bin/env bash
# Session 27: the server on the real target with the committed GLIDE drafter (no draft model),
# scripts/gpu/e2e's load stage: `specd serve --device cuda` and `specd loadtest` at 1, 4, 16 and
# 64 clients through the WebSocket API (none, glide, glide+ngram; the load policy on) and the
# OpenAI API (none), each request with a prompt of its own. The binary and models were stashed
# by calls 1 and 2.
set -uo pipefail
SPECD_E2E_WITH_DRAFT=0 SPECD_E2E_FRESH=1 timeout 560 scripts/gpu/e2e s27 models,load
cp ~/stash/results/s27/summary.txt $OUT/ 2>/dev/null
ls $OUT
