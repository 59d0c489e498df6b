#!/usr/bin/env bash
# Sets up what is missing (Debian packages, Fashion-MNIST), builds speq's examples and runs the
# main job: a short training on Fashion-MNIST. Extra arguments go to the training program.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/setup-debian.sh --with-fashion-mnist
cmake -S . -B build -DSPEQ_BUILD_EXAMPLES=ON >/dev/null
cmake --build build -j"$(nproc)" --target quickstart
./build/examples/quickstart --data /usr/share/datasets/fashion-mnist "$@"
