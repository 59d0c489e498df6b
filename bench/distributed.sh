#!/usr/bin/env bash
# Data-parallel speed on this machine: the same global batch (128) trained by 1 process with 2
# threads, by 2 ranks with 1 thread each (mpirun), and by 2 ranks with sync_bn; FP, W2A2 QAT and
# W2A2 SPEQ ResNet-20 on CIFAR-10 (random weights: speed only). Prints one markdown row per run:
# images/s over STEPS steps (the first ones included, alike for all), from metrics.jsonl.
#
#   bench/distributed.sh [BUILD_DIR]     a build with -DSPEQ_MPI=ON (default build-mpi)
# Env: STEPS (default 100), DATA_DIR (default data). Run it on an otherwise idle machine.
set -euo pipefail
cd "$(dirname "$0")/.."
build=${1:-build-mpi}
steps=${STEPS:-100}
data_dir=${DATA_DIR:-data}
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1  # harmless when not root
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT

images_per_second() { python3 -c 'import json,sys; print("%.0f" % json.loads(open(sys.argv[1]).read().splitlines()[-1])["images_per_second"])' "$1"; }

echo "CPU: $(lscpu | sed -n 's/^Model name: *//p' | head -1), $(nproc) cores; commit $(git rev-parse --short HEAD); $steps steps of 128 images"
echo
echo "| method | 1 process x 2 threads | 2 ranks x 1 thread | 2 ranks x 1 thread, sync_bn | 2 ranks / 1 process |"
echo "|---|---|---|---|---|"
for method in fp qat speq; do
  config=configs/resnet20_w2a2_$method.json
  [ "$method" != fp ] || config=configs/resnet20_fp.json
  common=(--config "$config" --set init_checkpoint= --set max_steps="$steps" --set data_dir="$data_dir" --set log_every=1000)
  "$build/speq-train" "${common[@]}" --set threads=2 --set out_dir="$out/$method-1x2" >/dev/null 2>&1
  mpirun --oversubscribe -np 2 "$build/speq-train" "${common[@]}" --set threads=1 --set out_dir="$out/$method-2x1" >/dev/null 2>&1
  mpirun --oversubscribe -np 2 "$build/speq-train" "${common[@]}" --set threads=1 --set sync_bn=true \
    --set out_dir="$out/$method-2x1-sync" >/dev/null 2>&1
  one=$(images_per_second "$out/$method-1x2/metrics.jsonl")
  two=$(images_per_second "$out/$method-2x1/metrics.jsonl")
  sync=$(images_per_second "$out/$method-2x1-sync/metrics.jsonl")
  echo "| $method | $one | $two | $sync | $(python3 -c "print('%.2f' % ($two / $one))") |"
done
