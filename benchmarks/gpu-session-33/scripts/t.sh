#!/usr/bin/env bash
# Session 33's training calls (issue 12), after the 19 stash calls (the answer cache
# .xfer/answers-20261207-050755.pt.xz stashed with the last target piece); GLIDE file in the
# checkout; carry .whl. Each starts from run 6 with run 7's answers, steps and lr, so that run
# 7's report is the baseline.
#   t.sh all     (~9.5 min) prepare and train in one call: --verified-rank 96; the held-out
#                answers only, 40 s of new ones, training until 525 s after the start
#   t.sh base    (after all, ~1 min) run 6 evaluated only (its report's `rounds` figures)
#   t.sh rounds  (after all, ~8 min) no verified rows, blocks placed as specd's rounds of 4
# A call returns at most 8 files: a drafter's pieces come back as they are, everything else
# (log, report, manifest, the new answers' cache, checksums) in one archive.
set -uo pipefail
case "${1:-}" in
all | base | rounds) ;;
*)
  sed -n '2,11p' "$0"
  exit 2
  ;;
esac
GLIDE=models/glide/glide-qwen2.5-coder-1.5b-instruct.safetensors
W=${OUT:?OUT, the output folder the device tool sets}/w
common=(--resume "$GLIDE" --feature last_hidden --intermediate 2752 --feature-lr-scale 1 --lr 2e-4
  --distill-share 0.85)

# Moves the drafter's pieces to OUT (unless KEEP is 0) and packs the rest of W; exits with RC.
pack() {  # RC KEEP
  [[ $2 == 1 ]] && mv "$W"/glide.part* "$OUT"/ 2> /dev/null
  tar -C "$W" --exclude 'glide.part*' -cJf "$OUT/r.tar.xz" .
  rm -rf "$W"
  exit "$1"
}

case $1 in
all)
  # Prompts as run 7 drew them: its 12,554 answers come from the cache.
  GLIDE_FILE=$HOME/stash/verified.safetensors GLIDE_TIMEOUT=580 scripts/gpu/train-glide all "$W" \
    --vocab-from "$GLIDE" --skip-prompts 78556 --prompts-per-file 12 --prompts 32768 --gen-deadline 40 \
    "${common[@]}" --verified-rank 96 --steps 1716 --until 525
  pack $? 1
  ;;
base)
  # (Its data and the dequantized target are in the stash from `all`.)
  GLIDE_FILE=$HOME/stash/base.safetensors GLIDE_TIMEOUT=560 scripts/gpu/train-glide train "$W" \
    "${common[@]}" --steps 0
  pack $? 0
  ;;
rounds)
  GLIDE_FILE=$HOME/stash/rounds.safetensors GLIDE_TIMEOUT=560 scripts/gpu/train-glide train "$W" \
    "${common[@]}" --steps 1716 --deadline 430 --block-placement rounds --max-block 4
  pack $? 1
  ;;
esac
