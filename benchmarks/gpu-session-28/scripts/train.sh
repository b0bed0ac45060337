#!/usr/bin/env bash
# Session 28: GLIDE run 7 in one call (issue 12). Carry .whl (the gguf wheel) after the 19 stash
# calls of the target's pieces. Resumes run 6 (the committed file, its Q8_0 matrices
# dequantized), answers new prompts (the ones after run 6's 78,556: `--prompts-per-file 12`
# keeps the first six rounds of prompts as they were, so `--skip-prompts 78556` starts at the
# seventh; the 384 held-out prompts are the same as every earlier run's), then trains until 560
# s into the call. The bf16 file stays in ~/stash for call2b.sh and comes back in pieces with
# the report; this call's answers come back as a cache for later sessions.
set -uo pipefail
glide=models/glide/glide-qwen2.5-coder-1.5b-instruct.safetensors
GLIDE_TIMEOUT=575 scripts/gpu/train-glide all $OUT --vocab-from $glide --resume $glide \
  --feature last_hidden --intermediate 2752 --feature-lr-scale 1 \
  --skip-prompts 78556 --prompts-per-file 12 --prompts 32768 --gen-deadline 150 \
  --until 560 --lr 2e-4 --distill-share 0.85 --steps 6000
ls -la $OUT
