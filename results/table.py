#!/usr/bin/env python3
"""Prints a Markdown table of speq-train runs from their out_dir files (summary.json, config.json,
metrics.jsonl). Usage: results/table.py RUN_DIR_OR_SUMMARY_JSON ..."""
import json
import os
import sys


def row(path):
    run = path if os.path.isdir(path) else os.path.dirname(path)
    config = json.load(open(os.path.join(run, "config.json")))
    epochs = [json.loads(line) for line in open(os.path.join(run, "metrics.jsonl")) if line.strip()]
    # A run stopped before its end has no summary.json: its last epoch stands in, marked.
    summary_path = os.path.join(run, "summary.json")
    stopped = not os.path.exists(summary_path)
    summary = json.load(open(summary_path)) if not stopped else {
        "test_top1": epochs[-1]["test_top1"], "wall_seconds": epochs[-1]["wall_seconds"]}
    rates = sorted(e["images_per_second"] for e in epochs)
    bits = "FP" if config["method"] == "fp" else f"W{config['weight_bits']}A{config['act_bits']}"
    s = config.get("speq", {})
    setting = ""
    if config["method"] == "speq":
        draw = f"u={s['u']:g} n_H={s['high_bits']}" if s["draw"] == "binary" else \
            f"uniform {s['uniform_low']}..{s['uniform_high']}"
        setting = f"{draw} T={s['temperature']:g} ce={s['ce_weight']:g} kd={s['kd_weight']:g}"
        # Keys added later: shown only when set away from their defaults.
        if s.get("kd_warmup_epochs", 0):
            setting += f" kd warm-up {s['kd_warmup_epochs']} ep"
        if s.get("teacher_bn", "batch") != "batch":
            setting += f" teacher BN {s['teacher_bn']}"
    elif config["method"] == "kd":
        k = config["kd"]
        setting = f"FP teacher, {k['loss']} T={k['temperature']:g} ce={k['ce_weight']:g} kd={k['kd_weight']:g}"
    best = max(e["test_top1"] for e in epochs)
    # How hard distillation pulls next to cross-entropy (train/speq.hpp logit_gradient_norms):
    # first and last epoch, where the run logged it.
    ratios = [e["kd_ce_grad_ratio"] for e in epochs if "kd_ce_grad_ratio" in e]
    grad_ratio = f"{ratios[0]:.2f} -> {ratios[-1]:.2f}" if ratios else ""
    epochs_text = f"{len(epochs)} of {config['epochs']} (stopped)" if stopped else str(len(epochs))
    return [os.path.basename(run.rstrip("/")), config["method"], bits, setting, epochs_text,
            f"{100 * summary['test_top1']:.2f}", f"{100 * best:.2f}",
            grad_ratio, f"{rates[len(rates) // 2]:.0f}", f"{summary['wall_seconds'] / 60:.1f}"]


header = ["run", "method", "bits", "distillation setting", "epochs", "final top-1 %", "best top-1 %",
          "KD/CE logit grad (first -> last epoch)", "median img/s", "minutes"]
rows = [row(p) for p in sys.argv[1:]]
print("| " + " | ".join(header) + " |")
print("|" + "---|" * len(header))
for r in rows:
    print("| " + " | ".join(r) + " |")
