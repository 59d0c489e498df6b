#!/usr/bin/env bash
# Sets up what is missing (Debian packages, Fashion-MNIST), builds speq-train and runs the main
# job: a short SPEQ W2A2 training on Fashion-MNIST. First one epoch in full precision (SPEQ, like
# QAT, starts from a trained FP network), then one epoch of SPEQ at 2-bit weights and
# activations from that checkpoint. Results land in runs/fashion_mnist_fp and
# runs/fashion_mnist_w2a2_speq (metrics.jsonl, checkpoints, summary.json).
# Extra arguments are passed to both runs, e.g. --set epochs=3 or --set threads=1.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/setup-debian.sh --with-fashion-mnist
cmake -S . -B build -DSPEQ_BUILD_EXAMPLES=ON >/dev/null
cmake --build build -j"$(nproc)" --target speq_train speq_eval

./build/speq-train --config configs/fashion_mnist_fp.json --set epochs=1 "$@"
./build/speq-train --config configs/fashion_mnist_w2a2_speq.json --set epochs=1 "$@"
./build/speq-eval --checkpoint runs/fashion_mnist_w2a2_speq/last.safetensors \
  --data_dir /usr/share/datasets/fashion-mnist | tail -n 2 | head -n 1
