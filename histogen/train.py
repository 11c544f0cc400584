"""The one training loop for every model kind (the model's own step lives in its Task).

    runs/NAME/config.yaml      the resolved config (a resumed run must match it, steps aside)
    runs/NAME/split.json       which slides trained and which validated
    runs/NAME/checkpoints/     safetensors + JSON, atomic, the last `keep` kept
    runs/NAME/tb/              TensorBoard scalars
    runs/NAME/samples/         a PNG grid every `sample_every` steps

The same command resumes a killed run exactly: batches, augmentation and the model's random draws
are functions of (seed, step, rank), and the RNG and optimizer state (with the EMA) are in the
checkpoint. Distributed with torchrun (DDP: gloo on CPU, NCCL on GPU).
"""
from __future__ import annotations

import contextlib
import copy
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from engine.errors import UserError
from engine.store import dict_diff
from histogen import checkpoint, config
from histogen.config import ConfigError, RunConfig
from histogen.data import (
    COND_DIM,
    Batches,
    DataError,
    derive_seed,
    find_slides,
    split_slides,
)
from histogen.kernels import AdamWEMA
from histogen.models import NonFiniteLoss, Task, build_task
from histogen.sample import save_grid
from histogen.tblog import ScalarWriter

log = logging.getLogger("histogen.train")


class TrainError(UserError):
    """A run that cannot start or go on; the message says what to do."""


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @classmethod
    def from_env(cls) -> "Dist":
        world = int(os.environ.get("WORLD_SIZE", "1"))
        d = cls(int(os.environ.get("RANK", "0")), world, int(os.environ.get("LOCAL_RANK", "0")))
        if world > 1 and not dist.is_initialized():
            dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
        return d

    @property
    def main(self) -> bool:
        return self.rank == 0

    def device(self) -> torch.device:
        if torch.cuda.is_available():
            torch.cuda.set_device(self.local_rank)
            return torch.device("cuda", self.local_rank)
        return torch.device("cpu")

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()


def build(cfg: RunConfig, device: torch.device) -> tuple[Task, dict[str, AdamWEMA]]:
    autoencoder = load_autoencoder(Path(cfg.autoencoder), device) if cfg.autoencoder else None
    try:
        task = build_task(cfg.kind, cfg.model, cfg.resolution, COND_DIM if cfg.data.conditional else None, autoencoder)
    except ValueError as e:
        raise ConfigError(str(e)) from e
    task.nets.to(device)
    opts = {name: AdamWEMA([p for n in nets for p in task.nets[n].parameters()], **task.opt_hyper(name), ema_decay=cfg.train.ema_decay)
            for name, nets in task.opt_groups().items()}
    return task, opts


def ema_net(task: Task, opts: dict[str, AdamWEMA]) -> torch.nn.Module:
    """A copy of the sampling network holding the EMA weights (kept by its optimizer)."""
    net = copy.deepcopy(task.nets[task.sample_net]).eval()
    for name, nets in task.opt_groups().items():
        if task.sample_net in nets:
            emas = opts[name].ema_parameters()
            before = sum(len(list(task.nets[n].parameters())) for n in nets[: nets.index(task.sample_net)])
            params = list(net.parameters())
            with torch.no_grad():
                for p, e in zip(params, emas[before : before + len(params)]):
                    p.copy_(e)
    return net


def load_run(run: Path, device: torch.device) -> tuple[RunConfig, Task, dict[str, AdamWEMA], int]:
    """A trained run's config, task (weights restored) and optimizers (with the EMA)."""
    if not (run / "config.yaml").is_file():
        raise TrainError(f"{run}: not a training run (no config.yaml); give the --out folder of histogen train")
    cfg = config.load(run / "config.yaml")
    task, opts = build(cfg, device)
    found = checkpoint.latest(run / "checkpoints")
    if found is None:
        raise TrainError(f"{run}: no usable checkpoint in {run / 'checkpoints'}; train it first (or longer)")
    meta, tensors = found
    checkpoint.restore(meta, tensors, dict(task.nets), opts, rng=False)
    return cfg, task, opts, int(meta["step"])


def load_autoencoder(run: Path, device: torch.device) -> torch.nn.Module:
    cfg, task, opts, _ = load_run(run, device)
    if cfg.kind != "ae":
        raise ConfigError(f"autoencoder: {run} trained a {cfg.kind}, not an autoencoder")
    net = ema_net(task, opts)
    net.requires_grad_(False)
    return net


def _same_run(old: RunConfig, new: RunConfig) -> str:
    """The differences that matter between a run's saved config and the asked one (more steps,
    logging and sampling cadence may change on resume)."""
    free = {f"train.{k}" for k in ("steps", "log_every", "val_every", "sample_every", "ckpt_every", "keep", "n_samples",
                                   "sample_steps", "guidance")} | {"data.workers"}

    def flat(cfg: RunConfig) -> dict:  # sections are one level deep
        items = []
        for k, v in cfg.to_dict().items():
            items += [(f"{k}.{k2}", v2) for k2, v2 in v.items()] if isinstance(v, dict) else [(k, v)]
        return {k: v for k, v in items if k not in free}

    return dict_diff(flat(old), flat(new))


def prepare_run(cfg: RunConfig, out: Path, d: Dist) -> None:
    path = out / "config.yaml"
    if path.is_file():
        diff = _same_run(config.load(path), cfg)
        if diff:
            raise TrainError(f"{out} was started with other settings ({diff}); resume with the same settings or use a new --out")
    if d.main:
        out.mkdir(parents=True, exist_ok=True)
        config.save(cfg, path)
    d.barrier()


@dataclass
class Result:
    step: int
    metrics: dict
    seconds: float
    images_per_s: float


def train(cfg: RunConfig, stores: list[Path], out: Path, show_progress: bool | None = None) -> Result:
    from tqdm import tqdm

    d = Dist.from_env()
    device = d.device()
    prepare_run(cfg, out, d)
    try:
        refs = find_slides(stores, cfg.resolution, cfg.data.conditional)
    except DataError as e:
        raise TrainError(str(e)) from e
    train_refs, val_refs = split_slides(refs, cfg.data.val_fraction, cfg.train.seed)
    if d.main:
        (out / "split.json").write_text(json.dumps({"train": [vars(r) for r in train_refs], "val": [vars(r) for r in val_refs]}, indent=1))
    torch.manual_seed(cfg.train.seed)  # the same initial weights on every process
    task, opts = build(cfg, device)
    start = 0
    found = checkpoint.latest(out / "checkpoints")
    if found is not None:
        meta, tensors = found
        checkpoint.restore(meta, tensors, dict(task.nets), opts)
        start = int(meta["step"])
        log.info("resuming %s at step %d", out, start)
    if start >= cfg.train.steps:
        log.info("%s: already trained for %d steps", out, start)
        return Result(start, {}, 0.0, 0.0)
    nets = dict(task.nets)
    if d.world > 1:
        from torch.nn.parallel import DistributedDataParallel as DDP

        nets = {n: DDP(m, device_ids=[device.index] if device.type == "cuda" else None) if any(p.requires_grad for p in m.parameters()) else m
                for n, m in nets.items()}
    batches = Batches(train_refs, cfg, device, start, d.rank, d.world, steps=cfg.train.steps - start)
    writer = ScalarWriter(out / "tb") if d.main else None
    autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" and cfg.train.bf16
                else contextlib.nullcontext())
    t = cfg.train
    metrics, t0, seen = {}, time.perf_counter(), 0
    bar = tqdm(total=t.steps, initial=start, unit="step", desc=out.name, disable=(not d.main) or (None if show_progress is None else not show_progress))
    step = start
    try:
        for step in range(start, t.steps):
            batch = next(batches)
            torch.manual_seed(derive_seed(t.seed, step, d.rank, 2))  # the model's own draws (noise, timesteps)
            task.nets.train()
            with autocast:
                metrics = task.train_step(batch, step, nets, opts, t.grad_clip)
            seen += len(batch["images"]) * d.world
            done = step + 1
            rate = seen / (time.perf_counter() - t0)
            bar.update(1)
            bar.set_postfix({k: f"{v:.4g}" for k, v in list(metrics.items())[:2]} | {"img/s": f"{rate:.1f}"})
            if writer and (done % t.log_every == 0 or done == t.steps):
                writer.scalars(done, {**{f"train/{k}": v for k, v in metrics.items()}, "train/images_per_s": rate})
            if done % t.val_every == 0 and val_refs and d.main:
                writer.scalars(done, {f"val/{k}": v for k, v in validate(task, val_refs, cfg, device).items()})
            if done % t.sample_every == 0 and d.main:
                sample_grid(task, opts, cfg, device, out / "samples" / f"step-{done:08d}.png", batch)
            if done % t.ckpt_every == 0 or done == t.steps:
                if d.main:
                    checkpoint.save(out / "checkpoints", done, dict(task.nets), opts, keep=t.keep)
                d.barrier()
    except NonFiniteLoss as e:
        found = sorted((out / "checkpoints").glob("step-*.json"))
        last = f"the last good checkpoint {found[-1]} is intact" if found else "no checkpoint was written yet"
        raise TrainError(f"{out}: stopped at step {step + 1}: {e}; {last}; lower the learning rate or the "
                         f"grad clip (--set train.grad_clip=...) and run the same command to resume") from e
    finally:
        bar.close()
        if writer:
            writer.close()
    seconds = time.perf_counter() - t0
    return Result(t.steps, metrics, seconds, seen / seconds if seconds else 0.0)


def validate(task: Task, refs, cfg: RunConfig, device: torch.device) -> dict[str, float]:
    task.nets.eval()
    batches = Batches(refs, cfg, device, train=False, steps=cfg.train.val_batches)
    fork = torch.random.fork_rng(devices=[device] if device.type == "cuda" else [])
    with fork:
        torch.manual_seed(cfg.train.seed)  # the same draws at every validation: comparable numbers
        results = [task.evaluate(b, dict(task.nets)) for b in batches]
    return {k: float(np.mean([r[k] for r in results])) for k in results[0]} if results else {}


def sample_grid(task: Task, opts, cfg: RunConfig, device: torch.device, path: Path, batch: dict) -> None:
    net = ema_net(task, opts)
    n = min(cfg.train.n_samples, len(batch["images"])) if task.kind == "ae" else cfg.train.n_samples
    cond = batch["cond"][:n] if batch["cond"] is not None and len(batch["cond"]) >= n else None
    if cfg.data.conditional and cond is None:
        cond = batch["cond"][torch.arange(n) % len(batch["cond"])]
    gen = torch.Generator(device).manual_seed(cfg.train.seed)
    nets = {**dict(task.nets), task.sample_net: net}
    images = task.sample(nets, n, gen, cond=cond, images=batch["images"][:n], steps=cfg.train.sample_steps, guidance=cfg.train.guidance)
    save_grid(images, path)
