#!/usr/bin/env bash
# How good SPEQ's teacher is, next to the student, for each checkpoint given (results/README.md,
# "How good the teacher is"). Prints one Markdown row per checkpoint:
#   student (eval mode, as trained) | body activations at 8 bits (eval mode) |
#   teacher as training runs it (batch statistics, batches of the config's batch_size) at u = 0
#   (the student itself), u = 0.5 (the default draw), u = 1 (every body activation at 8 bits) |
#   the u = 0.5 teacher on running statistics (speq.teacher_bn = running)
# Usage: results/teacher_probe.sh CHECKPOINT...   Env: SPEQ_BUILD (build), DATA (data)
set -euo pipefail
cd "$(dirname "$0")/.."
build=${SPEQ_BUILD:-build}
data=${DATA:-data}
top1() { "$build/speq-eval" --checkpoint "$1" --data_dir "$data" "${@:2}" | tail -1 |
         python3 -c "import json, sys; d = json.load(sys.stdin); print('%.2f' % (100 * d.get('teacher_top1', d['top1'])))"; }
echo "| checkpoint | student | 8-bit acts, eval mode | teacher u=0 (batch stats) | u=0.5 | u=1 | u=0.5 on running stats |"
echo "|---|---|---|---|---|---|---|"
for ck in "$@"; do
  echo "| $ck | $(top1 "$ck") | $(top1 "$ck" --act-bits 8) | $(top1 "$ck" --speq-teacher --teacher-u 0) |" \
       "$(top1 "$ck" --speq-teacher --teacher-u 0.5) | $(top1 "$ck" --speq-teacher --teacher-u 1) |" \
       "$(top1 "$ck" --speq-teacher --teacher-u 0.5 --teacher-bn running) |"
done
