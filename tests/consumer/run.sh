#!/usr/bin/env bash
# Installs speq from the source tree into a temporary prefix, then configures, builds and runs
# the consumer project against it with find_package(speq CONFIG REQUIRED).
# Usage: run.sh SOURCE_DIR WORK_DIR
set -euo pipefail
src=$1
work=$2
rm -rf "$work"
cmake -S "$src" -B "$work/speq-build" -DSPEQ_BUILD_TESTS=OFF -DSPEQ_BUILD_EXAMPLES=OFF \
  -DSPEQ_BUILD_BENCH=OFF -DCMAKE_INSTALL_PREFIX="$work/prefix" >/dev/null
cmake --install "$work/speq-build" >/dev/null
cmake -S "$src/tests/consumer" -B "$work/consumer-build" -DCMAKE_PREFIX_PATH="$work/prefix" >/dev/null
cmake --build "$work/consumer-build" >/dev/null
"$work/consumer-build/consumer"
