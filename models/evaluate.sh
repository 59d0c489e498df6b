#!/usr/bin/env bash
# Evaluates every published network in models/ on the CIFAR-10 test set and compares its top-1
# with the one models/models.tsv (and so models/README.md) gives for it.
#
#   models/evaluate.sh [--build DIR] [--data_dir DIR] [--tolerance POINTS]
#
# --data_dir: the folder holding cifar-10-batches-bin/ (default data; data/fetch_cifar10.sh puts
# it there). Evaluation is deterministic on one machine; on another CPU the float sums may be
# ordered differently (SIMD width), which can flip the odd test image, so a difference up to
# --tolerance (default 0.05 points: 5 of 10,000 images) passes. Exits 1 if any model differs more
# or cannot be evaluated.
set -euo pipefail
cd "$(dirname "$0")/.."
build=build data_dir=data tolerance=0.05
while [ $# -gt 0 ]; do
  case "$1" in
    --build) build=$2; shift 2 ;;
    --data_dir|--data-dir) data_dir=$2; shift 2 ;;
    --tolerance) tolerance=$2; shift 2 ;;
    *) sed -n '2,12s/^# \{0,1\}//p' "$0"; exit 2 ;;
  esac
done
table=models/models.tsv
[ -x "$build/speq-eval" ] || { echo "models/evaluate.sh: $build/speq-eval is not built" >&2; exit 1; }
[ -d "$data_dir/cifar-10-batches-bin" ] || { echo "models/evaluate.sh: no $data_dir/cifar-10-batches-bin (data/fetch_cifar10.sh)" >&2; exit 1; }

checked=0 failed=0
if [ -f "$table" ]; then
  while IFS=$'\t' read -r file method wbits abits seed epochs want rest; do
    [ "$file" != file ] || continue  # the header
    if ! got=$("$build/speq-eval" --checkpoint "models/$file" --data_dir "$data_dir" 2>&1 | tail -1 |
               python3 -c 'import json,sys; print("%.2f" % (100 * json.load(sys.stdin)["top1"]))' 2>/dev/null); then
      echo "FAIL  $file: speq-eval did not evaluate it"; failed=$((failed + 1)); continue
    fi
    verdict=$(python3 -c 'import sys; g,w,t=map(float,sys.argv[1:]); print("ok" if abs(g-w) <= t + 1e-9 else "FAIL")' "$got" "$want" "$tolerance")
    printf '%-4s  %-44s %s W%sA%s seed %s, %s epochs: %s%% (table %s%%)\n' "$verdict" "$file" "$method" "$wbits" "$abits" "$seed" "$epochs" "$got" "$want"
    checked=$((checked + 1))
    [ "$verdict" = ok ] || failed=$((failed + 1))
  done <"$table"
fi
echo "models/evaluate.sh: $checked published model(s) evaluated, $failed differ from $table"
[ "$failed" = 0 ]
