#!/usr/bin/env bash
# Session 27, hold 1, call 1 (synthetic target from the real 1.5B's header, the committed GLIDE
# file): setup; `scripts/gpu/check`; GLIDE's drafting cost through bench-spec, old binary (0ff706c: the host picks every draft from its logits)
# against new with SPECD_GLIDE_CHAIN=1 (the device picks greedy drafts and chains a round's later
# forwards) and new as it is by default (device picks, one forward and one trip to the host a
# draft), then the new binary both ways with SPECD_GPU_TIMING=1.
set -uo pipefail
T0=$SECONDS
mkdir -p ~/stash $OUT/r
xz -dc .gpu/specd.xz > ~/stash/specd && chmod +x ~/stash/specd
xz -dc .xfer/old/specd-0ff706c.xz > ~/stash/specd-old && chmod +x ~/stash/specd-old
cp .gpu/specd.xz ~/stash/ && cp .gpu/tests-gpu.tar.xz ~/stash/tests.tar.xz  # what scripts/gpu/e2e unpacks later
python3 scripts/gpu/synth-gguf.py .xfer/target-header.gguf ~/stash/synth.gguf | tail -1
nvidia-smi --query-gpu=name,clocks.sm,clocks.mem,driver_version --format=csv,noheader
echo "setup $((SECONDS-T0)) s"
timeout 150 scripts/gpu/check $OUT/r/check > $OUT/r/check.out 2>&1
echo "check rc=$? $((SECONDS-T0)) s"; cat $OUT/r/check/summary.txt
glide=models/glide/glide-qwen2.5-coder-1.5b-instruct.safetensors
spec() {  # name binary [env...]
  local name=$1 bin=$2; shift 2
  env "$@" timeout 120 $bin bench-spec --device cuda --model ~/stash/synth.gguf --glide $glide \
    --methods none,glide:4,glide:1 --max-tokens 128 --limit 4 > $OUT/r/spec-$name.out 2> $OUT/r/spec-$name.err
  echo "== $name rc=$? $((SECONDS-T0)) s"; grep -E "^\| (none|glide)" $OUT/r/spec-$name.out | head -5
}
spec old1 ~/stash/specd-old; spec chain1 ~/stash/specd SPECD_GLIDE_CHAIN=1; spec picks1 ~/stash/specd
spec chainT ~/stash/specd SPECD_GPU_TIMING=1 SPECD_GLIDE_CHAIN=1; spec picksT ~/stash/specd SPECD_GPU_TIMING=1
grep -h "GLIDE graphs" $OUT/r/spec-chainT.err $OUT/r/spec-picksT.err | grep "glide:4" | head -4
(cd $OUT && tar -cJf r.tar.xz r && rm -rf r)
echo "all done $((SECONDS-T0)) s"
