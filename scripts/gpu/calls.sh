# Shared by the call scripts of benchmarks/gpu-session-*/scripts (sourced from the repository
# root on the GPU machine, with OUT set by the device tool): the stash, the binaries and the
# synthetic target there, and the measurements those calls take again and again. Results go to
# $OUT/r (pack_results packs them: a call returns at most 8 files).
S=${STASH:-$HOME/stash}
T0=$SECONDS
mkdir -p "$OUT/r" "$S/models"

# ~/stash/specd-NAME from a carried, xz-compressed binary.
stash_specd() {  # NAME XZ
  xz -dc "$2" > "$S/specd-$1" && chmod +x "$S/specd-$1"
}

# ~/stash/synth.gguf: the real 1.5B's header (carried .xfer/target-header.gguf) with random
# weights.
synth_target() {
  python3 scripts/gpu/synth-gguf.py .xfer/target-header.gguf "$S/synth.gguf" | tail -1
}

gpu_clocks() {
  nvidia-smi --query-gpu=name,clocks.sm,clocks.mem,driver_version --format=csv,noheader
}

# The GPU suites on the carried build (scripts/gpu/check), their summary printed.
check_suites() {
  timeout 200 scripts/gpu/check "$OUT/r/check" > "$OUT/r/check.out" 2>&1
  echo "check rc=$? $((SECONDS - T0)) s"
  grep -v "NOT RUN" "$OUT/r/check/summary.txt"
}

# `specd bench` with ~/stash/specd-BIN on MODEL: decode and the verification ROWS (e.g.
# 1,2,3,5), into $OUT/r/bench-NAME.json; prints the decode step and each row count's ms.
bench_rows() {  # NAME BIN MODEL ROWS [VAR=VALUE ...]
  local name=$1 bin=$2 model=$3 rows=$4
  shift 4
  env "$@" timeout 100 "$S/specd-$bin" bench --device cuda --model "$model" --prompt-tokens 128 \
    --gen-tokens 64 --verify-rows "$rows" --repeat 2 > "$OUT/r/bench-$name.json" 2> "$OUT/r/bench-$name.err"
  echo "bench $name rc=$? $((SECONDS - T0)) s"
  python3 - "$OUT/r/bench-$name.json" <<'PY'
import json, sys
r = next(json.loads(l) for l in open(sys.argv[1]) if l.startswith("{"))
d = next(x for x in r["decode"] if x["graphs"])
print(f"  decode {d['ms_per_step']} ms;", " ".join(f"{v['rows']}:{v['ms']}" for v in r["verify"]))
PY
}

# Waits (up to 5 minutes) for the llama.cpp build an earlier call started
# (`scripts/gpu/llamacpp build` with STASH=~/stash).
wait_llama() {
  local i
  for i in $(seq 1 60); do
    grep -q '^exit ' "$S/llama-build.log" 2> /dev/null && break
    sleep 5
  done
  echo "llama.cpp build: $(tail -1 "$S/llama-build.log") (waited $((SECONDS - T0)) s)"
}

# The real target joined from the stashed pieces (sha256 checked) into ~/stash/models; sets
# TARGET to its path.
join_target() {
  local name=qwen2.5-coder-1.5b-instruct-q4_k_m.gguf
  TARGET=$S/models/$name
  [[ -f $TARGET ]] || scripts/gpu/pieces join "$S" "$name" --out "$S/models"
}

# llama.cpp's llama-bench on TARGET (pp512, tg128, flash attention, 3 repetitions).
llama_bench() {  # TAG
  timeout 100 "$S/llama-build/bin/llama-bench" -m "$TARGET" -ngl 99 -fa 1 -p 512 -n 128 -r 3 -o md \
    > "$OUT/r/llama-bench-$1.md" 2> "$OUT/r/llama-bench-$1.err"
  echo "llama-bench $1 rc=$? $((SECONDS - T0)) s"
  grep -E "pp512|tg128" "$OUT/r/llama-bench-$1.md"
}

# `specd bench-spec` with ~/stash/specd-BIN on TARGET and the committed GLIDE drafter: the 20
# prompts, 128 tokens, METHODS; prints its table.
spec() {  # NAME BIN METHODS [VAR=VALUE ...]
  local name=$1 bin=$2 methods=$3
  shift 3
  env "$@" timeout 150 "$S/specd-$bin" bench-spec --device cuda --model "$TARGET" \
    --glide models/glide/glide-qwen2.5-coder-1.5b-instruct.safetensors --methods "$methods" \
    --max-tokens 128 > "$OUT/r/spec-$name.out" 2> "$OUT/r/spec-$name.err"
  echo "== $name rc=$? $((SECONDS - T0)) s"
  grep -E "^\| " "$OUT/r/spec-$name.out" | grep -v "^|---" | cut -c1-170
}

pack_results() {
  (cd "$OUT" && tar -cJf r.tar.xz r && rm -rf r)
  echo "all done $((SECONDS - T0)) s"
}
