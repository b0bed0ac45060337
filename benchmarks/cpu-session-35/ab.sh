#!/bin/bash
# ab.sh SHAPE ROWS THREADS REPS BIN... : min ms per binary over REPS alternations
shape=$1 rows=$2 th=$3 reps=$4; shift 4
declare -A best
for i in $(seq $reps); do for v in "$@"; do
  t=$(/tmp/qb-$v --threads $th --ours --shape $shape --rows $rows 2>&1 | grep "^| [0-9]" | awk -F'|' '{print $3}' | tr -d ' ')
  if [[ -z ${best[$v]} ]] || (( $(echo "$t < ${best[$v]}" | bc) )); then best[$v]=$t; fi
done; done
echo -n "shape $shape rows $rows threads $th:"; for v in "$@"; do echo -n " $v ${best[$v]}"; done; echo
