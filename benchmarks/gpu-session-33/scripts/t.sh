#!/usr/bin/env bash
# Session 33's training calls (issue 12): run 6's drafter resumed with --verified-rank 96
# (verified rows kept in the drafter's cache with a projection of the target's hidden state at
# the row before), on run 7's answers (the answer cache .xfer/answers-20261207-050755.pt.xz,
# stashed with the last target piece) and the same step count and lr as run 7, so that run 7's
# report is the baseline. After the 19 stash calls; GLIDE file in the checkout; carry .whl.
#   bash benchmarks/gpu-session-33/scripts/t.sh prepare    (~3 min)
#   bash benchmarks/gpu-session-33/scripts/t.sh train      (~6–7 min)
#   bash benchmarks/gpu-session-33/scripts/t.sh all        (both in one call, ~9.5 min: the
#       held-out answers only, 20 s of new ones, and training until 525 s after the start)
#   bash benchmarks/gpu-session-33/scripts/t.sh base       (after all: run 6 evaluated, ~1 min)
#   bash benchmarks/gpu-session-33/scripts/t.sh rounds     (after all: the rounds placement, ~8 min)
set -uo pipefail
GLIDE=models/glide/glide-qwen2.5-coder-1.5b-instruct.safetensors
case "${1:-}" in
prepare)
  # Prompts as run 7 drew them: its 12,554 answers come from the cache; only the held-out
  # ones (the same 384 as every run's), bench-spec's and what the deadline leaves are answered.
  GLIDE_TIMEOUT=420 scripts/gpu/train-glide prepare "$OUT" --vocab-from "$GLIDE" \
    --skip-prompts 78556 --prompts-per-file 12 --prompts 32768 --gen-deadline 60
  ;;
train)
  GLIDE_FILE=$HOME/stash/verified.safetensors GLIDE_TIMEOUT=580 scripts/gpu/train-glide train "$OUT" \
    --resume "$GLIDE" --feature last_hidden --verified-rank 96 --intermediate 2752 \
    --feature-lr-scale 1 --lr 2e-4 --distill-share 0.85 --steps 1716 --deadline 470
  ;;
all)
  # A call returns at most 8 files: the drafter's pieces come back as they are, everything
  # else (log, report, manifest, the new answers' cache, checksums) in one archive.
  W=$OUT/w
  GLIDE_FILE=$HOME/stash/verified.safetensors GLIDE_TIMEOUT=580 scripts/gpu/train-glide all "$W" \
    --vocab-from "$GLIDE" --skip-prompts 78556 --prompts-per-file 12 --prompts 32768 --gen-deadline 40 \
    --resume "$GLIDE" --feature last_hidden --verified-rank 96 --intermediate 2752 \
    --feature-lr-scale 1 --lr 2e-4 --distill-share 0.85 --steps 1716 --until 525
  rc=$?
  mv "$W"/glide.part* "$OUT"/ 2> /dev/null
  tar -C "$W" -cJf "$OUT/r.tar.xz" .
  rm -rf "$W"
  exit $rc
  ;;
base | rounds)
  # After `all` in the same hold (its data and the dequantized target are in the stash).
  # base: run 6 as committed, evaluated only (its report's `rounds` figures, which run 7's
  # report lacks); rounds: run 6 trained as `all` trains it, without the verified rows, its
  # blocks placed as specd's rounds place them (`--block-placement rounds`, rounds of 4).
  W=$OUT/w
  if [[ $1 == base ]]; then
    extra=(--steps 0)
  else
    extra=(--steps 1716 --deadline 430 --block-placement rounds --max-block 4)
  fi
  GLIDE_FILE=$HOME/stash/$1.safetensors GLIDE_TIMEOUT=560 scripts/gpu/train-glide train "$W" \
    --resume "$GLIDE" --feature last_hidden --intermediate 2752 \
    --feature-lr-scale 1 --lr 2e-4 --distill-share 0.85 "${extra[@]}"
  rc=$?
  [[ $1 == rounds ]] && mv "$W"/glide.part* "$OUT"/ 2> /dev/null
  tar -C "$W" --exclude 'glide.part*' -cJf "$OUT/r.tar.xz" .
  rm -rf "$W"
  exit $rc
  ;;
*)
  sed -n '2,12p' "$0"
  exit 2
  ;;
esac
