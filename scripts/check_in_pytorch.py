#!/usr/bin/python3
"""Loads a full-precision speq ResNet-20 checkpoint into a plain PyTorch ResNet-20 (option A, the
layout of the common CIFAR code, state_dict names as in speq) and prints its CIFAR-10 test top-1,
to compare with speq-eval: the same number means the checkpoint maps onto PyTorch one to one.
Needs Debian's python3-torch (runs under /usr/bin/python3). Reads safetensors with json + numpy
only (docs/checkpoint-format.md).

Usage: scripts/check_in_pytorch.py CHECKPOINT DATA_DIR [--images N]
"""
import argparse
import json
import os
import struct

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F


def read_speq_checkpoint(path):
    with open(path, "rb") as f:
        blob = f.read()
    (header_len,) = struct.unpack("<Q", blob[:8])
    header = json.loads(blob[8:8 + header_len])
    metadata = header.pop("__metadata__", {})
    tensors = {}
    for name, entry in header.items():
        begin, end = entry["data_offsets"]
        array = np.frombuffer(blob, dtype="<f4", count=(end - begin) // 4, offset=8 + header_len + begin)
        tensors[name] = array.reshape(entry["shape"])
    return tensors, metadata


class BasicBlock(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.pad = (cout - cin) // 2 if stride != 1 or cin != cout else None

    def forward(self, x):
        h = F.relu(self.bn1(self.conv1(x)))
        h = self.bn2(self.conv2(h))
        shortcut = x if self.pad is None else F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.pad, self.pad))
        return F.relu(h + shortcut)


class ResNet20(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        cin = 16
        for stage, (width, stride) in enumerate(((16, 1), (32, 2), (64, 2)), start=1):
            blocks = []
            for b in range(3):
                blocks.append(BasicBlock(cin, width, stride if b == 0 else 1))
                cin = width
            setattr(self, f"layer{stage}", nn.Sequential(*blocks))
        self.fc = nn.Linear(64, 10)

    def forward(self, x):
        h = F.relu(self.bn1(self.conv1(x)))
        h = self.layer3(self.layer2(self.layer1(h)))
        return self.fc(F.adaptive_avg_pool2d(h, 1).flatten(1))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint")
    parser.add_argument("data_dir")
    parser.add_argument("--images", type=int, default=10000)
    args = parser.parse_args()
    torch.set_num_threads(1)

    tensors, meta = read_speq_checkpoint(args.checkpoint)
    config = json.loads(meta["config"])
    if config["weight_bits"] != 32 or config["act_bits"] != 32:
        raise SystemExit(f"{args.checkpoint}: W{config['weight_bits']}A{config['act_bits']}; this check is for FP checkpoints")
    # PACT clips (alpha) are unused at full precision; momentum buffers are not model state.
    state = {k: torch.from_numpy(v.copy()) for k, v in tensors.items()
             if not k.startswith("optimizer.") and not k.endswith(".alpha")}
    model = ResNet20()
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert not unexpected, unexpected
    assert all(k.endswith("num_batches_tracked") for k in missing), missing
    model.eval()

    folder = args.data_dir
    if os.path.isdir(os.path.join(folder, "cifar-10-batches-bin")):
        folder = os.path.join(folder, "cifar-10-batches-bin")
    raw = np.fromfile(os.path.join(folder, "test_batch.bin"), dtype=np.uint8).reshape(-1, 3073)[:args.images]
    labels = torch.from_numpy(raw[:, 0].astype(np.int64))
    pixels = raw[:, 1:].reshape(-1, 3, 32, 32).astype(np.float64) / 255.0
    # speq's CIFAR-10 normalization (io/augment.hpp, cifar10_normalization).
    mean = np.array([0.4914, 0.4822, 0.4465])
    std = np.array([0.2470, 0.2435, 0.2616])
    x = torch.from_numpy(((pixels - mean[None, :, None, None]) / std[None, :, None, None]).astype(np.float32))
    with torch.no_grad():
        correct = sum(int((model(x[i:i + 500]).argmax(1) == labels[i:i + 500]).sum()) for i in range(0, len(x), 500))
    top1 = correct / len(x)
    print(f"PyTorch {torch.__version__}: test top-1 {100 * top1:.2f}% on {len(x)} images")
    print(json.dumps({"top1": top1, "images": len(x), "checkpoint": args.checkpoint}))


if __name__ == "__main__":
    main()
