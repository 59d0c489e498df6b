#!/usr/bin/env bash
# Sets up what is missing, builds speq's tests and runs the whole suite.
# Usage: scripts/test.sh [build-dir]   (default: build)
# Environment: SPEQ_CMAKE_ARGS adds CMake arguments (CI uses it for the sanitizer build).
set -euo pipefail
cd "$(dirname "$0")/.."
build=${1:-build}

bash scripts/setup-debian.sh
# shellcheck disable=SC2086
cmake -S . -B "$build" -DSPEQ_BUILD_TESTS=ON ${SPEQ_CMAKE_ARGS:-} >/dev/null
cmake --build "$build" -j"$(nproc)"
ctest --test-dir "$build" --output-on-failure -j"$(nproc)"
