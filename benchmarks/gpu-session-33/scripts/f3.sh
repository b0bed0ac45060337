#!/usr/bin/env bash
# The server on the real pair at 1, 2, 4 and 8 clients with main and with session 32's
# load-cap.patch (the load policy capping at the best length under load whenever it is below
# the method's longest): per binary one `specd serve --device cuda` (target + GLIDE, no draft
# model), `specd loadtest` over the WebSocket for none and glide+ngram, 64 requests of 128
# tokens a level, fresh prompts. After the 19 stash calls of the target; GLIDE file in the
# checkout. Carry .gpu/specd.xz and .xfer/exp/specd-loadcap.xz (CUDA builds, git-ignored:
# `cargo build --release --features cuda` as is and after `git apply
# benchmarks/gpu-session-32/load-cap.patch`; session 35 built both at 7bd824b, whose GPU code is
# c7f7fdd's).
set -uo pipefail
source scripts/gpu/calls.sh
stash_specd main .gpu/specd.xz
stash_specd loadcap .xfer/exp/specd-loadcap.xz
join_target
export SPECD_HOME=$S
url=http://127.0.0.1:8017
for round in $(seq 1 "${ROUNDS:-1}"); do
  for v in main loadcap; do
    "$S/specd-$v" serve --device cuda --port 8017 --model "$TARGET" \
      --glide models/glide/glide-qwen2.5-coder-1.5b-instruct.safetensors > "$OUT/r/serve-$v-$round.log" 2>&1 &
    pid=$!
    for _ in $(seq 120); do curl -sf $url/health > /dev/null && break; sleep 1; done
    echo "== $v round $round up at $((SECONDS - T0)) s"
    grep -o "calibrated.*" "$OUT/r/serve-$v-$round.log" | cut -c1-700
    # Warm-up (graphs, allocations), not kept.
    "$S/specd-$v" loadtest --url $url --api ws --speculation glide+ngram --concurrency 1,4 \
      --requests 8 --max-tokens 32 --ignore-eos --fresh-prompts > /dev/null 2>&1
    for m in none glide+ngram; do
      timeout 120 "$S/specd-$v" loadtest --url $url --api ws --speculation "$m" --concurrency 1,2,4,8 \
        --requests 64 --max-tokens 128 --ignore-eos --fresh-prompts \
        --json "$OUT/r/load-$v-$m-$round.json" > "$OUT/r/load-$v-$m-$round.out" 2>&1
      echo "-- $m rc=$? $((SECONDS - T0)) s"
      grep -E "^\| [0-9]+ clients" "$OUT/r/load-$v-$m-$round.out" | cut -d'|' -f2,5,12,13
    done
    kill -INT $pid; wait $pid
  done
done
pack_results
