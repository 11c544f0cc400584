"""Fused training kernels on a GPU (bf16 UNet shapes), each against its baselines and a ceiling:

1. GroupNorm + modulation + SiLU, forward + backward: the fused Triton kernels against the eager
   PyTorch reference and `torch.compile` of that reference;
2. AdamW + EMA step over ~90M parameters in a few hundred tensors: the fused Triton pass against
   `torch.optim.AdamW(fused=True)` followed by a foreach EMA (`_foreach_mul_` + `_foreach_add_`);
3. the memory-bandwidth ceiling: the bytes each operation must move, at the device-to-device copy
   bandwidth measured in the same run.

Times are medians of CUDA-event timings after warm-up, with the L2 cache flushed before each.
"""
from __future__ import annotations

import argparse
import os
import statistics
from pathlib import Path

import torch

from benchmarks import report

GROUPS = 32
# (batch, channels, side) of the blocks of a pixel-space diffusion UNet at 64 px, coarse to fine.
GN_SHAPES = [(128, 512, 8), (128, 512, 16), (64, 256, 32), (32, 128, 64), (32, 64, 64)]
EMA_DECAY = 0.999


def cuda_time(fn, repeats: int, warmup: int = 5) -> float:
    """Median seconds of fn() on the device."""
    flush = torch.empty(256 * 2**20, dtype=torch.int8, device="cuda")  # larger than any L2
    for _ in range(warmup):
        fn()
    events = []
    for _ in range(repeats):
        flush.zero_()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        events.append((start, end))
    torch.cuda.synchronize()
    return statistics.median(s.elapsed_time(e) for s, e in events) / 1e3


def copy_bandwidth(repeats: int) -> float:
    """Bytes/s of a large device-to-device copy (read + write), the ceiling for streaming kernels."""
    src = torch.empty(2**30, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    return 2 * src.numel() / cuda_time(lambda: dst.copy_(src), repeats)


def groupnorm_rows(repeats: int, bandwidth: float) -> list[dict]:
    from histogen.kernels.groupnorm_silu import group_norm_silu_triton
    from histogen.kernels.reference import groupnorm_silu_reference

    compiled = torch.compile(groupnorm_silu_reference, dynamic=False)  # one graph per shape, as in training
    rows = []
    for n, c, side in GN_SHAPES:
        for layout in (torch.contiguous_format, torch.channels_last) if side == 32 else (torch.contiguous_format,):
            x = torch.randn(n, c, side, side, device="cuda", dtype=torch.bfloat16).to(memory_format=layout)
            w, b = torch.randn(c, device="cuda", dtype=torch.bfloat16), torch.randn(c, device="cuda", dtype=torch.bfloat16)
            scale, shift = (torch.randn(n, c, device="cuda", dtype=torch.bfloat16) for _ in range(2))
            leaves = [t.requires_grad_() for t in (x, w, b, scale, shift)]
            dy = torch.randn_like(x)

            def step(fn):
                y = fn(x, GROUPS, w, b, 1e-5, scale, shift, True)
                torch.autograd.grad(y, leaves, dy)

            seconds = {name: cuda_time(lambda fn=fn: step(fn), repeats)
                       for name, fn in (("fused", group_norm_silu_triton), ("eager", groupnorm_silu_reference),
                                        ("compile", compiled))}
            # What fwd + bwd must move: read x, write y; read x and dy, write dx.
            ceiling = 5 * x.numel() * x.element_size() / bandwidth
            name = f"fused groupnorm+mod+silu fwd+bwd {n}x{c}x{side}x{side} bf16" + (
                " channels_last" if layout is torch.channels_last else "")
            rows.append({"name": name, "ms": 1e3 * seconds["fused"], "ms eager": 1e3 * seconds["eager"],
                         "ms compile": 1e3 * seconds["compile"], "x eager": seconds["eager"] / seconds["fused"],
                         "x compile": seconds["compile"] / seconds["fused"], "of ceiling": ceiling / seconds["fused"]})
    return rows


def unet_param_shapes() -> list[tuple]:
    """~90M parameters in ~330 tensors: per res-block a 3x3 conv, its bias, GroupNorm weight and
    bias and the (scale, shift) projection of the time embedding; attention at the coarsest level."""
    shapes = []
    for c, blocks in ((128, 12), (256, 12), (512, 24)):
        shapes += [(c, c, 3, 3), (c,), (c,), (c,), (2 * c, 512), (2 * c,)] * blocks
    shapes += [(512, 512)] * 32 + [(512,)] * 16
    return shapes


def make_params(dtype):
    return [torch.nn.Parameter(torch.randn(s, device="cuda", dtype=dtype) * 0.02) for s in unet_param_shapes()]


def with_grads(params):
    for p in params:
        p.grad = torch.randn_like(p) * 1e-3
    return params


def adamw_rows(repeats: int, bandwidth: float) -> tuple[list[dict], int]:
    from histogen.kernels import AdamWEMA

    hyper = dict(lr=1e-4, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01)
    rows, seconds = [], {}
    base_params = with_grads(make_params(torch.float32))
    base = torch.optim.AdamW(base_params, fused=True, **hyper)
    emas = [p.detach().clone() for p in base_params]

    def baseline():
        base.step()
        torch._foreach_mul_(emas, EMA_DECAY)
        torch._foreach_add_(emas, base_params, alpha=1 - EMA_DECAY)

    seconds["baseline"] = cuda_time(baseline, repeats)
    numel = sum(p.numel() for p in base_params)
    del base, base_params, emas
    for dtype, label in ((torch.float32, "fp32 params"), (torch.bfloat16, "bf16 params, fp32 masters")):
        opt = AdamWEMA(with_grads(make_params(dtype)), ema_decay=EMA_DECAY, **hyper)
        seconds[label] = cuda_time(opt.step, repeats)
        del opt
    # Per element: read param (or master), grad, exp_avg, exp_avg_sq, ema; write them back but the
    # grad: 36 bytes in fp32, and as many with bf16 params on fp32 masters.
    ceiling = 36 * numel / bandwidth
    rows.append({"name": "AdamW(fused=True) + foreach EMA, fp32", "ms": 1e3 * seconds["baseline"], "x baseline": 1.0,
                 "of ceiling": ceiling / seconds["baseline"]})
    for label in ("fp32 params", "bf16 params, fp32 masters"):
        rows.append({"name": f"fused AdamW+EMA, {label}", "ms": 1e3 * seconds[label],
                     "x baseline": seconds["baseline"] / seconds[label], "of ceiling": ceiling / seconds[label]})
    return rows, numel


def main(argv, work: Path, out: Path) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks kernels")
    p.add_argument("--repeats", type=int, default=30, help="timed runs per measurement (the median counts)")
    a = p.parse_args(argv)
    if not torch.cuda.is_available():
        print("kernels: this suite needs a CUDA GPU and torch sees none; nothing was measured")
        return 2
    os.environ["HISTOGEN_KERNELS"] = "triton"  # measure the kernels whatever the caller's setting
    bandwidth = copy_bandwidth(a.repeats)
    gn = groupnorm_rows(a.repeats, bandwidth)
    adamw, numel = adamw_rows(a.repeats, bandwidth)
    extra = {
        "device": torch.cuda.get_device_name(),
        "copy bandwidth GB/s": bandwidth / 1e9,
        "AdamW parameters": f"{numel / 1e6:.1f}M in {len(unet_param_shapes())} tensors",
        "goal groupnorm x eager >= 2 (worst shape)": min(r["x eager"] for r in gn),
        "goal groupnorm x compile >= 1 (worst shape)": min(r["x compile"] for r in gn),
        "goal AdamW+EMA x baseline >= 1.5 (fp32)": adamw[1]["x baseline"],
    }
    print(report.write(out, "kernels", gn + adamw, extra))
    return 0
