#!/usr/bin/env bash
# For the next session (written in session 32, not run): the server on the real pair at 1, 2, 4
# and 8 clients with main and with load-cap.patch (the load policy capping at the best length
# under load whenever it is below the method's longest), one after the other; session 27's e2e
# load stage (none, glide, glide+ngram over the WebSocket, none over OpenAI; prompts of their
# own, 64 requests of 128 tokens a level). After the 19 stash calls of the target. Carry
# .xfer/old/specd-MAIN.xz and .xfer/exp/specd-loadcap.xz (CUDA builds: scripts/gpu/build here,
# once as is and once after `git apply benchmarks/gpu-session-32/load-cap.patch`, copying
# .gpu/specd.xz each time; session 32 left both, for c7f7fdd, git-ignored); GLIDE file in the
# checkout. MAIN names the first (default c7f7fdd).
set -uo pipefail
source scripts/gpu/calls.sh
stash_specd main ".xfer/old/specd-${MAIN:-c7f7fdd}.xz"
stash_specd loadcap .xfer/exp/specd-loadcap.xz
for v in main loadcap; do
  SPECD_E2E_BIN=$S/specd-$v SPECD_E2E_WITH_DRAFT=0 SPECD_E2E_FRESH=1 SPECD_E2E_LEVELS=1,2,4,8 \
    timeout 280 scripts/gpu/e2e "s32-$v" models,load > "$OUT/r/e2e-$v.out" 2>&1
  echo "== $v rc=$? $((SECONDS - T0)) s"
  grep -h "calibrated" "$S/results/s32-$v/serve.log" | grep -o "under load.*" | cut -c1-300
  grep -E "^== |clients" "$S/results/s32-$v/load.log" | cut -c1-60
  cp "$S/results/s32-$v/load.log" "$OUT/r/load-$v.log"
done
pack_results
