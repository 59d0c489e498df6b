#!/usr/bin/env bash
# Short ablation behind SPEQ's defaults (results/README.md, "Ablation").
# Each run: ResNet-20 W2A2 on CIFAR-10, EPOCHS epochs (default 1: 390 steps, cosine LR 0.02 -> 0)
# from the FP checkpoint of results/cifar10_resnet20.sh, seed 0 (1 and 2 for the noise runs), one
# thread; JOBS runs side by side.
# Usage: results/ablation.sh [name ...]   (default: every run below)
# Env:   SPEQ_BUILD (build folder, default build), FP_CHECKPOINT, JOBS (2), EPOCHS (1),
#        OUT (runs/ablation), RESULTS (results/ablation); with EPOCHS other than 1 both folders
#        get the suffix _<EPOCHS>ep, so runs of different lengths never mix; EXTRA (more
#        --set overrides applied to every run, e.g. "--set lr=0.005").
set -euo pipefail
cd "$(dirname "$0")/.."
build=${SPEQ_BUILD:-build}
fp=${FP_CHECKPOINT:-runs/resnet20_fp/last.safetensors}
epochs=${EPOCHS:-1}
suffix=""
[ "$epochs" = 1 ] || suffix="_${epochs}ep"
out=${OUT:-runs/ablation$suffix}
results=${RESULTS:-results/ablation$suffix}
jobs=${JOBS:-2}
extra=${EXTRA:-}
[ -f "$fp" ] || { echo "ablation.sh: no FP checkpoint at $fp (run results/cifar10_resnet20.sh fp first)" >&2; exit 1; }

# name | config | overrides (the one thing each run changes from the speq config's defaults)
runs=(
  "qat|resnet20_w2a2_qat|"
  "speq_default|resnet20_w2a2_speq|"
  "speq_kd4|resnet20_w2a2_speq|--set speq.kd_weight=4"
  "speq_T2|resnet20_w2a2_speq|--set speq.temperature=2"
  "speq_u0.25|resnet20_w2a2_speq|--set speq.u=0.25"
  "speq_u0.75|resnet20_w2a2_speq|--set speq.u=0.75"
  "speq_kd_only|resnet20_w2a2_speq|--set speq.ce_weight=0"
  "speq_uniform|resnet20_w2a2_speq|--set speq.draw=uniform --set speq.uniform_low=2 --set speq.uniform_high=8"
  "speq_running_bn|resnet20_w2a2_speq|--set speq.teacher_bn=running"
  "speq_kd4_running_bn|resnet20_w2a2_speq|--set speq.teacher_bn=running --set speq.kd_weight=4"
  "speq_kd4_warmup2|resnet20_w2a2_speq|--set speq.kd_weight=4 --set speq.kd_warmup_epochs=2"
  "kd|resnet20_w2a2_kd|"
  # The noise to read the table against: QAT and SPEQ again with other data orders.
  "qat_seed1|resnet20_w2a2_qat|--set seed=1"
  "speq_default_seed1|resnet20_w2a2_speq|--set seed=1"
  "qat_seed2|resnet20_w2a2_qat|--set seed=2"
  "speq_default_seed2|resnet20_w2a2_speq|--set seed=2"
)

selected=("$@")
mkdir -p "$out"
for entry in "${runs[@]}"; do
  IFS='|' read -r name config overrides <<<"$entry"
  if [ ${#selected[@]} -gt 0 ] && [[ ! " ${selected[*]} " == *" $name "* ]]; then continue; fi
  while [ "$(jobs -rp | wc -l)" -ge "$jobs" ]; do wait -n; done
  echo "ablation: $name ($config $overrides $extra)"
  # shellcheck disable=SC2086  # overrides and extra are words on purpose
  "$build/speq-train" --config "configs/$config.json" --set epochs="$epochs" --set threads=1 \
    --set init_checkpoint="$fp" --set out_dir="$out/$name" $overrides $extra >"$out/$name.log" 2>&1 &
done
wait
# Keep the small files of every finished run (not the checkpoints) in $results/.
for run in "$out"/*/; do
  name=$(basename "$run")
  [ -f "$run/summary.json" ] || continue
  mkdir -p "$results/$name"
  cp "$run/config.json" "$run/metrics.jsonl" "$run/summary.json" "$results/$name/"
done
python3 results/table.py "$results"/*/ | tee "$results/table.md"
