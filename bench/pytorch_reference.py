#!/usr/bin/python3
"""The PyTorch reference for speq_bench: the same ResNet-20 steps and ops, in PyTorch on the CPU.

    /usr/bin/python3 bench/pytorch_reference.py [--threads N] [--batch N] [--all-batches] [--quick]
                                                [--only REGEX] [--config JSON] [--no-search]

Prints one JSON object on stdout shaped like speq_bench's ("ops", "steps", "machine"), progress on
stderr. Written the way a PyTorch user who cares about speed would write it, and it looks for the
fastest of a few such configurations per step before measuring (--no-search / --config fix them):
  - memory format: channels_last or contiguous (oneDNN convolutions either way);
  - fake quantization: "function" (a torch.autograd.Function per quantizer: one clamp/round pass
    forward, one masked pass backward) or "detach" (the usual x + (q(x) - x).detach() trick: a
    chain of unfused elementwise ops);
  - inference: eager under torch.inference_mode, or TorchScript trace + freeze +
    optimize_for_inference ("frozen": the weights, and so their fake quantization, become constants).
The glibc malloc settings of issue 4 (MALLOC_MMAP_THRESHOLD_ etc.) are environment variables:
bench/compare sets them for this process. Debian's python3-torch runs under /usr/bin/python3.

Same model and quantization as speq_bench: ResNet-20 option A; W2A2 with the first conv, the fc
and the fc's input at 8 bits; weights symmetric mid-rise per output channel, straight-through
gradient inside the clip threshold. The threshold: max|w| per channel by default (the quantizer a
PyTorch user writes; it does LESS work than speq's min_l2, so the comparison favours PyTorch), or
with --weight-scale min_l2 speq's own search (32-point grid + golden-section refinement of the 3
best), vectorized over channels; PACT activations (learnable alpha, straight-through rounding);
SPEQ = student forward+backward + teacher forward under no_grad with each 2-bit activation
raised to 8 bits with probability 0.5, loss CE + (1 - cos(softmax(z_s), p_t)). SGD: lr 0.01,
momentum 0.9, Nesterov, weight decay 5e-4 except BN parameters and alphas, foreach.
"""
import argparse
import ctypes
import json
import os
import re
import resource
import statistics
import sys
import time
import warnings

import torch
import torch.nn as nn
import torch.nn.functional as F

FP = 32


def log(msg):
    print(f"[pytorch_reference] {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------- fake quantization


class PactFunction(torch.autograd.Function):
    """PACT: y = round(clamp(x, 0, a) / s) * s, s = a / (2^b - 1); STE through round.
    dx = dy * [0 < x < a],  da = sum(dy * [x >= a])."""

    @staticmethod
    def forward(ctx, x, alpha, bits):
        a = float(alpha)
        levels = float(2 ** bits - 1)
        y = torch.clamp(x, 0.0, a).mul_(levels / a).round_().mul_(a / levels)
        ctx.save_for_backward(x)
        ctx.a = a
        return y

    @staticmethod
    def backward(ctx, dy):
        (x,) = ctx.saved_tensors
        dx = torch.where((x > 0) & (x < ctx.a), dy, 0.0)
        dalpha = torch.where(x >= ctx.a, dy, 0.0).sum().reshape(1)
        return dx, dalpha, None


def pact_detach(x, alpha, bits):
    """PACT by the detach trick: clip with alpha's gradient, STE rounding."""
    levels = 2 ** bits - 1
    y = torch.minimum(F.relu(x), alpha)
    s = alpha.detach() / levels
    return y + (torch.round(y / s) * s - y).detach()


def pact_inference(x, alpha, bits):
    a, levels = float(alpha), float(2 ** bits - 1)
    return torch.clamp(x, 0.0, a).mul_(levels / a).round_().mul_(a / levels)


def mid_rise(w, t, bits):
    """Symmetric mid-rise quantization of w [K, R] with thresholds t [..., K, 1] (levels +-(c + 1/2) s)."""
    half = 2 ** (bits - 1)
    s = t / (half - 0.5)
    v = w / s
    a = torch.floor(v.abs())
    c = torch.where(v >= 0, a, -a - 1).clamp_(-half, half - 1)
    return (c + 0.5) * s


def min_l2_thresholds(w2, bits):
    """Per-row threshold minimizing sum (w - q(w))^2, vectorized over rows: the error at 32 grid
    points max|w| * k/32, then 14 golden-section steps around each of the 3 best (speq's method)."""
    grid, starts, refine = 32, 3, 14
    top = w2.abs().amax(1, keepdim=True)  # [K, 1]
    ks = torch.arange(1, grid + 1, dtype=w2.dtype).view(grid, 1, 1)
    cand = top * ks / grid  # [32, K, 1]
    err = (w2 - mid_rise(w2, cand, bits)).square_().sum(-1)  # [32, K]
    best_k = err.topk(starts, dim=0, largest=False).indices + 1  # [3, K], k in 1..32
    kf = best_k.to(w2.dtype).unsqueeze(-1)  # [3, K, 1]
    lo = top * (kf - 1).clamp(min=0) / grid
    lo = torch.where(lo <= 0, 0.5 * top / grid, lo)
    hi = top * (kf + 1).clamp(max=grid) / grid
    best_t = top * kf / grid
    best_e = err.gather(0, best_k - 1).unsqueeze(-1)
    r = 0.5 * (5 ** 0.5 - 1)

    def evaluate(t):
        return (w2 - mid_rise(w2, t, bits)).square_().sum(-1, keepdim=True)

    c = hi - r * (hi - lo)
    d = lo + r * (hi - lo)
    ec, ed = evaluate(c), evaluate(d)
    for t, e in ((c, ec), (d, ed)):
        better = e < best_e
        best_t, best_e = torch.where(better, t, best_t), torch.where(better, e, best_e)
    for _ in range(refine):
        left = ec < ed  # keep [lo, d]
        hi = torch.where(left, d, hi)
        lo = torch.where(left, lo, c)
        new_c = hi - r * (hi - lo)
        new_d = lo + r * (hi - lo)
        c, d = torch.where(left, new_c, d), torch.where(left, c, new_d)
        probe = torch.where(left, c, d)  # the one new point of each search
        e = evaluate(probe)
        ec, ed = torch.where(left, e, ed), torch.where(left, ec, e)
        better = e < best_e
        best_t, best_e = torch.where(better, probe, best_t), torch.where(better, e, best_e)
    j = best_e.argmin(0, keepdim=True)  # [1, K, 1]
    t = best_t.gather(0, j).squeeze(0)
    e = best_e.gather(0, j).squeeze(0)
    return torch.where(e < err[-1].unsqueeze(-1) * (1 - 1e-5), t, top)  # [K, 1]


WEIGHT_SCALE = "max_abs"  # or "min_l2" (--weight-scale)


def weight_thresholds(w2, bits):
    """Per-row clip threshold T of w2 [K, R] -> [K, 1]."""
    if WEIGHT_SCALE == "min_l2":
        return min_l2_thresholds(w2, bits)
    return w2.abs().amax(1, keepdim=True)


class WeightQuantFunction(torch.autograd.Function):
    """Per-channel symmetric weight quantization; STE: dw = dy * [|w| <= T] (max_abs: dw = dy)."""

    @staticmethod
    def forward(ctx, w, bits):
        w2 = w.reshape(w.shape[0], -1)
        t = weight_thresholds(w2, bits)
        ctx.clips = WEIGHT_SCALE != "max_abs"
        if ctx.clips:
            ctx.save_for_backward(w2.abs() <= t)
        return mid_rise(w2, t, bits).reshape(w.shape)

    @staticmethod
    def backward(ctx, dy):
        if not ctx.clips:
            return dy, None
        (inside,) = ctx.saved_tensors
        return dy * inside.reshape(dy.shape), None


def weight_quant_detach(w, bits):
    w2 = w.reshape(w.shape[0], -1)
    with torch.no_grad():
        t = weight_thresholds(w2, bits)
    wc = torch.clamp(w2, -t, t) if WEIGHT_SCALE != "max_abs" else w2
    return (wc + (mid_rise(wc, t, bits) - wc).detach()).reshape(w.shape)


def weight_quant_inference(w, bits):
    w2 = w.reshape(w.shape[0], -1)
    return mid_rise(w2, weight_thresholds(w2, bits), bits).reshape(w.shape)


FAKE_QUANT = "function"  # or "detach"; set per configuration


def fake_pact(x, alpha, bits):
    if not torch.is_grad_enabled():
        return pact_inference(x, alpha, bits)
    if FAKE_QUANT == "function":
        return PactFunction.apply(x, alpha, bits)
    return pact_detach(x, alpha, bits)


def fake_weight(w, bits):
    if not torch.is_grad_enabled():
        return weight_quant_inference(w, bits)
    if FAKE_QUANT == "function":
        return WeightQuantFunction.apply(w, bits)
    return weight_quant_detach(w, bits)


# ---------------------------------------------------------------- ResNet-20, option A


class QConv2d(nn.Conv2d):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.bits = FP

    def forward(self, x):
        w = self.weight if self.bits == FP else fake_weight(self.weight, self.bits)
        return F.conv2d(x, w, self.bias, self.stride, self.padding)


class QLinear(nn.Linear):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.bits = FP

    def forward(self, x):
        w = self.weight if self.bits == FP else fake_weight(self.weight, self.bits)
        return F.linear(x, w, self.bias)


class Act(nn.Module):
    """ReLU at full precision, PACT at 1..8 bits."""

    def __init__(self):
        super().__init__()
        self.bits = FP
        self.alpha = nn.Parameter(torch.tensor([2.0]))

    def forward(self, x):
        return F.relu(x) if self.bits == FP else fake_pact(x, self.alpha, self.bits)


class BasicBlock(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = QConv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.act1 = Act()
        self.conv2 = QConv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.act2 = Act()
        self.pad = (cout - cin) // 2 if stride != 1 or cin != cout else None

    def forward(self, x):
        h = self.act1(self.bn1(self.conv1(x)))
        h = self.bn2(self.conv2(h))
        sc = x if self.pad is None else F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.pad, self.pad))
        return self.act2(h + sc)


class ResNet20(nn.Module):
    def __init__(self, classes=10):
        super().__init__()
        self.conv1 = QConv2d(3, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.act = Act()
        blocks, cin = [], 16
        for width, stride in ((16, 1), (32, 2), (64, 2)):
            for b in range(3):
                blocks.append(BasicBlock(cin, width, stride if b == 0 else 1))
                cin = width
        self.blocks = nn.Sequential(*blocks)
        self.fc = QLinear(64, classes)
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight)

    def forward(self, x):
        h = self.blocks(self.act(self.bn1(self.conv1(x))))
        return self.fc(h.mean((2, 3)))

    def acts(self):
        return [m for m in self.modules() if isinstance(m, Act)]


def configure_w2a2(model):
    """speq's configure_quantization policy: body W2A2, first conv / fc / fc input at 8 bits."""
    layers = [m for m in model.modules() if isinstance(m, (QConv2d, QLinear))]
    for i, m in enumerate(layers):
        m.bits = 8 if i in (0, len(layers) - 1) else 2
    acts = model.acts()
    for i, a in enumerate(acts):
        a.bits = 8 if i == len(acts) - 1 else 2


def make_sgd(model):
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (no_decay if name.endswith("alpha") or ".bn" in name or name.startswith("bn") else decay).append(p)
    groups = [{"params": decay, "weight_decay": 5e-4}, {"params": no_decay, "weight_decay": 0.0}]
    try:
        return torch.optim.SGD(groups, lr=0.01, momentum=0.9, nesterov=True, foreach=True)
    except TypeError:  # older torch: no foreach argument
        return torch.optim.SGD(groups, lr=0.01, momentum=0.9, nesterov=True)


# ---------------------------------------------------------------- measuring


def median(v):
    return statistics.median(v) if v else 0.0


def rss_reset():
    """malloc_trim, then restart the peak-RSS counter (Linux: '5' in /proc/self/clear_refs)."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def rss_mib():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    return 0.0


def peak_rss_mib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


STEPS = ("fp_infer", "w2a2_infer", "fp_train", "qat_train", "speq_train")


class StepRunner:
    """One step type at one batch size in one configuration, ready to run."""

    def __init__(self, kind, batch, cfg):
        global FAKE_QUANT
        FAKE_QUANT = cfg.get("fake_quant", "function")
        torch.manual_seed(2024)
        self.kind, self.batch, self.cfg = kind, batch, cfg
        fmt = torch.channels_last if cfg["channels_last"] else torch.contiguous_format
        model = ResNet20()
        if kind in ("w2a2_infer", "qat_train", "speq_train"):
            configure_w2a2(model)
        model = model.to(memory_format=fmt)
        self.x = torch.randn(batch, 3, 32, 32).contiguous(memory_format=fmt)
        self.y = torch.randint(0, 10, (batch,))
        self.model = model
        self.gen = torch.Generator().manual_seed(99)
        if kind.endswith("_infer"):
            model.eval()
            if cfg.get("inference") == "frozen":
                with torch.no_grad():
                    traced = torch.jit.trace(model, self.x, check_trace=False)
                    frozen = torch.jit.freeze(traced)
                    try:
                        frozen = torch.jit.optimize_for_inference(frozen)
                    except Exception as e:  # noqa: BLE001 (keep the frozen module)
                        log(f"optimize_for_inference failed ({e}); using the frozen module")
                self.model = frozen
        else:
            model.train()
            self.sgd = make_sgd(model)
            self.acts = model.acts()
            self.bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]

    def teacher_probs(self):
        """SPEQ teacher: same weights, 2-bit activations raised to 8 bits with p = 0.5, no grad,
        batch statistics without touching the running statistics."""
        saved = [a.bits for a in self.acts]
        draws = torch.rand(len(self.acts), generator=self.gen)
        for a, u in zip(self.acts, draws.tolist()):
            if a.bits == 2 and u < 0.5:
                a.bits = 8
        momenta = [bn.momentum for bn in self.bns]
        for bn in self.bns:
            bn.momentum = 0.0
        try:
            with torch.no_grad():
                return F.softmax(self.model(self.x), dim=1)
        finally:
            for a, b in zip(self.acts, saved):
                a.bits = b
            for bn, m in zip(self.bns, momenta):
                bn.momentum = m

    def step(self):
        if self.kind.endswith("_infer"):
            with torch.inference_mode():
                self.model(self.x)
            return
        self.sgd.zero_grad(set_to_none=True)
        logits = self.model(self.x)
        loss = F.cross_entropy(logits, self.y)
        if self.kind == "speq_train":
            p_t = self.teacher_probs()
            loss = loss + (1.0 - F.cosine_similarity(F.softmax(logits, dim=1), p_t, dim=1)).mean()
        loss.backward()
        self.sgd.step()

    def time(self, warmup, reps):
        for _ in range(warmup):
            self.step()
        t = []
        for _ in range(reps):
            t0 = time.perf_counter()
            self.step()
            t.append(time.perf_counter() - t0)
        return t


def candidate_configs(kind):
    out = []
    for cl in (True, False):
        if kind.endswith("_infer"):
            for inf in ("frozen", "eager"):
                out.append({"channels_last": cl, "inference": inf})
        elif kind == "fp_train":
            out.append({"channels_last": cl})
        else:
            for fq in ("function", "detach"):
                out.append({"channels_last": cl, "fake_quant": fq})
    return out


def search(kind, batch, quick):
    """The fastest configuration for this step: a short timing of each candidate."""
    best, best_t, tried = None, float("inf"), []
    for cfg in candidate_configs(kind):
        runner = StepRunner(kind, batch, cfg)
        infer = kind.endswith("_infer")
        t = median(runner.time(2 if infer else 1, (4 if infer else 2) if quick else (6 if infer else 2)))
        tried.append({"config": cfg, "images_per_s": batch / t})
        log(f"  search {kind} b{batch} {cfg}: {batch / t:.1f} images/s")
        if t < best_t:
            best, best_t = cfg, t
        del runner
    return best, tried


def measure_step(kind, batch, cfg, quick):
    runner = StepRunner(kind, batch, cfg)
    infer = kind.endswith("_infer")
    warmup = 2  # the first step creates oneDNN's primitives
    reps = (3 if quick else 5) * (2 if infer else 1)
    for _ in range(warmup):
        runner.step()
    reset = rss_reset()
    before = rss_mib()
    t = runner.time(0, reps)
    s = median(t)
    return {
        "images_per_s": batch / s,
        "ms": s * 1e3,
        "ms_min": min(t) * 1e3,
        "reps": reps,
        "peak_rss_mib": peak_rss_mib(),
        "rss_before_mib": before,
        "peak_increase_mib": peak_rss_mib() - before,
        "peak_since_process_start": not reset,
        "config": cfg,
    }


# ---------------------------------------------------------------- per-op


def op_cases(N, cfg):
    fmt = torch.channels_last if cfg.get("channels_last") else torch.contiguous_format
    g = torch.Generator().manual_seed(1234)

    def rnd(*shape, grad=False, std=1.0, mf=True):
        t = torch.randn(*shape, generator=g) * std
        if mf and len(shape) == 4:
            t = t.contiguous(memory_format=fmt)
        return t.requires_grad_(grad)

    cases = []
    convs = [("conv_3_16_32x32", 3, 16, 32, 1, False), ("conv_16_16_32x32", 16, 16, 32, 1, True),
             ("conv_16_32_32x32_s2", 16, 32, 32, 2, True), ("conv_32_32_16x16", 32, 32, 16, 1, True),
             ("conv_32_64_16x16_s2", 32, 64, 16, 2, True), ("conv_64_64_8x8", 64, 64, 8, 1, True)]
    for name, C, K, H, s, xg in convs:
        x, w = rnd(N, C, H, H, grad=xg), rnd(K, C, 3, 3, grad=True, std=0.1)
        Ho = (H + 2 - 3) // s + 1
        flops = 2.0 * N * K * C * 9 * Ho * Ho
        cases.append((name, lambda x=x, w=w, s=s: F.conv2d(x, w, None, s, 1), [x], flops, (2 if xg else 1) * flops))
    stages = (("16x32x32", (N, 16, 32, 32)), ("32x16x16", (N, 32, 16, 16)), ("64x8x8", (N, 64, 8, 8)))
    for sname, shape in stages:
        x = rnd(*shape, grad=True)
        C = shape[1]
        gamma, beta = torch.ones(C, requires_grad=True), torch.zeros(C, requires_grad=True)
        rm, rv = torch.zeros(C), torch.ones(C)
        cases.append((f"batch_norm_{sname}", lambda x=x, gamma=gamma, beta=beta, rm=rm, rv=rv:
                      F.batch_norm(x, rm, rv, gamma, beta, True, 0.1, 1e-5), [x], 0, 0))
        alpha = torch.tensor([2.0], requires_grad=True)
        cases.append((f"pact_a2_{sname}", lambda x=x, alpha=alpha: fake_pact(x, alpha, 2), [x], 0, 0))
    x, y = rnd(*stages[0][1], grad=True), rnd(*stages[0][1], grad=True)
    cases.append(("relu_16x32x32", lambda x=x: F.relu(x), [x], 0, 0))
    cases.append(("add_16x32x32", lambda x=x, y=y: x + y, [x, y], 0, 0))
    for sname, shape in stages[:2]:
        x = rnd(*shape, grad=True)
        p = shape[1] // 2
        cases.append((f"shortcut_a_{sname}", lambda x=x, p=p: F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, p, p)), [x], 0, 0))
    x = rnd(*stages[2][1], grad=True)
    cases.append(("global_avg_pool", lambda x=x: x.mean((2, 3)), [x], 0, 0))
    x, w, b = rnd(N, 64, grad=True), rnd(10, 64, grad=True, std=0.1), torch.zeros(10, requires_grad=True)
    cases.append(("linear_64_10", lambda x=x, w=w, b=b: F.linear(x, w, b), [x], 2.0 * N * 640, 4.0 * N * 640))
    for name, shape, bits in (("wquant_w8_16x3x3x3", (16, 3, 3, 3), 8), ("wquant_w2_16x16x3x3", (16, 16, 3, 3), 2),
                              ("wquant_w2_32x16x3x3", (32, 16, 3, 3), 2), ("wquant_w2_32x32x3x3", (32, 32, 3, 3), 2),
                              ("wquant_w2_64x32x3x3", (64, 32, 3, 3), 2), ("wquant_w2_64x64x3x3", (64, 64, 3, 3), 2),
                              ("wquant_w8_10x64", (10, 64), 8)):
        w = rnd(*shape, grad=True, std=0.1, mf=False)
        cases.append((name, lambda w=w, bits=bits: fake_weight(w, bits), [], 0, 0))
    logits = rnd(N, 10, grad=True)
    labels = torch.randint(0, 10, (N,), generator=g)
    cases.append(("softmax_cross_entropy", lambda: F.cross_entropy(logits, labels), [logits], 0, 0))
    teacher = F.softmax(torch.randn(N, 10, generator=g), dim=1)
    cases.append(("cosine_loss", lambda: (1.0 - F.cosine_similarity(F.softmax(logits, dim=1), teacher, dim=1)).mean(),
                  [logits], 0, 0))
    return cases


def measure_op(fn, activations, flops_f, flops_b, warmup, reps, peak):
    fwd = []
    for i in range(warmup + reps):
        t0 = time.perf_counter()
        out = fn()
        dt = time.perf_counter() - t0
        del out
        if i >= warmup:
            fwd.append(dt)
    out = fn()
    seed = torch.randn_like(out)  # same memory format as the output
    bwd = []
    for i in range(warmup + reps):
        for a in activations:
            a.grad = None
        out = fn()
        t0 = time.perf_counter()
        out.backward(seed)
        dt = time.perf_counter() - t0
        if i >= warmup:
            bwd.append(dt)
    j = {"fwd_ms": median(fwd) * 1e3, "fwd_ms_min": min(fwd) * 1e3,
         "bwd_ms": median(bwd) * 1e3, "bwd_ms_min": min(bwd) * 1e3}
    if flops_f:
        j["fwd_gflops"] = flops_f / median(fwd) / 1e9
        j["bwd_gflops"] = flops_b / median(bwd) / 1e9
        if peak:
            j["fwd_peak_frac"] = j["fwd_gflops"] / peak
            j["bwd_peak_frac"] = j["bwd_gflops"] / peak
    return j


def gemm_gflops(n, reps):
    a, b = torch.randn(n, n), torch.randn(n, n)
    c = a @ b
    t = []
    for _ in range(reps):
        t0 = time.perf_counter()
        torch.mm(a, b, out=c)
        t.append(time.perf_counter() - t0)
    return 2.0 * n ** 3 / median(t) / 1e9


# ---------------------------------------------------------------- main


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (default: torch's)")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--all-batches", action="store_true", help="steps at batch 32, 128 and 256")
    ap.add_argument("--quick", action="store_true", help="fewer repetitions")
    ap.add_argument("--only", default="", help="regex over measurement names (JSON keys)")
    ap.add_argument("--no-search", action="store_true",
                    help="do not search: use --config, or channels_last + function + frozen")
    ap.add_argument("--weight-scale", choices=("max_abs", "min_l2"), default="max_abs",
                    help="weight clip threshold: max_abs (default: what a PyTorch user would write; "
                         "cheaper than speq's min_l2) or min_l2 (speq's search, vectorized: like for like)")
    ap.add_argument("--config", default="",
                    help='JSON {step: config} fixing the configuration per step (as printed in "chosen")')
    args = ap.parse_args()
    global FAKE_QUANT, WEIGHT_SCALE
    WEIGHT_SCALE = args.weight_scale
    warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)

    if args.threads > 0:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    only = re.compile(args.only) if args.only else None

    def selected(name):
        return only is None or bool(only.search(name))

    started = time.perf_counter()
    out = {"program": "pytorch_reference",
           "config": {"threads": threads, "batch": args.batch, "all_batches": args.all_batches, "quick": args.quick,
                      "only": args.only, "model": "resnet20", "weight_scale": args.weight_scale, "shortcut": "A", "torch": torch.__version__,
                      "mkldnn": torch.backends.mkldnn.is_available() and torch.backends.mkldnn.enabled,
                      "cpu_capability": torch.backends.cpu.get_cpu_capability()
                      if hasattr(torch.backends, "cpu") and hasattr(torch.backends.cpu, "get_cpu_capability")
                      else re.search(r"CPU capability usage: (\S+)", torch.__config__.show()).group(1),
                      "malloc_env": {k: v for k, v in os.environ.items() if k.startswith("MALLOC_")}},
           "machine": {"load_average_start": list(os.getloadavg())}}
    fixed = json.loads(args.config) if args.config else {}

    with torch.no_grad():
        out["machine"]["torch_mm_1024_gflops"] = gemm_gflops(1024, 3 if args.quick else 7)

    batches = (32, 128, 256) if args.all_batches else (args.batch,)
    steps, chosen, searched = {}, {}, {}
    for kind in STEPS:
        for b in batches:
            name = f"{kind}_b{b}"
            if not selected(name):
                continue
            if kind in fixed:
                cfg = fixed[kind]
            elif args.no_search:
                cfg = {"channels_last": True, "fake_quant": "function", "inference": "frozen"}
            else:
                log(f"searching the fastest configuration for {name}")
                cfg, tried = search(kind, b, args.quick)
                searched[name] = tried
            chosen.setdefault(kind, cfg)
            log(f"step {name} with {cfg}")
            steps.setdefault(kind, {})[str(b)] = measure_step(kind, b, cfg, args.quick)
    out["steps"] = steps
    out["chosen"] = chosen
    out["search"] = searched

    # Per-op, in the configuration of the SPEQ step (the step this comparison cares most about).
    op_cfg = chosen.get("speq_train") or fixed.get("speq_train") or {"channels_last": True, "fake_quant": "function"}
    FAKE_QUANT = op_cfg.get("fake_quant", "function")
    ops = {}
    warmup, reps = (1, 3) if args.quick else (2, 7)
    for name, fn, acts, ff, fb in op_cases(args.batch, op_cfg):
        if not selected(name):
            continue
        log(f"op {name}")
        ops[name] = measure_op(fn, acts, ff, fb, warmup, reps, 0.0)
    out["ops"] = ops
    out["ops_config"] = op_cfg
    out["machine"]["load_average_end"] = list(os.getloadavg())
    out["seconds"] = time.perf_counter() - started
    print(json.dumps(out, indent=1, sort_keys=True))


if __name__ == "__main__":
    main()
