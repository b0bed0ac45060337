#!/usr/bin/env bash
# The training calls of sessions 33 and 34 (issue 12), after the 19 stash calls of the target
# (with the last piece the answer caches: .xfer/answers-20261207-050755.pt.xz, run 7's, and from
# session 34 on also .xfer/answers-20261207-184147.pt.xz); GLIDE file in the checkout; carry
# .whl. Each starts from run 6 with run 7's steps and lr.
#   t.sh all     (~9.5 min; ran in session 34) prepare and train in one call: --verified-rank 96;
#                the held-out answers, 40 s of new ones, training until 525 s after the start
#   t.sh base    (after all or prep, ~1 min; ran in session 34) run 6 evaluated only
#   t.sh prep [train.py options]  (~3 min) session 34's data again: its 16,285 answers, all
#                from the two caches (--gen-deadline 10 lets the 384 held-out answers finish and
#                starts no training batch), the same held-out sets. Without run 7's cache (lost
#                with session 34's machine): `t.sh prep --prompts 16285 --gen-deadline 200`
#                answers the first 16,285 prompts less those session 34's cache holds (~2 min more)
#   t.sh rounds  (after all or prep, ~8 min) no verified rows, blocks placed as specd's rounds
#                of 4 place them; baseline: session 34's `all` report (same data and steps)
#   t.sh long I N [train.py options]  (after prep, ~10 min a call) segment I of N of one
#                schedule of $STEPS steps (default 6000: ~3,000 a call, 3.5× a run's), from run 6
#                for I = 0, else from the segment before (its f32 weights and optimizer state
#                stay in the stash: all segments in one hold; check_segments.py)
# A call returns at most 8 files: a drafter's pieces come back as they are, everything else
# (log, report, manifest, the new answers' cache, checksums) in one archive.
set -uo pipefail
case "${1:-}" in
all | base | prep | rounds | long) ;;
*)
  sed -n '2,20p' "$0"
  exit 2
  ;;
esac
GLIDE=models/glide/glide-qwen2.5-coder-1.5b-instruct.safetensors
W=${OUT:?OUT, the output folder the device tool sets}/w
common=(--feature last_hidden --intermediate 2752 --feature-lr-scale 1 --lr 2e-4 --distill-share 0.85)
# Run 7's prompts: its 12,554 answers (and session 34's 3,731) come from the caches.
prompts=(--vocab-from "$GLIDE" --skip-prompts 78556 --prompts-per-file 12 --prompts 32768)

# Moves the drafter's pieces to OUT (unless KEEP is 0) and packs the rest of W; exits with RC.
pack() {  # RC KEEP
  [[ $2 == 1 ]] && mv "$W"/glide.part* "$OUT"/ 2> /dev/null
  tar -C "$W" --exclude 'glide.part*' -cJf "$OUT/r.tar.xz" .
  rm -rf "$W"
  exit "$1"
}

case $1 in
all)
  GLIDE_FILE=$HOME/stash/verified.safetensors GLIDE_TIMEOUT=580 scripts/gpu/train-glide all "$W" \
    "${prompts[@]}" --gen-deadline 40 --resume "$GLIDE" "${common[@]}" --verified-rank 96 --steps 1716 --until 525
  pack $? 1
  ;;
base)
  GLIDE_FILE=$HOME/stash/base.safetensors GLIDE_TIMEOUT=560 scripts/gpu/train-glide train "$W" \
    --resume "$GLIDE" "${common[@]}" --steps 0
  pack $? 0
  ;;
prep)
  shift
  GLIDE_TIMEOUT=580 scripts/gpu/train-glide prepare "$W" "${prompts[@]}" --gen-deadline 10 "$@"
  pack $? 0
  ;;
rounds)
  GLIDE_FILE=$HOME/stash/rounds.safetensors GLIDE_TIMEOUT=560 scripts/gpu/train-glide train "$W" \
    --resume "$GLIDE" "${common[@]}" --steps 1716 --deadline 430 --block-placement rounds --max-block 4
  pack $? 1
  ;;
long)
  i=${2:?t.sh long I N} n=${3:?t.sh long I N}
  shift 3
  from=$GLIDE
  [[ $i == 0 ]] || from=$HOME/stash/long.safetensors
  GLIDE_FILE=$HOME/stash/long.safetensors GLIDE_TIMEOUT=575 scripts/gpu/train-glide train "$W" \
    --resume "$from" "${common[@]}" --steps "${STEPS:-6000}" --segment "$i/$n" \
    --state "$HOME/stash/long-state.pt" --deadline 530 "$@"
  pack $? 1
  ;;
esac
