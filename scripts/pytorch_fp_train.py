#!/usr/bin/python3
"""Trains the plain PyTorch ResNet-20 (option A, scripts/check_in_pytorch.py) at full precision on
CIFAR-10 with the recipe of configs/resnet20_fp.json, as a reference for speq's FP run.
Needs Debian's python3-torch (runs under /usr/bin/python3).

Recipe, matched to what speq does (checked against include/speq/train/trainer.hpp,
optim/schedule.hpp, optim/sgd.hpp, io/augment.hpp, io/loader.hpp, nn/module.hpp,
nn/batch_norm.hpp, nn/models/resnet.hpp):

  data      data_batch_{1..5}.bin (50,000 images, no validation split) and test_batch.bin,
            3073-byte records; normalization (v / 255 - mean) / std with speq's
            mean (0.4914, 0.4822, 0.4465), std (0.2470, 0.2435, 0.2616), as speq's lookup table
            (computed in double, stored as float32).
  batches   128 images, a new shuffle every epoch, the last partial batch DROPPED (speq's trainer
            sets drop_last = true): 50000 // 128 = 390 steps per epoch, 80 images left out each
            epoch (different ones each epoch, since the order is reshuffled).
  augment   4-pixel zero padding in RAW pixel space (byte 0 = black, i.e. the padded value is
            (0 - mean) / std after normalization, as torchvision's RandomCrop before Normalize and
            speq's decode_image, which uses table[c][0] outside the image), a random 32x32 crop
            (offsets uniform in 0..8 each), then a horizontal flip of the crop with p = 0.5.
            Done on whole batches with tensor indexing.
  model     ResNet-20, option A shortcut; init as speq's resnet.hpp: kaiming_normal_ (fan_in,
            gain sqrt 2) for conv and fc weights, fc bias 0, BN weight 1 / bias 0 (BN momentum
            0.1, eps 1e-5, PyTorch's defaults = speq's).
  loss      cross entropy, mean over the batch, no label smoothing.
  optimizer SGD lr 0.1, momentum 0.9, nesterov, dampening 0 (speq's SGD is torch.optim.SGD's
            update). Weight decay 5e-4 on conv weights, fc weight AND fc bias; none on BatchNorm
            weight/bias (speq registers only BN's parameters with weight_decay = false; the
            PACT alphas it also skips do not exist at full precision).
  schedule  OneCycleLR per optimizer step, as speq's make_schedule calls one_cycle(lr, total):
            max_lr 0.1, total_steps = 390 * epochs (full batches only; 5850 for 15 epochs),
            pct_start 0.3, anneal cos, div_factor 25, final_div_factor 1e4, three_phase False,
            and cycle_momentum=False: speq's one_cycle schedules the learning rate only and keeps
            momentum at 0.9 (PyTorch's default would cycle momentum 0.85..0.95). The rate of
            step s is set before step s, as speq's sgd.set_lr(schedule.lr_at(step)).
  eval      after every epoch, the 10,000 test images in eval mode (running BN statistics).

Not matched bit for bit: speq's own RNG (PCG streams for shuffle, augmentation and init) is not
reproduced, so the image order, crops/flips and initial weights are different draws from the same
distributions; speq's lr is rounded to float32, PyTorch keeps it in double.

Output: a line per epoch on stdout; --out gets a JSON line per epoch (epoch, train_loss,
test_top1, lr = the rate of the epoch's last step, as speq's metrics.jsonl, wall_seconds since
the start of training including earlier evaluations, as speq's). At the end, a JSON line
{"top1", "epochs", "seconds", "images_per_s"}: seconds is the whole training wall time including
the per-epoch evaluations, images_per_s the trained images divided by it (speq's definition);
train_seconds / train_images_per_s exclude the evaluations.

Usage: scripts/pytorch_fp_train.py [--data-dir data] [--epochs 15] [--threads 1] [--seed 0]
                                   [--out FILE.jsonl] [--max-steps N]
"""
import argparse
import json
import math
import os
import sys
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from check_in_pytorch import ResNet20  # noqa: E402

MEAN = (0.4914, 0.4822, 0.4465)
STD = (0.2470, 0.2435, 0.2616)
PAD = 4


def read_cifar(folder, files):
    raw = np.concatenate([np.fromfile(os.path.join(folder, f), dtype=np.uint8).reshape(-1, 3073) for f in files])
    labels = torch.from_numpy(raw[:, 0].astype(np.int64))
    images = torch.from_numpy(np.ascontiguousarray(raw[:, 1:]).reshape(-1, 3, 32, 32))
    return images, labels


def normalization_table():
    # table[c, v] = (v / 255 - mean[c]) / std[c] in double, stored as float32 (speq's normalization_table).
    v = np.arange(256, dtype=np.float64) / 255.0
    t = (v[None, :] - np.array(MEAN)[:, None]) / np.array(STD)[:, None]
    return torch.from_numpy(t.astype(np.float32))


def normalize(images_u8, table):
    # images_u8: [B, 3, H, W] uint8 -> float32 via the per-channel lookup table.
    c = torch.arange(3).view(1, 3, 1, 1)
    return table[c, images_u8.long()]


def augment(images_u8, gen):
    """Zero-pad by 4 (raw bytes), random 32x32 crop, then flip the crop with p = 0.5; [B, 3, 32, 32] uint8."""
    b, _, h, w = images_u8.shape
    padded = F.pad(images_u8, (PAD, PAD, PAD, PAD))  # uint8 zeros = black, before normalization
    dy = torch.randint(0, 2 * PAD + 1, (b,), generator=gen)
    dx = torch.randint(0, 2 * PAD + 1, (b,), generator=gen)
    flip = torch.rand(b, generator=gen) < 0.5
    ys = dy[:, None] + torch.arange(h)[None, :]                       # [B, H]
    xs_base = torch.where(flip[:, None], torch.arange(w - 1, -1, -1)[None, :], torch.arange(w)[None, :])
    xs = dx[:, None] + xs_base                                        # [B, W]
    bi = torch.arange(b).view(b, 1, 1, 1)
    ci = torch.arange(3).view(1, 3, 1, 1)
    return padded[bi, ci, ys[:, None, :, None], xs[:, None, None, :]]


def init_like_speq(model):
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.kaiming_normal_(m.weight)  # fan_in, gain sqrt(2)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def make_optimizer(model, total_steps):
    """SGD and OneCycleLR of configs/resnet20_fp.json, set up as speq's trainer does (see above)."""
    decay, no_decay = [], []
    modules = dict(model.named_modules())
    for name, p in model.named_parameters():
        is_bn = isinstance(modules[name.rsplit(".", 1)[0]], nn.BatchNorm2d)
        (no_decay if is_bn else decay).append(p)
    optimizer = torch.optim.SGD([{"params": decay, "weight_decay": 5e-4}, {"params": no_decay, "weight_decay": 0.0}],
                                lr=0.1, momentum=0.9, nesterov=True, dampening=0.0)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=0.1, total_steps=total_steps, pct_start=0.3, anneal_strategy="cos",
        cycle_momentum=False, div_factor=25.0, final_div_factor=1e4, three_phase=False)
    return optimizer, scheduler, decay, no_decay


def evaluate(model, x, labels, memory_format, batch=500):
    model.eval()
    correct, loss_sum = 0, 0.0
    with torch.no_grad():
        for i in range(0, len(x), batch):
            logits = model(x[i:i + batch].contiguous(memory_format=memory_format))
            y = labels[i:i + batch]
            loss_sum += float(F.cross_entropy(logits, y, reduction="sum"))
            correct += int((logits.argmax(1) == y).sum())
    return correct / len(x), loss_sum / len(x)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default="data")
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None, help="JSON-lines file, one line per epoch (overwritten)")
    parser.add_argument("--max-steps", type=int, default=0,
                        help="smoke test: stop after N optimizer steps (the schedule keeps its full length), then evaluate")
    parser.add_argument("--no-channels-last", action="store_true", help="use NCHW instead of channels_last")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    memory_format = torch.contiguous_format if args.no_channels_last else torch.channels_last

    folder = args.data_dir
    if os.path.isdir(os.path.join(folder, "cifar-10-batches-bin")):
        folder = os.path.join(folder, "cifar-10-batches-bin")
    train_x, train_y = read_cifar(folder, [f"data_batch_{i}.bin" for i in range(1, 6)])
    test_u8, test_y = read_cifar(folder, ["test_batch.bin"])
    table = normalization_table()
    test_x = normalize(test_u8, table)

    model = ResNet20()
    init_like_speq(model)
    model = model.to(memory_format=memory_format)

    n = len(train_x)
    steps_per_epoch = n // args.batch_size  # drop_last, as speq's trainer
    total_steps = max(1, steps_per_epoch * args.epochs)
    optimizer, scheduler, decay, no_decay = make_optimizer(model, total_steps)
    stop_at = min(args.max_steps, total_steps) if args.max_steps > 0 else total_steps

    gen = torch.Generator().manual_seed(args.seed + 1)  # data order and augmentation
    out = open(args.out, "w") if args.out else None
    print(f"PyTorch {torch.__version__}, {args.threads} thread(s), {'NCHW' if args.no_channels_last else 'channels_last'}; "
          f"{n} train images, {steps_per_epoch} steps/epoch, {total_steps} total steps; "
          f"{sum(p.numel() for p in decay)} decayed + {sum(p.numel() for p in no_decay)} undecayed parameters",
          flush=True)

    step = 0
    images_trained = 0
    train_seconds = 0.0
    t_start = time.perf_counter()
    top1 = float("nan")
    epochs_done = 0
    for epoch in range(1, args.epochs + 1):
        if step >= stop_at:
            break
        model.train()
        t_epoch = time.perf_counter()
        perm = torch.randperm(n, generator=gen)
        loss_sum, correct, seen = 0.0, 0, 0
        lr_last = optimizer.param_groups[0]["lr"]
        for b in range(steps_per_epoch):
            if step >= stop_at:
                break
            idx = perm[b * args.batch_size:(b + 1) * args.batch_size]
            x = normalize(augment(train_x[idx], gen), table).contiguous(memory_format=memory_format)
            y = train_y[idx]
            lr_last = optimizer.param_groups[0]["lr"]
            logits = model(x)
            loss = F.cross_entropy(logits, y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            step += 1
            loss_value = float(loss)
            if not math.isfinite(loss_value):
                raise SystemExit(f"non-finite loss {loss_value} at step {step}")
            loss_sum += loss_value * len(y)
            correct += int((logits.detach().argmax(1) == y).sum())
            seen += len(y)
        train_seconds += time.perf_counter() - t_epoch
        images_trained += seen
        wall = time.perf_counter() - t_start  # before this epoch's evaluation, as speq
        top1, test_loss = evaluate(model, test_x, test_y, memory_format)
        complete = seen == steps_per_epoch * args.batch_size
        if complete:
            epochs_done = epoch
        rec = {"epoch": epoch, "complete": complete, "step": step, "lr": lr_last,
               "train_loss": loss_sum / max(seen, 1), "train_top1": correct / max(seen, 1),
               "test_top1": top1, "test_loss": test_loss, "wall_seconds": wall,
               "images_per_second": images_trained / wall if wall > 0 else 0.0}
        print(f"epoch {epoch}{'' if complete else ' (partial)'}: step {step}, lr {lr_last:.5f}, "
              f"train loss {rec['train_loss']:.4f}, train top-1 {100 * rec['train_top1']:.2f}%, "
              f"test top-1 {100 * top1:.2f}%, test loss {test_loss:.4f}, "
              f"{rec['images_per_second']:.0f} img/s, {wall:.0f} s", flush=True)
        if out:
            out.write(json.dumps(rec) + "\n")
            out.flush()

    seconds = time.perf_counter() - t_start
    final = {"top1": top1, "epochs": epochs_done, "steps": step, "seconds": seconds,
             "images_per_s": images_trained / seconds if seconds > 0 else 0.0,
             "train_seconds": train_seconds,
             "train_images_per_s": images_trained / train_seconds if train_seconds > 0 else 0.0,
             "threads": args.threads, "seed": args.seed, "torch": torch.__version__}
    print(json.dumps(final), flush=True)
    if out:
        out.close()


if __name__ == "__main__":
    main()
