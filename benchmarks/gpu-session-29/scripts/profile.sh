#!/usr/bin/env bash
# Session 29: where a 5-row verification forward of the real target goes, kernel by kernel,
# against one row (scripts/gpu/profile-rows: Nsight Compute over the forwards of those rows
# only, graphs off). After spec.sh, which stashed the binary and joined the target.
set -uo pipefail
S=~/stash
T=$S/models/qwen2.5-coder-1.5b-instruct-q4_k_m.gguf
SPECD=$S/specd timeout 580 scripts/gpu/profile-rows $T $OUT/prof 1 5
