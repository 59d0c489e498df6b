#!/usr/bin/env bash
# How hard SPEQ's distillation term pulls next to cross-entropy at a given network state, without
# training it: 20 SPEQ steps at a negligible learning rate (1e-12) from CHECKPOINT, once per
# temperature, then each run's kd_ce_grad_ratio (train/speq.hpp logit_gradient_norms; the ratio
# scales linearly with speq.kd_weight, so it is measured at kd_weight 1).
# Usage: results/grad_probe.sh CHECKPOINT [T ...]    (default temperatures: 1 2 4)
# Env:   SPEQ_BUILD (default build), OUT (default runs/grad_probe), STEPS (20), JOBS (2)
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -ge 1 ] || { echo "usage: results/grad_probe.sh CHECKPOINT [T ...]" >&2; exit 2; }
build=${SPEQ_BUILD:-build}
checkpoint=$1
shift
temperatures=("$@")
[ ${#temperatures[@]} -gt 0 ] || temperatures=(1 2 4)
out=${OUT:-runs/grad_probe}/$(basename "$(dirname "$checkpoint")")_$(basename "$checkpoint" .safetensors)
steps=${STEPS:-20}
jobs=${JOBS:-2}
mkdir -p "$out"
for T in "${temperatures[@]}"; do
  while [ "$(jobs -rp | wc -l)" -ge "$jobs" ]; do wait -n; done
  "$build/speq-train" --config configs/resnet20_w2a2_speq.json --set init_checkpoint="$checkpoint" \
    --set lr=1e-12 --set epochs=1 --set max_steps="$steps" --set threads=1 --set speq.temperature="$T" \
    --set out_dir="$out/T$T" >"$out/T$T.log" 2>&1 &
done
wait
echo "| checkpoint | T | train CE | 1 - cos | logit grad CE | logit grad KD | KD/CE |"
echo "|---|---|---|---|---|---|---|"
for T in "${temperatures[@]}"; do
  python3 -c '
import json, sys
m = json.loads(open(sys.argv[1]).readline())
cells = [sys.argv[2], sys.argv[3]] + ["%.4f" % m[k] for k in ("train_ce", "train_kd", "logit_grad_ce", "logit_grad_kd", "kd_ce_grad_ratio")]
print("| " + " | ".join(cells) + " |")' "$out/T$T/metrics.jsonl" "$checkpoint" "$T"
done
