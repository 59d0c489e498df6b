#!/usr/bin/env bash
# The full-length runs of issue 17 (results/README.md, "Full length"): a 200-epoch FP ResNet-20,
# then 120-epoch QAT and SPEQ from that one published FP network, paired by seed. A run takes
# hours, so it spans sessions (and machines); this script carries it across them.
#
#   results/full_length.sh list           the runs, and where each one stands
#   results/full_length.sh run NAME       start NAME, or continue it exactly where it stopped
#   results/full_length.sh publish NAME   (done by run at the end) model -> models/, curves -> results/
#
# `run` resumes from runs/NAME/ or, on a fresh clone, from results/in-progress/NAME/ (the resume
# checkpoint committed at the end of a session). Stop it with SIGTERM (or Ctrl-C): the trainer
# finishes its step and writes last.safetensors, then this script copies last.safetensors and
# metrics.jsonl to results/in-progress/NAME/ and appends the segment it ran (machine, commit,
# epochs, wall time) to results/in-progress/NAME/segments.jsonl: commit that folder before the
# machine goes away. When the run has finished, `publish` writes the model-only network to
# models/NAME.safetensors, evaluates it with speq-eval, adds its row to models/models.tsv, keeps
# config, metrics, summary and segments in results/full_length/NAME/, and removes the
# in-progress folder.
# Env: SPEQ_BUILD (default build), DATA_DIR (default data).
set -euo pipefail
cd "$(dirname "$0")/.."
build=${SPEQ_BUILD:-build}
data_dir=${DATA_DIR:-data}

# NAME -> config and overrides. out_dir is always runs/NAME.
run_args() {
  case "$1" in
    resnet20_fp_200ep_seed1) echo "configs/resnet20_fp_200ep.json" ;;
    resnet20_w2a2_qat_120ep_seed1) echo "configs/resnet20_w2a2_qat_120ep.json" ;;
    resnet20_w2a2_speq_120ep_seed1) echo "configs/resnet20_w2a2_speq_120ep.json" ;;
    resnet20_w2a2_qat_120ep_seed2) echo "configs/resnet20_w2a2_qat_120ep.json --set seed=2" ;;
    resnet20_w2a2_speq_120ep_seed2) echo "configs/resnet20_w2a2_speq_120ep.json --set seed=2" ;;
    resnet20_w4a4_qat_120ep_seed1) echo "configs/resnet20_w4a4_qat_120ep.json" ;;
    resnet20_w4a4_speq_120ep_seed1) echo "configs/resnet20_w4a4_speq_120ep.json" ;;
    resnet20_w2a2_qat_60ep_seed1) echo "configs/resnet20_w2a2_qat_120ep.json --set epochs=60" ;;  # the curve flattening?
    *) return 1 ;;
  esac
}
all_runs=(resnet20_fp_200ep_seed1 resnet20_w2a2_qat_120ep_seed1 resnet20_w2a2_speq_120ep_seed1
          resnet20_w2a2_qat_120ep_seed2 resnet20_w2a2_speq_120ep_seed2 resnet20_w4a4_qat_120ep_seed1
          resnet20_w4a4_speq_120ep_seed1 resnet20_w2a2_qat_60ep_seed1)

die() { echo "full_length.sh: error: $*" >&2; exit 1; }

# "AMD EPYC (family 26, model 2; avx512_vnni)": the hypervisor often hides the product name.
machine() {
  local name family model simd
  name=$(lscpu | sed -n 's/^Model name: *//p' | head -1)
  family=$(lscpu | sed -n 's/^CPU family: *//p' | head -1)
  model=$(lscpu | sed -n 's/^Model: *//p' | head -1)
  simd=avx2
  grep -qw avx512f /proc/cpuinfo && simd=avx512
  grep -qw avx512_vnni /proc/cpuinfo && simd=avx512_vnni
  echo "$name (family $family, model $model; $simd; $(nproc) cores)"
}

# checkpoint_meta FILE KEY: a metadata value of a checkpoint (0 when there is no file).
checkpoint_meta() {
  [ -f "$1" ] || { echo 0; return; }
  python3 -c 'import json,struct,sys; f=open(sys.argv[1],"rb"); n=struct.unpack("<Q",f.read(8))[0]; print(json.loads(f.read(n))["__metadata__"][sys.argv[2]])' "$1" "$2"
}
checkpoint_step() { checkpoint_meta "$1" step; }

# Complete epochs recorded in a metrics.jsonl.
epochs_done() {
  [ -f "$1" ] || { echo 0; return; }
  python3 -c 'import json,sys; print(max([0]+[json.loads(l)["epoch"] for l in open(sys.argv[1]) if l.strip() and json.loads(l)["complete"]]))' "$1"
}

run() {
  local name=$1 args dir keep
  args=$(run_args "$name") || die "unknown run '$name' (see: results/full_length.sh list)"
  dir=runs/$name keep=results/in-progress/$name
  [ ! -f "$dir/summary.json" ] || [ -f "$keep/last.safetensors" ] || die "$name has finished; publish it"
  if [ "$(checkpoint_step "$keep/last.safetensors")" -gt "$(checkpoint_step "$dir/last.safetensors")" ]; then
    echo "full_length.sh: $name continues from $keep (step $(checkpoint_step "$keep/last.safetensors"))"
    mkdir -p "$dir"
    cp "$keep/last.safetensors" "$keep/metrics.jsonl" "$dir/"
    rm -f "$dir/summary.json"
  fi
  local resume=() started from commit
  [ ! -f "$dir/last.safetensors" ] || resume=(--resume)
  started=$(date -u +%FT%TZ) from=$(epochs_done "$dir/metrics.jsonl")
  # The code the binary was built from is not known here: the checkout's commit at the start
  # ("-dirty": with uncommitted changes); build the binary from it before running.
  commit=$(git describe --always --dirty)
  mkdir -p "$dir"
  # shellcheck disable=SC2086
  "$build/speq-train" --config $args --set out_dir="$dir" --set data_dir="$data_dir" "${resume[@]}" &
  local trainer=$! rc=0
  trap 'kill -TERM "$trainer" 2>/dev/null || true' TERM INT
  while kill -0 "$trainer" 2>/dev/null; do wait "$trainer" && rc=0 || rc=$?; done
  trap - TERM INT

  mkdir -p "$keep"
  local wall
  wall=$(python3 -c 'import sys; print(round(float(sys.argv[1]), 1))' "$(checkpoint_meta "$dir/last.safetensors" wall_seconds)")
  printf '{"started": "%s", "stopped": "%s", "machine": "%s", "commit": "%s", "epochs_from": %s, "epochs_to": %s, "wall_seconds_total": %s, "exit": %s}\n' \
    "$started" "$(date -u +%FT%TZ)" "$(machine)" "$commit" "$from" \
    "$(epochs_done "$dir/metrics.jsonl")" "$wall" "$rc" >>"$keep/segments.jsonl"
  if [ -f "$dir/summary.json" ] && [ "$rc" = 0 ]; then
    publish "$name"
  else
    cp "$dir/last.safetensors" "$dir/metrics.jsonl" "$keep/"
    echo "full_length.sh: $name stopped (exit $rc) at epoch $(epochs_done "$dir/metrics.jsonl"); commit $keep/"
  fi
}

publish() {
  local name=$1 dir keep model top1
  run_args "$name" >/dev/null || die "unknown run '$name'"
  dir=runs/$name keep=results/in-progress/$name model=models/$name.safetensors
  [ -f "$dir/summary.json" ] || die "$name has not finished ($dir/summary.json is missing)"
  "$build/speq-export" --checkpoint "$dir/last.safetensors" --out "$model"
  top1=$("$build/speq-eval" --checkpoint "$model" --data_dir "$data_dir" | tail -1 |
         python3 -c 'import json,sys; print("%.2f" % (100 * json.load(sys.stdin)["top1"]))')
  mkdir -p "results/full_length/$name"
  cp "$dir/config.json" "$dir/metrics.jsonl" "$dir/summary.json" "results/full_length/$name/"
  [ ! -f "$keep/segments.jsonl" ] || cp "$keep/segments.jsonl" "results/full_length/$name/"
  rm -rf "$keep"
  python3 - "$name" "$dir/config.json" "$top1" "results/full_length/$name" <<'EOF'
import json, os, sys
name, config_path, top1, kept = sys.argv[1:]
c = json.load(open(config_path))
segments = [json.loads(l) for l in open(os.path.join(kept, "segments.jsonl"))] if os.path.exists(os.path.join(kept, "segments.jsonl")) else []
summary = json.load(open(os.path.join(kept, "summary.json")))
machines = "; ".join(sorted({s["machine"] for s in segments})) or "unknown"
row = [f"{name}.safetensors", c["method"], str(c["weight_bits"]), str(c["act_bits"]), str(c["seed"]), str(summary["epochs_done"]),
       top1, "%.0f" % summary["wall_seconds"], machines]
path = "models/models.tsv"
header = "file\tmethod\tweight_bits\tact_bits\tseed\tepochs\ttop1\twall_seconds\tmachines\n"
rows = [l for l in open(path)][1:] if os.path.exists(path) else []
rows = [l for l in rows if not l.startswith(row[0] + "\t")] + ["\t".join(row) + "\n"]
with open(path + ".tmp", "w") as f:
    f.write(header + "".join(rows))
os.replace(path + ".tmp", path)
EOF
  echo "full_length.sh: published $model (test top-1 $top1%); commit models/ and results/full_length/$name/"
}

list() {
  local name dir keep state
  for name in "${all_runs[@]}"; do
    dir=runs/$name keep=results/in-progress/$name
    if [ -f "models/$name.safetensors" ]; then state="published"
    elif [ -f "$dir/summary.json" ]; then state="finished, not published"
    elif [ -f "$dir/last.safetensors" ] || [ -f "$keep/last.safetensors" ]; then
      state="in progress: epoch $(epochs_done "$dir/metrics.jsonl") here, $(epochs_done "$keep/metrics.jsonl") committed"
    else state="not started"; fi
    printf '%-34s %s\n' "$name" "$state"
  done
}

case "${1:-}" in
  list) list ;;
  run) [ $# = 2 ] || die "usage: results/full_length.sh run NAME"; run "$2" ;;
  publish) [ $# = 2 ] || die "usage: results/full_length.sh publish NAME"; publish "$2" ;;
  *) sed -n '2,20s/^# \{0,1\}//p' "$0"; exit 2 ;;
esac
