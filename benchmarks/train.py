"""One training step of the real presets, as histogen.train runs it: on a GPU, the fused Triton
kernels against eager PyTorch and against `torch.compile` (bf16 autocast, channels_last); with
`--cpu`, the CPU path's settings side by side (histogen.compute).

GPU variants (HISTOGEN_KERNELS decides the GroupNorm+SiLU and AdamW+EMA implementation):
- fused:   the Triton kernels, eager modules;
- eager:   the PyTorch references, eager modules;
- compile: the PyTorch references, every network through `torch.compile`.

CPU variants (`--cpu`, diffusion-64-cpu at batch 16, the threads histogen.compute sets): fp32 NCHW
(the loop before bf16 autocast was allowed on the CPU: the baseline), channels_last, bf16 autocast,
both, both under torch.compile. The ceiling: the step's FLOPs (torch's flop counter) at the bf16
matmul rate this CPU reaches on a large square product in the same run.

Each variant builds the task and its AdamWEMA optimizers as a run does (histogen.run.build), feeds
one fixed batch of the preset's size (per-sample seeds, as training draws them), warms up, then
times `steps` training steps (each ends in a host read of the loss, so wall time is device time).
The GAN is timed on steps without its lazy R1 penalty (1 step in 16 of gan-128 has it).
A torch.profiler table of the fused steps' top kernels goes to --profile.

`--dry-run`: the tiny presets on the CPU, Triton interpreted, torch.compile with the aot_eager
backend; it checks the code and measures nothing.
"""
from __future__ import annotations

import argparse
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from benchmarks import report



@dataclass(frozen=True)
class Variant:
    kernels: str  # HISTOGEN_KERNELS: triton | torch
    bf16: bool = True
    channels_last: bool = True
    compile: bool = False


VARIANTS = {"fused": Variant("triton"), "eager": Variant("torch"), "compile": Variant("torch", compile=True)}
CPU_VARIANTS = {"fp32": Variant("torch", bf16=False, channels_last=False),
                "fp32, channels_last": Variant("torch", bf16=False),
                "bf16": Variant("torch", channels_last=False),
                "bf16, channels_last": Variant("torch"),
                "bf16, channels_last, compile": Variant("torch", compile=True)}


@dataclass(frozen=True)
class Case:
    """One model kind to step: its preset, extra --set overrides and batch (None: the preset's)."""

    label: str
    preset: str
    overrides: tuple = ()
    batch: int | None = None


REAL = (Case("diffusion", "diffusion-64"), Case("gan", "gan-128"))
CPU = (Case("diffusion", "diffusion-64-cpu", batch=16),)
# 8 px: Triton's interpreter pays per program, and a GroupNorm launch has one per (sample, group, tile).
DRY = (Case("diffusion", "diffusion-tiny", ("model.channel_mult=[1]", "resolution=8"), batch=2),
       Case("gan", "gan-tiny", ("resolution=8",), batch=2))


@dataclass(frozen=True)
class Plan:
    device: str
    warmup: int
    steps: int
    compile_backend: str
    profile_steps: int
    profiled: str  # the variant whose steps are profiled
    device_bf16: bool = False  # a CPU plan: the variants' bf16 autocast runs (else fp32)
    flops: bool = False  # count each step's FLOPs (the CPU ceiling)


def build(case: Case, device: torch.device, comp, variant: Variant, plan: Plan):
    """The task, its optimizers, the nets as a step calls them, and a batch on `device`."""
    from histogen import config
    from histogen.run import build as build_run

    cfg = config.resolve(case.preset, list(case.overrides))
    torch.manual_seed(0)
    task, opts = build_run(cfg, device, None)
    comp.nets(task.nets)
    nets = dict(task.nets)
    if variant.compile:
        nets = {k: torch.compile(m, backend=plan.compile_backend) for k, m in nets.items()}
    n = case.batch or cfg.train.batch_size
    images = comp.images(torch.rand(n, 3, cfg.resolution, cfg.resolution, device=device) * 2 - 1)
    batch = {"images": images, "cond": None, "label": None, "seeds": torch.arange(n)}
    return task, opts, nets, batch, cfg


def first_non_r1_steps(task, count: int) -> list[int]:
    """Step numbers on which the GAN skips its lazy R1 penalty (every step for other kinds): R1
    takes a double backward, which torch.compile does not support, and runs 1 step in r1_every."""
    every = getattr(task.cfg, "r1_every", 0)
    return [s for s in range(1, 4 * count + 2) if not every or s % every][:count]


def run_steps(task, opts, nets, batch, steps: list[int], autocast) -> None:
    task.nets.train()
    for s in steps:
        with autocast:
            task.train_step(batch, s, nets, opts, 0.0)


def measure(case: Case, name: str, variant: Variant, device: torch.device, plan: Plan, profile: Path | None) -> dict:
    from histogen.compute import Compute

    os.environ["HISTOGEN_KERNELS"] = variant.kernels
    # The GPU dry run keeps fp32: bf16 autocast in Triton's interpreter on the CPU checks nothing more.
    comp = Compute(device, variant.bf16 and (device.type == "cuda" or plan.device_bf16), variant.channels_last, None)
    task, opts, nets, batch, cfg = build(case, device, comp, variant, plan)
    autocast = comp.autocast()
    steps = first_non_r1_steps(task, plan.warmup + plan.steps)
    t0 = time.perf_counter()
    run_steps(task, opts, nets, batch, steps[: plan.warmup], autocast)
    sync(device)
    warm = time.perf_counter() - t0
    t0 = time.perf_counter()
    run_steps(task, opts, nets, batch, steps[plan.warmup :], autocast)
    sync(device)
    seconds = (time.perf_counter() - t0) / plan.steps
    if profile is not None:
        write_profile(profile, f"{case.label} ({case.preset}), {name}: {plan.profile_steps} training steps", device,
                      lambda: run_steps(task, opts, nets, batch, steps[-plan.profile_steps :], autocast))
    n = len(batch["images"])
    row = {"name": f"{case.label} step ({case.preset}, batch {n}, {cfg.resolution} px), {name}", "ms": 1e3 * seconds,
           "steps/s": 1 / seconds, "images/s": n / seconds, "warm-up s": warm}
    if plan.flops:
        row["GFLOP/step"] = step_flops(task, opts, dict(task.nets), batch, steps[-1], autocast) / 1e9
    return row


def step_flops(task, opts, nets, batch, step: int, autocast) -> float:
    """FLOPs of one training step (forward and backward), by torch's flop counter."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        run_steps(task, opts, nets, batch, [step], autocast)
    return float(counter.get_total_flops())


def matmul_rate(dtype: torch.dtype, side: int = 2048, repeats: int = 5) -> float:
    """FLOP/s of a side x side product in `dtype` on the CPU, best of `repeats`: the rate a
    convolution lowered to GEMMs could reach at best."""
    a, b = torch.randn(side, side, dtype=dtype), torch.randn(side, side, dtype=dtype)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t0)
    return 2 * side**3 / best


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def write_profile(path: Path, title: str, device: torch.device, fn) -> None:
    """Append the top kernels of fn() (sorted by time on the device, or on the CPU in a dry run)."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        fn()
        sync(device)
    key = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    table = prof.key_averages().table(sort_by=key, row_limit=25, max_name_column_width=70)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        f.write(f"== {title}, top 25 by {key}\n{table}\n")


def main(argv, work: Path, out: Path) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks train")
    p.add_argument("--steps", type=int, default=10, help="timed steps per variant")
    p.add_argument("--profile", type=Path, default=None,
                   help="file for the profiler tables (default: OUT/train-profile.txt)")
    p.add_argument("--only", choices=[c.label for c in REAL], action="append", help="only this model kind (repeatable)")
    p.add_argument("--dry-run", action="store_true",
                   help="tiny presets on the CPU, Triton interpreted: checks the code, measures nothing")
    p.add_argument("--cpu", action="store_true",
                   help="the CPU path: fp32 / channels_last / bf16 autocast / torch.compile "
                        "on diffusion-64-cpu, against the bf16 matmul ceiling")
    a = p.parse_args(argv)
    if a.cpu:
        return main_cpu(a.steps, out)
    if not report.can_run("train", a.dry_run):
        return 2
    if a.dry_run:
        # The eager steps are profiled: a fused step in Triton's interpreter costs ten of them.
        plan, cases = Plan("cpu", warmup=0, steps=1, compile_backend="aot_eager", profile_steps=1,
                           profiled="eager"), DRY
    else:
        plan, cases = Plan("cuda", warmup=3, steps=a.steps, compile_backend="inductor", profile_steps=3,
                           profiled="fused"), REAL
        torch.backends.cudnn.benchmark = True
    cases = [c for c in cases if not a.only or c.label in a.only]
    device = torch.device(plan.device)
    profile = a.profile or out / "train-profile.txt"
    profile.unlink(missing_ok=True)
    rows, extra = [], {"device": report.device_name(device.type),
                       "profile": str(profile)}
    for case in cases:
        got = {v: measure(case, v, VARIANTS[v], device, plan, profile if v == plan.profiled else None)
               for v in VARIANTS}
        for v, row in got.items():
            rows.append({**row, "x eager": got["eager"]["ms"] / row["ms"],
                         "x compile": got["compile"]["ms"] / row["ms"]})
        extra[f"{case.label} fused x eager"] = got["eager"]["ms"] / got["fused"]["ms"]
        extra[f"{case.label} fused x compile"] = got["compile"]["ms"] / got["fused"]["ms"]
        torch._dynamo.reset()  # the next kind's graphs start from a clean cache
        text = report.write(out, "train", rows, extra)  # after each kind: a run cut short keeps what it measured
    print(text)
    return 0


def main_cpu(steps: int, out: Path) -> int:
    """The CPU variants of diffusion-64-cpu's step, each against fp32 NCHW and the bf16 ceiling."""
    from histogen.compute import cpu_has_bf16, decide

    comp = decide(torch.device("cpu"), True, True)  # sets the threads as training does
    bf16 = cpu_has_bf16()
    plan = Plan("cpu", warmup=2, steps=steps, compile_backend="inductor", profile_steps=0, profiled="",
                device_bf16=bf16, flops=True)
    device = torch.device("cpu")
    peak = {"bf16": matmul_rate(torch.bfloat16), "fp32": matmul_rate(torch.float32)}
    rows = []
    extra = {"device": "cpu", "threads": comp.threads, "native bf16": bf16,
             "bf16 matmul GFLOP/s": peak["bf16"] / 1e9, "fp32 matmul GFLOP/s": peak["fp32"] / 1e9}
    for case in CPU:
        got = {}
        for name, variant in CPU_VARIANTS.items():
            got[name] = row = measure(case, name, variant, device, plan, None)
            ceiling = peak["bf16" if variant.bf16 and bf16 else "fp32"] / (row["GFLOP/step"] * 1e9 / (case.batch or 1))
            row.update({"x fp32": row["images/s"] / got["fp32"]["images/s"],
                        "ceiling images/s": ceiling, "of ceiling": row["images/s"] / ceiling})
            rows.append(row)
            text = report.write(out, "train-cpu", rows, extra)
        torch._dynamo.reset()
    print(text)
    return 0
