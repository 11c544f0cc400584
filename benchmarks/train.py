"""One training step of the real presets on a GPU: the fused Triton kernels against eager PyTorch
and against `torch.compile`, bf16 autocast, channels_last, as histogen.train runs it.

Variants (HISTOGEN_KERNELS decides the GroupNorm+SiLU and AdamW+EMA implementation):
- fused:   the Triton kernels, eager modules;
- eager:   the PyTorch references, eager modules;
- compile: the PyTorch references, every network through `torch.compile`.

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
import contextlib
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from benchmarks import report

VARIANTS = {"fused": ("triton", False), "eager": ("torch", False), "compile": ("torch", True)}


@dataclass(frozen=True)
class Case:
    """One model kind to step: its preset, extra --set overrides and batch (None: the preset's)."""

    label: str
    preset: str
    overrides: tuple = ()
    batch: int | None = None


REAL = (Case("diffusion", "diffusion-64"), Case("gan", "gan-128"))
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


def build(case: Case, device: torch.device, variant: str, plan: Plan):
    """The task, its optimizers, the nets as a step calls them, and a batch on `device`."""
    from histogen import config
    from histogen.run import build as build_run

    cfg = config.resolve(case.preset, list(case.overrides))
    torch.manual_seed(0)
    task, opts = build_run(cfg, device, None)
    task.nets.to(memory_format=torch.channels_last)
    nets = dict(task.nets)
    if VARIANTS[variant][1]:
        nets = {k: torch.compile(m, backend=plan.compile_backend) for k, m in nets.items()}
    n = case.batch or cfg.train.batch_size
    images = (torch.rand(n, 3, cfg.resolution, cfg.resolution, device=device) * 2 - 1).contiguous(memory_format=torch.channels_last)
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


def measure(case: Case, variant: str, device: torch.device, plan: Plan, profile: Path | None) -> dict:
    os.environ["HISTOGEN_KERNELS"] = VARIANTS[variant][0]
    task, opts, nets, batch, cfg = build(case, device, variant, plan)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else contextlib.nullcontext()
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
        write_profile(profile, f"{case.label} ({case.preset}), {variant}: {plan.profile_steps} training steps", device,
                      lambda: run_steps(task, opts, nets, batch, steps[-plan.profile_steps :], autocast))
    n = len(batch["images"])
    return {"name": f"{case.label} step ({case.preset}, batch {n}, {cfg.resolution} px), {variant}", "ms": 1e3 * seconds,
            "steps/s": 1 / seconds, "images/s": n / seconds, "warm-up s": warm}


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
    p.add_argument("--profile", type=Path, default=None, help="file for the profiler tables (default: OUT/train-profile.txt)")
    p.add_argument("--only", choices=[c.label for c in REAL], action="append", help="only this model kind (repeatable)")
    p.add_argument("--dry-run", action="store_true", help="tiny presets on the CPU, Triton interpreted: checks the code, measures nothing")
    a = p.parse_args(argv)
    if not report.can_run("train", a.dry_run):
        return 2
    if a.dry_run:
        # The eager steps are profiled: a fused step in Triton's interpreter costs ten of them.
        plan, cases = Plan("cpu", warmup=0, steps=1, compile_backend="aot_eager", profile_steps=1, profiled="eager"), DRY
    else:
        plan, cases = Plan("cuda", warmup=3, steps=a.steps, compile_backend="inductor", profile_steps=3, profiled="fused"), REAL
        torch.backends.cudnn.benchmark = True
    cases = [c for c in cases if not a.only or c.label in a.only]
    device = torch.device(plan.device)
    profile = a.profile or out / "train-profile.txt"
    profile.unlink(missing_ok=True)
    rows, extra = [], {"device": report.device_name(device.type),
                       "profile": str(profile)}
    for case in cases:
        got = {v: measure(case, v, device, plan, profile if v == plan.profiled else None) for v in VARIANTS}
        for v, row in got.items():
            rows.append({**row, "x eager": got["eager"]["ms"] / row["ms"], "x compile": got["compile"]["ms"] / row["ms"]})
        extra[f"{case.label} fused x eager"] = got["eager"]["ms"] / got["fused"]["ms"]
        extra[f"{case.label} fused x compile"] = got["compile"]["ms"] / got["fused"]["ms"]
        torch._dynamo.reset()  # the next kind's graphs start from a clean cache
        text = report.write(out, "train", rows, extra)  # after each kind: a run cut short keeps what it measured
    print(text)
    return 0
