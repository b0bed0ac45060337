#!/usr/bin/env bash
# Session 30, call D (a fresh machine): where a target-only step's 50–80 µs go without
# SPECD_GPU_TIMING=1 (marks.sh: unread events do not give the timed runs' speed, so the gain
# comes after the step's read-back). Nsight Systems over `bench-spec --methods none --limit 3`
# on the synthetic target with and without the timing events; the CUDA API summary (time in
# each call: the read-back's copy and synchronize) and the OS runtime summary of each. Carry
# .xfer/exp/specd-v6.xz (or put main's binary there) and .xfer/target-header.gguf. Not run: the
# machine had no nsys in session 30.
set -uo pipefail
T0=$SECONDS
S=~/stash; mkdir -p $OUT/r $S
xz -dc .xfer/exp/specd-v6.xz > $S/specd-v6 && chmod +x $S/specd-v6
python3 scripts/gpu/synth-gguf.py .xfer/target-header.gguf $S/synth.gguf | tail -1
nsys=$(command -v nsys || ls /usr/local/cuda/bin/nsys /opt/nvidia/nsight-systems/*/bin/nsys /usr/local/cuda/nsight-systems*/bin/nsys 2> /dev/null | head -1)
echo "nsys: ${nsys:-none} ($((SECONDS-T0)) s)"
[[ -n $nsys ]] || exit 2
# (v6 predates the events' default: main's binary needs SPECD_GPU_TIMING=0 for "plain".)
for mode in plain timing; do
  envs=(SPECD_GPU_TIMING=0); [[ $mode == timing ]] && envs=(SPECD_GPU_TIMING=1)
  env "${envs[@]}" timeout 90 $nsys profile -t cuda,osrt -s none --cpuctxsw=none -o $S/$mode --force-overwrite true \
    $S/specd-v6 bench-spec --device cuda --model $S/synth.gguf --methods none --limit 3 --max-tokens 128 \
    > $OUT/r/$mode.out 2>&1
  echo "$mode rc=$? $((SECONDS-T0)) s: $(grep '^| none' $OUT/r/$mode.out | cut -c1-30)"
  timeout 60 $nsys stats -q --report cuda_api_sum,osrt_sum --format csv -o $OUT/r/$mode $S/$mode.nsys-rep > /dev/null 2>&1
  echo "stats rc=$? $((SECONDS-T0)) s"
  python3 - $OUT/r/${mode}_cuda_api_sum.csv <<'PY'
import csv, sys
rows = list(csv.DictReader(open(sys.argv[1])))
for r in rows[:12]:
    print(f"  {r['Name'][:34]:34} calls {r['Num Calls']:>7} avg {float(r['Avg (ns)'])/1e3:8.1f} us  med {float(r['Med (ns)'])/1e3:8.1f} us  total {float(r['Total Time (ns)'])/1e6:8.1f} ms")
PY
done
(cd $OUT && tar -cJf r.tar.xz r && rm -rf r)
echo "all done $((SECONDS-T0)) s"
