#!/usr/bin/python3
"""Do speq and PyTorch take the same training steps? Runs the first STEPS optimizer steps of
configs/resnet20_fp.json in speq (scripts/step_trace.cpp: training images in file order, no
augmentation, no shuffling) and then in PyTorch from speq's initial weights on the same batches
(the plain ResNet-20 of scripts/check_in_pytorch.py, the optimizer and schedule of
scripts/pytorch_fp_train.py), and compares the losses step by step and every tensor at the end:
weights, batch norm running statistics and momentum buffers.

With nothing random left, the two differ only by float rounding (different summation orders in
the convolutions and reductions), which grows slowly over the steps. A mismatch in the recipe
(learning rate, weight decay, momentum, batch norm) shows at once as a relative difference far
above that.

Needs Debian's python3-torch (runs under /usr/bin/python3) and g++ with the project's
dependencies (compiles step_trace.cpp into OUT_DIR unless --trace-binary is given).

Usage: scripts/pytorch_step_check.py [--data-dir data] [--steps 20] [--out-dir runs/step_check]
                                     [--config configs/resnet20_fp.json] [--threads 2]
Last line: a JSON object {"steps", "max_loss_rel_diff", "max_tensor_rel_diff", "worst_tensor", "ok"}.
"""
import argparse
import json
import os
import subprocess
import sys

import numpy as np
import torch
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from check_in_pytorch import ResNet20, read_speq_checkpoint  # noqa: E402
from pytorch_fp_train import make_optimizer, normalization_table, normalize, read_cifar  # noqa: E402

MOMENTUM_PREFIX = "optimizer.momentum."  # train/checkpoint.hpp's kMomentumPrefix
# speq may land at most this many times farther from the float64 run than PyTorch's float32 run
# does. Rounding alone gives ratios near 1 (0.5-2 measured); a recipe difference gives 10 and more.
MAX_RATIO = 3.0


def build_trace(binary):
    root = os.path.dirname(HERE)
    command = ["g++", "-std=c++17", "-O2", "-DNDEBUG", "-march=native", "-fopenmp", "-I" + os.path.join(root, "include"),
               "-isystem", "/usr/include/eigen3", os.path.join(HERE, "step_trace.cpp"), "-o", binary, "-lz"]
    print("building", binary, flush=True)
    subprocess.run(command, check=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default="data")
    parser.add_argument("--config", default=os.path.join(os.path.dirname(HERE), "configs", "resnet20_fp.json"))
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out-dir", default="runs/step_check")
    parser.add_argument("--trace-binary", default=None, help="a built step_trace (default: build one in OUT_DIR)")
    args = parser.parse_args()

    os.makedirs(args.out_dir, exist_ok=True)
    binary = args.trace_binary or os.path.join(args.out_dir, "step_trace")
    if args.trace_binary is None:
        build_trace(binary)
    subprocess.run([binary, args.config, str(args.steps), args.out_dir, "--set", f"data_dir={args.data_dir}",
                    "--set", f"threads={args.threads}"], check=True)
    speq_steps = [json.loads(line) for line in open(os.path.join(args.out_dir, "steps.jsonl"))]
    speq_final, _ = read_speq_checkpoint(os.path.join(args.out_dir, "final.safetensors"))
    init, _ = read_speq_checkpoint(os.path.join(args.out_dir, "init.safetensors"))
    # The PACT clips (alpha) exist at full precision but are not used: they must not move.
    for name in [k for k in speq_final if k == "alpha" or k.endswith(".alpha")]:
        moved = np.abs(speq_final.pop(name) - init.pop(name)).max()
        momentum = np.abs(speq_final.pop(MOMENTUM_PREFIX + name, np.zeros(1))).max()
        if moved != 0 or momentum != 0:
            raise SystemExit(f"pytorch_step_check: the unused {name} changed by {moved} (momentum {momentum})")

    torch.set_num_threads(args.threads)
    folder = args.data_dir
    if os.path.isdir(os.path.join(folder, "cifar-10-batches-bin")):
        folder = os.path.join(folder, "cifar-10-batches-bin")
    images, labels = read_cifar(folder, ["data_batch_1.bin"])
    total_steps = 390 * json.load(open(args.config))["epochs"]
    # The yardstick: PyTorch in float64 is the exact answer for these purposes; PyTorch in float32
    # shows how far float32 rounding alone moves a run from it.
    runs = {dtype: run_pytorch(init, images, labels, len(speq_steps), total_steps, dtype)
            for dtype in (torch.float64, torch.float32)}
    exact, rounded = runs[torch.float64], runs[torch.float32]

    print("step  lr          loss: speq      torch f32   torch f64")
    for s, record in enumerate(speq_steps):
        e = exact["losses"][s]
        print(f"{s + 1:4d}  {record['lr']:.6f}   {record['loss']:.6f}   {rounded['losses'][s]:.6f}   {e:.6f}")
        if abs(record["lr"] - exact["lrs"][s]) > 1e-6 * exact["lrs"][s]:
            raise SystemExit(f"pytorch_step_check: step {s + 1}: speq's lr {record['lr']} is not PyTorch's {exact['lrs'][s]}")

    # Whole-model distance from the float64 run, per kind of tensor: sqrt(sum of squared
    # differences) over sqrt(sum of squares).
    kinds = {"weights": lambda n: not n.startswith(MOMENTUM_PREFIX) and "running" not in n,
             "running statistics": lambda n: "running" in n,
             "momentum buffers": lambda n: n.startswith(MOMENTUM_PREFIX)}
    worst_ratio = 0.0
    for kind, belongs in kinds.items():
        names = [n for n in exact["state"] if belongs(n)]
        ref = np.concatenate([exact["state"][n].ravel() for n in names])
        d_speq = np.linalg.norm(np.concatenate([speq_final[n].ravel() for n in names]) - ref) / np.linalg.norm(ref)
        d_f32 = np.linalg.norm(np.concatenate([rounded["state"][n].ravel() for n in names]) - ref) / np.linalg.norm(ref)
        worst_ratio = max(worst_ratio, d_speq / d_f32)
        print(f"{kind:20s} distance from torch f64: speq {d_speq:.2e}, torch f32 {d_f32:.2e} (ratio {d_speq / d_f32:.2f})")
    loss_speq = max(abs(r["loss"] - e) for r, e in zip(speq_steps, exact["losses"]))
    loss_f32 = max(abs(r - e) for r, e in zip(rounded["losses"], exact["losses"]))
    print(f"losses: largest distance from torch f64: speq {loss_speq:.2e}, torch f32 {loss_f32:.2e}")
    ok = bool(worst_ratio <= MAX_RATIO)
    print(json.dumps({"steps": len(speq_steps), "worst_distance_ratio": worst_ratio,
                      "loss_distance_speq": loss_speq, "loss_distance_torch_f32": loss_f32, "ok": ok}))
    sys.exit(0 if ok else 1)


def run_pytorch(init, images, labels, steps, total_steps, dtype, batch=128):
    """The same steps in PyTorch at `dtype`: losses, learning rates and the final state as float64."""
    model = ResNet20()
    model.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in init.items() if not k.startswith(MOMENTUM_PREFIX)})
    model = model.to(dtype)
    model.train()
    optimizer, scheduler, _, _ = make_optimizer(model, total_steps)
    table = normalization_table().to(dtype)
    losses, lrs = [], []
    for s in range(steps):
        x = normalize(images[s * batch:(s + 1) * batch], table)
        y = labels[s * batch:(s + 1) * batch]
        lrs.append(optimizer.param_groups[0]["lr"])
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        losses.append(float(loss))
    state = {k: v.detach().double().numpy() for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
    for name, p in model.named_parameters():
        state[MOMENTUM_PREFIX + name] = optimizer.state[p]["momentum_buffer"].double().numpy()
    return {"losses": losses, "lrs": lrs, "state": state}


if __name__ == "__main__":
    main()
