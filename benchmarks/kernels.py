"""Fused training kernels (bf16 on a GPU), each against its baselines and a ceiling:

1. GroupNorm + modulation + SiLU, forward + backward, on the GroupNorm shapes of the UNet of a
   preset (diffusion-64 by default, at its training batch, channels_last as training runs), the
   heaviest first (--max-shapes): the fused Triton kernels against the eager PyTorch reference
   and `torch.compile` of that reference;
2. AdamW + EMA step over that UNet's parameters: the fused Triton pass against
   `torch.optim.AdamW(fused=True)` followed by a foreach EMA (`_foreach_mul_` + `_foreach_add_`);
3. the memory-bandwidth ceiling: the bytes each operation must move, at the device-to-device copy
   bandwidth measured in the same run.

Times are medians of CUDA-event timings after warm-up, with the L2 cache flushed before each.
`--dry-run` runs the same code on the CPU in tiny sizes (the tiny preset, Triton's interpreter,
wall-clock medians, `torch.compile` with the aot_eager backend): its numbers mean nothing, it only
keeps the suite from rotting (`make gpu-check DRY_RUN=1`).
"""
from __future__ import annotations

import argparse
import os
import statistics
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import torch

from benchmarks import report

EMA_DECAY = 0.999


@dataclass(frozen=True)
class Sizes:
    """What one run measures: the UNet of `preset` (with `overrides`, --set style) at `batch` (None:
    the preset's batch), its first `max_shapes` GroupNorm shapes and `max_tensors` parameter tensors
    (None: all), `repeats` timed runs, `compile_backend` for torch.compile."""

    device: str = "cuda"
    dtype: torch.dtype = torch.bfloat16
    preset: str = "diffusion-64"
    overrides: tuple = ()
    batch: int | None = None
    max_shapes: int | None = 10  # the shapes that move the most bytes; the other calls are small
    max_tensors: int | None = None
    repeats: int = 30
    warmup: int = 5
    compile_backend: str = "inductor"


def dry_sizes() -> Sizes:
    return Sizes(device="cpu", dtype=torch.float32, preset="diffusion-tiny", overrides=("resolution=8",), batch=2,
                 max_shapes=2,
                 max_tensors=6, repeats=1, warmup=0, compile_backend="aot_eager")


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


def wall_time(fn, repeats: int, warmup: int = 1) -> float:
    """Median wall seconds of fn() on the CPU (the dry run)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def timed(fn, sizes: Sizes) -> float:
    return (cuda_time if sizes.device == "cuda" else wall_time)(fn, sizes.repeats, sizes.warmup)


def copy_bandwidth(sizes: Sizes) -> float:
    """Bytes/s of a large copy (read + write), the ceiling for streaming kernels."""
    src = torch.empty(2**30 if sizes.device == "cuda" else 2**24, dtype=torch.uint8, device=sizes.device)
    dst = torch.empty_like(src)
    return 2 * src.numel() / timed(lambda: dst.copy_(src), sizes)


def unet(sizes: Sizes) -> tuple[torch.nn.Module, int, int]:
    """The UNet of the diffusion preset (on the CPU), its resolution and training batch."""
    from histogen import config
    from histogen.run import build_task

    cfg = config.resolve(sizes.preset, list(sizes.overrides))
    task = build_task(cfg.kind, cfg.model, cfg.resolution, None)
    return task.nets[task.sample_net], cfg.resolution, cfg.train.batch_size


def groupnorm_shapes(net: torch.nn.Module, resolution: int) -> Counter:
    """(channels, height, width, groups, modulated, silu) of every GroupNormSiLU call of one
    forward pass, with how often each occurs."""
    from histogen.kernels import GroupNormSiLU

    seen = Counter()

    def hook(module, args, _out):
        x = args[0]
        seen[(x.shape[1], x.shape[2], x.shape[3], module.num_groups, len(args) > 1 and args[1] is not None,
              module.silu)] += 1

    handles = [m.register_forward_hook(hook) for m in net.modules() if isinstance(m, GroupNormSiLU)]
    before = os.environ.get("HISTOGEN_KERNELS")
    os.environ["HISTOGEN_KERNELS"] = "torch"  # shapes only: the reference path on the CPU
    try:
        with torch.no_grad():
            net(torch.randn(1, net.conv_in.in_channels, resolution, resolution), torch.rand(1))
    finally:
        for h in handles:
            h.remove()
        if before is None:
            del os.environ["HISTOGEN_KERNELS"]
        else:
            os.environ["HISTOGEN_KERNELS"] = before
    return seen


def groupnorm_rows(sizes: Sizes, bandwidth: float) -> tuple[list[dict], str]:
    from histogen.kernels.groupnorm_silu import group_norm_silu_triton
    from histogen.kernels.reference import groupnorm_silu_reference

    net, resolution, batch = unet(sizes)
    n = sizes.batch or batch
    shapes = groupnorm_shapes(net, resolution)
    # Heaviest first: the shapes that move most of one forward's GroupNorm bytes (calls x elements).
    order = sorted(shapes.items(), key=lambda kv: -kv[1] * kv[0][0] * kv[0][1] * kv[0][2])
    measured = order[: sizes.max_shapes]
    share = sum(v * k[0] * k[1] * k[2] for k, v in measured) / sum(v * k[0] * k[1] * k[2] for k, v in order)
    # one graph per shape, as in training
    compiled = torch.compile(groupnorm_silu_reference, dynamic=False, backend=sizes.compile_backend)
    dev, dt = sizes.device, sizes.dtype
    rows = []
    for (c, h, w, groups, modulated, silu), count in measured:
        # Training runs channels_last (benchmarks train): the UNet's activations arrive in that layout.
        x = torch.randn(n, c, h, w, device=dev, dtype=dt).to(memory_format=torch.channels_last)
        weight, bias = torch.randn(c, device=dev, dtype=dt), torch.randn(c, device=dev, dtype=dt)
        scale, shift = (torch.randn(n, c, device=dev, dtype=dt) if modulated else None for _ in range(2))
        leaves = [t.requires_grad_() for t in (x, weight, bias, scale, shift) if t is not None]
        dy = torch.randn_like(x)

        def step(fn):
            y = fn(x, groups, weight, bias, 1e-5, scale, shift, silu)
            torch.autograd.grad(y, leaves, dy)

        seconds = {name: timed(lambda fn=fn: step(fn), sizes)
                   for name, fn in (("fused", group_norm_silu_triton), ("eager", groupnorm_silu_reference),
                                    ("compile", compiled))}
        # What fwd + bwd must move: read x, write y; read x and dy, write dx.
        ceiling = 5 * x.numel() * x.element_size() / bandwidth
        what = "groupnorm" + ("+mod" if modulated else "") + ("+silu" if silu else "")
        rows.append({"name": f"{what} fwd+bwd {n}x{c}x{h}x{w} g{groups}", "calls per UNet forward": count,
                     "ms": 1e3 * seconds["fused"], "ms eager": 1e3 * seconds["eager"],
                     "ms compile": 1e3 * seconds["compile"],
                     "x eager": seconds["eager"] / seconds["fused"], "x compile": seconds["compile"] / seconds["fused"],
                     "of ceiling": ceiling / seconds["fused"]})
    return rows, f"{len(measured)} of {len(shapes)} shapes, {100 * share:.0f}% of the GroupNorm bytes of a forward"


def weighted_total(rows: list[dict]) -> dict:
    """The GroupNorm time of one UNet forward+backward over the measured shapes: each shape's time times its calls."""
    total = {k: sum(r[k] * r["calls per UNet forward"] for r in rows) for k in ("ms", "ms eager", "ms compile")}
    return {"name": "all GroupNorms of one UNet fwd+bwd (measured shapes)",
            "calls per UNet forward": sum(r["calls per UNet forward"] for r in rows),
            **total, "x eager": total["ms eager"] / total["ms"], "x compile": total["ms compile"] / total["ms"]}


def make_params(shapes, sizes: Sizes, dtype):
    return [torch.nn.Parameter(torch.randn(s, device=sizes.device, dtype=dtype) * 0.02) for s in shapes]


def with_grads(params):
    for p in params:
        p.grad = torch.randn_like(p) * 1e-3
    return params


def baseline_seconds(shapes, sizes: Sizes, hyper: dict) -> float:
    """torch.optim.AdamW(fused=True) then a foreach EMA, fp32 (its tensors are freed on return)."""
    params = with_grads(make_params(shapes, sizes, torch.float32))
    opt = torch.optim.AdamW(params, fused=True, **hyper)
    emas = [p.detach().clone() for p in params]

    def step():
        opt.step()
        torch._foreach_mul_(emas, EMA_DECAY)
        torch._foreach_add_(emas, params, alpha=1 - EMA_DECAY)

    return timed(step, sizes)


def adamw_rows(sizes: Sizes, bandwidth: float) -> tuple[list[dict], str]:
    from histogen.kernels import AdamWEMA

    shapes = [tuple(p.shape) for p in unet(sizes)[0].parameters()][: sizes.max_tensors]
    hyper = dict(lr=1e-4, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01)
    rows, seconds = [], {"baseline": baseline_seconds(shapes, sizes, hyper)}
    numel = sum(torch.Size(s).numel() for s in shapes)
    for dtype, label in ((torch.float32, "fp32 params"), (torch.bfloat16, "bf16 params, fp32 masters")):
        opt = AdamWEMA(with_grads(make_params(shapes, sizes, dtype)), ema_decay=EMA_DECAY, **hyper)
        seconds[label] = timed(opt.step, sizes)
        del opt
    # Per element: read param (or master), grad, exp_avg, exp_avg_sq, ema; write them back but the
    # grad: 36 bytes in fp32, and as many with bf16 params on fp32 masters.
    ceiling = 36 * numel / bandwidth
    rows.append({"name": "AdamW(fused=True) + foreach EMA, fp32", "ms": 1e3 * seconds["baseline"], "x baseline": 1.0,
                 "of ceiling": ceiling / seconds["baseline"]})
    for label in ("fp32 params", "bf16 params, fp32 masters"):
        rows.append({"name": f"fused AdamW+EMA, {label}", "ms": 1e3 * seconds[label],
                     "x baseline": seconds["baseline"] / seconds[label], "of ceiling": ceiling / seconds[label]})
    return rows, f"{numel / 1e6:.1f}M in {len(shapes)} tensors ({sizes.preset} UNet)"


def main(argv, work: Path, out: Path) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks kernels")
    p.add_argument("--repeats", type=int, default=30, help="timed runs per measurement (the median counts)")
    p.add_argument("--preset", default="diffusion-64", help="diffusion preset whose UNet gives the shapes")
    p.add_argument("--max-shapes", type=int, default=10,
                   help="GroupNorm shapes measured, heaviest first (each compiles)")
    p.add_argument("--dry-run", action="store_true",
                   help="tiny sizes on the CPU, Triton interpreted: checks the code, measures nothing")
    a = p.parse_args(argv)
    if not report.can_run("kernels", a.dry_run):
        return 2
    if a.dry_run:
        sizes = dry_sizes()
    else:
        sizes = Sizes(preset=a.preset, max_shapes=a.max_shapes, repeats=a.repeats)
    os.environ["HISTOGEN_KERNELS"] = "triton"  # measure the kernels whatever the caller's setting
    bandwidth = copy_bandwidth(sizes)
    gn, coverage = groupnorm_rows(sizes, bandwidth)
    extra = {
        "device": report.device_name(sizes.device),
        "copy bandwidth GB/s": bandwidth / 1e9,
        "GroupNorm shapes": coverage,
        "goal groupnorm x eager >= 2 (worst shape)": min(r["x eager"] for r in gn),
        "goal groupnorm x compile >= 1 (worst shape)": min(r["x compile"] for r in gn),
        "groupnorm of ceiling (worst shape)": min(r["of ceiling"] for r in gn),
    }
    gn.append(weighted_total(gn))
    report.write(out, "kernels", gn, extra)  # kept if the AdamW part fails or runs out of time
    adamw, params = adamw_rows(sizes, bandwidth)
    extra.update({"AdamW parameters": params, "goal AdamW+EMA x baseline >= 1.5 (fp32)": adamw[1]["x baseline"]})
    print(report.write(out, "kernels", gn + adamw, extra))
    return 0
