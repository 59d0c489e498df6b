#!/usr/bin/env bash
# The CIFAR-10 ResNet-20 runs of results/README.md: FP (15 epochs, 2 threads), then W2A2 qat and
# W2A2 speq from that same FP checkpoint with the same epochs and seed, side by side on one
# thread each; then their curves.
# Usage: results/cifar10_resnet20.sh [fp] [w2a2] [collect]      (default: all three)
# collect copies each run's config.json, metrics.jsonl and summary.json (not the checkpoints)
# and the curves into results/cifar10_resnet20/.
# Env:   SPEQ_BUILD (default build), QUANT_EPOCHS (epochs of qat and speq, default 6). Runs with
#        another QUANT_EPOCHS go to runs/resnet20_w2a2_<method>_<N>ep (and collect copies those,
#        with the same QUANT_EPOCHS set, to results/cifar10_resnet20/resnet20_w2a2_<method>_<N>ep);
#        SEED (default 0): another seed (initial weights, data order, augmentation, bit draws) for
#        every stage; runs then get the suffix _seed<N> (the FP run too, and qat/speq start from
#        that seed's FP checkpoint); FP_THREADS (default 2): threads of the FP run.
set -euo pipefail
cd "$(dirname "$0")/.."
build=${SPEQ_BUILD:-build}
quant_epochs=${QUANT_EPOCHS:-6}
seed=${SEED:-0}
fp_threads=${FP_THREADS:-2}
seed_suffix=""
[ "$seed" = 0 ] || seed_suffix="_seed$seed"
suffix=""
[ "$quant_epochs" = 6 ] || suffix="_${quant_epochs}ep"
suffix="$suffix$seed_suffix"
fp_run="resnet20_fp$seed_suffix"
stages=("$@")
[ ${#stages[@]} -gt 0 ] || stages=(fp w2a2 collect)

for stage in "${stages[@]}"; do
  case "$stage" in
    fp)
      "$build/speq-train" --config configs/resnet20_fp.json --set threads="$fp_threads" --set seed="$seed" \
        --set out_dir="runs/$fp_run" ;;
    w2a2)
      for method in qat speq; do
        "$build/speq-train" --config "configs/resnet20_w2a2_$method.json" --set epochs="$quant_epochs" \
          --set seed="$seed" --set init_checkpoint="runs/$fp_run/last.safetensors" \
          --set threads=1 --set out_dir="runs/resnet20_w2a2_$method$suffix" >"runs/resnet20_w2a2_$method$suffix.log" 2>&1 &
      done
      wait
      "$build/speq-plot" "runs/$fp_run/metrics.jsonl" "runs/resnet20_w2a2_qat$suffix/metrics.jsonl" \
        "runs/resnet20_w2a2_speq$suffix/metrics.jsonl" -o "runs/resnet20_curves$suffix.svg"
      python3 results/table.py "runs/$fp_run" "runs/resnet20_w2a2_qat$suffix" "runs/resnet20_w2a2_speq$suffix" ;;
    collect)
      for run in "$fp_run" "resnet20_w2a2_qat$suffix" "resnet20_w2a2_speq$suffix"; do
        mkdir -p "results/cifar10_resnet20/$run"
        cp "runs/$run/config.json" "runs/$run/metrics.jsonl" "runs/$run/summary.json" "results/cifar10_resnet20/$run/"
        [ ! -f "runs/$run/eval_bits.jsonl" ] || cp "runs/$run/eval_bits.jsonl" "results/cifar10_resnet20/$run/"
      done
      cp "runs/resnet20_curves$suffix.svg" "results/cifar10_resnet20/curves$suffix.svg" ;;
    *) echo "cifar10_resnet20.sh: unknown stage '$stage' (fp, w2a2 or collect)" >&2; exit 2 ;;
  esac
done
