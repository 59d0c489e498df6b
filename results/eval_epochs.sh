#!/usr/bin/env bash
# Test top-1 of every per-epoch checkpoint of W2A2 runs at several activation precisions: the
# student's (2 bits) and the SPEQ teacher's high precision (8 bits, every layer at once: the
# best teacher the draw can produce). Shows how far the teacher is ahead of the student during
# training, for QAT and SPEQ alike.
# Usage: results/eval_epochs.sh RUN_DIR...        (e.g. runs/resnet20_w2a2_speq_15ep)
# Writes RUN_DIR/eval_bits.jsonl: one line {"epoch": E, "act_bits": B, "top1": T} per checkpoint
# and precision. Env: SPEQ_BUILD (default build), DATA_DIR (default data), BITS (default "2 8"),
# EPOCHS (which epochs, e.g. "3 6 9 12 15"; default every checkpoint found).
set -euo pipefail
cd "$(dirname "$0")/.."
build=${SPEQ_BUILD:-build}
data_dir=${DATA_DIR:-data}
bits_list=${BITS:-2 8}
epochs_wanted=${EPOCHS:-}
[ $# -gt 0 ] || { echo "usage: results/eval_epochs.sh RUN_DIR..." >&2; exit 2; }
for run in "$@"; do
  out="$run/eval_bits.jsonl"
  tmp="$out.tmp"
  : >"$tmp"
  for name in $(ls "$run" | grep '^epoch_[0-9]*\.safetensors$' | sort -t_ -k2 -n); do
    ckpt="$run/$name"
    epoch=${name#epoch_}
    epoch=${epoch%.safetensors}
    if [ -n "$epochs_wanted" ] && [[ " $epochs_wanted " != *" $epoch "* ]]; then continue; fi
    for bits in $bits_list; do
      top1=$("$build/speq-eval" --checkpoint "$ckpt" --data_dir "$data_dir" --act-bits "$bits" | tail -n 1 |
        python3 -c 'import json, sys; print(json.load(sys.stdin)["top1"])')
      echo "{\"epoch\": $epoch, \"act_bits\": $bits, \"top1\": $top1}" | tee -a "$tmp"
    done
  done
  mv "$tmp" "$out"
done
