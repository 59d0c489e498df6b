#!/usr/bin/env bash
# Builds the libFuzzer harnesses of tests/fuzz/ (clang, -fsanitize=fuzzer,address,undefined) and
# runs each for a bounded time on top of a generated seed corpus. Prints, per harness, the
# executions run and whether it found anything; exits non-zero if any harness crashed.
#
# Usage: tests/fuzz/run.sh [SECONDS_PER_HARNESS=60] [WORK_DIR=${TMPDIR:-/tmp}/speq-fuzz] [HARNESS...]
# Needs Debian's clang and libclang-rt-14-dev (the fuzzer and sanitizer runtimes).
# Crashing inputs are kept as WORK_DIR/crashes/<harness>-crash-*; rerun one with
#   WORK_DIR/bin/<harness> WORK_DIR/crashes/<harness>-crash-...
# The corpus grows across runs in WORK_DIR/corpus/<harness> (delete it to start over); inputs
# that once crashed a harness are kept in tests/fuzz/regressions/<harness>/ and always run.
set -euo pipefail
cd "$(dirname "$0")/../.."
seconds=${1:-60}
work=${2:-${TMPDIR:-/tmp}/speq-fuzz}
shift $(( $# > 2 ? 2 : $# ))
harnesses=("$@")
[ ${#harnesses[@]} -gt 0 ] || harnesses=(safetensors config idx cifar)

cxx=${FUZZ_CXX:-}
if [ -z "$cxx" ]; then
  for c in clang++-14 clang++; do command -v "$c" >/dev/null && { cxx=$c; break; }; done
fi
[ -n "$cxx" ] || { echo "fuzz: clang++ not found (apt-get install clang libclang-rt-14-dev)" >&2; exit 2; }

common=(-std=c++17 -g -O1 -fno-omit-frame-pointer -Iinclude -Itests/fuzz -I/usr/include/eigen3 -DNDEBUG)
fuzz_flags=(-fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined)
mkdir -p "$work/bin" "$work/crashes"

echo "== fuzz: seeds =="
"$cxx" "${common[@]}" tests/fuzz/make_seeds.cpp -o "$work/bin/make_seeds" -lz
rm -rf "$work/seeds"
"$work/bin/make_seeds" "$work/seeds"
cp configs/*.json "$work/seeds/config/" 2>/dev/null || true

export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1}
failed=0
summary=""
for h in "${harnesses[@]}"; do
  echo "== fuzz: building $h =="
  "$cxx" "${common[@]}" "${fuzz_flags[@]}" "tests/fuzz/fuzz_$h.cpp" -o "$work/bin/$h" -lz
  mkdir -p "$work/corpus/$h"
  args=(-max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1
        -artifact_prefix="$work/crashes/$h-")
  case "$h" in
    cifar) args+=(-max_len=13000) ;;           # room for a 4-record file (4 x 3073 bytes)
    idx) args+=(-max_len=8192) ;;
    config) args+=(-dict="$work/seeds/config.dict") ;;
    safetensors) args+=(-dict="$work/seeds/safetensors.dict") ;;
  esac
  echo "== fuzz: running $h for ${seconds}s =="
  log="$work/$h.log"
  corpora=("$work/corpus/$h" "$work/seeds/$h")
  # Inputs that once crashed a harness stay in the corpus, so a regression shows up at once.
  [ -d "tests/fuzz/regressions/$h" ] && corpora+=("tests/fuzz/regressions/$h")
  if "$work/bin/$h" "${args[@]}" "${corpora[@]}" >"$log" 2>&1; then
    result="ok"
  else
    result="CRASH (see $log and $work/crashes/)"
    failed=1
    grep -E "ERROR|runtime error|SUMMARY|Test unit written" "$log" | head -20 || true
  fi
  execs=$(grep -oE "stat::number_of_executed_units: +[0-9]+" "$log" | grep -oE "[0-9]+$" || echo "?")
  rate=$(grep -oE "stat::average_exec_per_sec: +[0-9]+" "$log" | grep -oE "[0-9]+$" || echo "?")
  cov=$(grep -oE "cov: [0-9]+" "$log" | tail -1 | grep -oE "[0-9]+" || echo "?")
  corpus=$(find "$work/corpus/$h" -type f | wc -l)
  line=$(printf "%-12s %12s execs  %8s/s  coverage %6s  corpus %6s  %s" "$h" "$execs" "$rate" "$cov" "$corpus" "$result")
  echo "$line"
  summary+="$line"$'\n'
done
echo "== fuzz summary (${seconds}s each) =="
printf "%s" "$summary"
exit $failed
