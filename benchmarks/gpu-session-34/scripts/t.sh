#!/usr/bin/env bash
# The next session's training calls (issue 12), after the 19 stash calls of the target (both
# answer caches, .xfer/answers-20261207-050755.pt.xz and .xfer/answers-20261207-184147.pt.xz,
# stashed with the last piece); GLIDE file in the checkout; carry .whl.
#   t.sh prep    (~3 min) the data of session 34's verified-rows call: the same 16,285 answers,
#                all from the two caches (--gen-deadline 10 lets the 384 held-out answers
#                finish and starts no training batch), the same held-out sets
#   t.sh rounds  (after prep, ~8 min) run 6 resumed, run 7's steps and lr, no verified rows,
#                blocks placed as specd's rounds of 4 place them; its baseline is session 34's
#                verified-rows call (the same data and steps; verified rows changed nothing)
#   t.sh long I N [train.py options]  (after prep, ~10 min a call) segment I of N of one
#                schedule of $STEPS steps (default 6000: ~3,000 a call, 3.5× a run's), from run 6
#                for I = 0, else from the segment before (its f32 weights and optimizer state
#                in the stash; models/glide/train/check_segments.py): much more training in
#                consecutive calls of one hold (the state stays in the stash: all segments
#                in one hold, after stash and prep: ~1,430 s for two)
# A call returns at most 8 files: a drafter's pieces come back as they are, everything else
# (log, report, manifest, checksums) in one archive.
set -uo pipefail
case "${1:-}" in
prep | rounds | long) ;;
*)
  sed -n '2,17p' "$0"
  exit 2
  ;;
esac
GLIDE=models/glide/glide-qwen2.5-coder-1.5b-instruct.safetensors
W=${OUT:?OUT, the output folder the device tool sets}/w

# Moves the drafter's pieces to OUT (unless KEEP is 0) and packs the rest of W; exits with RC.
pack() {  # RC KEEP
  [[ $2 == 1 ]] && mv "$W"/glide.part* "$OUT"/ 2> /dev/null
  tar -C "$W" --exclude 'glide.part*' -cJf "$OUT/r.tar.xz" .
  rm -rf "$W"
  exit "$1"
}

case $1 in
prep)
  GLIDE_TIMEOUT=580 scripts/gpu/train-glide prepare "$W" --vocab-from "$GLIDE" --skip-prompts 78556 \
    --prompts-per-file 12 --prompts 32768 --gen-deadline 10
  pack $? 0
  ;;
rounds)
  GLIDE_FILE=$HOME/stash/rounds.safetensors GLIDE_TIMEOUT=560 scripts/gpu/train-glide train "$W" \
    --resume "$GLIDE" --feature last_hidden --intermediate 2752 --feature-lr-scale 1 --lr 2e-4 \
    --distill-share 0.85 --steps 1716 --deadline 430 --block-placement rounds --max-block 4
  pack $? 1
  ;;
long)
  i=${2:?t.sh long I N} n=${3:?t.sh long I N}
  shift 3
  from=$GLIDE
  [[ $i == 0 ]] || from=$HOME/stash/long.safetensors
  GLIDE_FILE=$HOME/stash/long.safetensors GLIDE_TIMEOUT=575 scripts/gpu/train-glide train "$W" \
    --resume "$from" --feature last_hidden --intermediate 2752 --feature-lr-scale 1 --lr 2e-4 \
    --distill-share 0.85 --steps "${STEPS:-6000}" --segment "$i/$n" --state "$HOME/stash/long-state.pt" \
    --deadline 530 "$@"
  pack $? 1
  ;;
esac
