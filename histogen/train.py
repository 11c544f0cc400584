"""The one training loop for every model kind (the model's own step lives in its Task), with
validation and the periodic sample grids; the run folder it fills is described in histogen.run_folder.

The same command resumes a killed run exactly: batches, augmentation and the model's random draws
are functions of (seed, step, rank), and the RNG and optimizer state (with the EMA) are in the
checkpoint. Distributed with torchrun (DDP: gloo on CPU, NCCL on GPU).
"""
from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

from engine.progress import Progress
from histogen import checkpoint, compute
from histogen.batches import Batches, DataError, derive_seed, embedding_width, list_slides, split_slides
from histogen.config import RunConfig
from histogen.images import save_grid
from histogen.labels import Vocabulary, labelled
from histogen.models.task import NonFiniteLoss, Task
from histogen.run import build, init_from, sampling_nets
from histogen.run_folder import RunFolder, TrainError
from histogen.tblog import ScalarWriter

log = logging.getLogger("histogen.train")


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


@dataclass
class Result:
    step: int
    metrics: dict
    seconds: float
    images_per_s: float


def train(cfg: RunConfig, stores: list[Path], out: Path, show_progress: bool | None = None) -> Result:
    """Train (or resume) the run in `out` on the slides of `stores`. show_progress: None = a bar
    on a terminal and status lines in a log, False = nothing."""
    d = Dist.from_env()
    device = d.device()
    comp = compute.decide(device, cfg.train.bf16, cfg.train.channels_last, cfg.train.threads,
                          int(os.environ.get("LOCAL_WORLD_SIZE", d.world)))
    if cfg.autoencoder:  # written absolute: a relative path in config.yaml is the run folder's own (export)
        cfg = replace(cfg, autoencoder=str(Path(cfg.autoencoder).resolve()))
    if cfg.train.init_from:
        cfg = replace(cfg, train=replace(cfg.train, init_from=str(Path(cfg.train.init_from).resolve())))
    folder = RunFolder(out)
    folder.check_resume(cfg)
    if not folder.started and not cfg.model.get("train_encoder", True) and not cfg.train.init_from:
        raise TrainError("model.train_encoder=false keeps the encoder as it starts: give the autoencoder run to "
                         "start from (--set train.init_from=RUN)")
    try:
        refs = list_slides(stores, cfg.resolution, cfg.data.conditional, cfg.data.qc, embedding=cfg.data.embedding)
        cond_dim = embedding_width(refs, cfg.data.embedding) if cfg.data.conditional else None
    except DataError as e:
        raise TrainError(str(e)) from e
    vocab, class_ids = None, None
    if cfg.data.label:
        refs, names = labelled(refs, cfg.data.label)
        vocab = Vocabulary.of(names, cfg.data.label)
        saved = folder.vocabulary
        if saved is not None and saved.classes != vocab.classes:
            raise TrainError(f"{out} was trained on the labels {', '.join(saved.classes)}, these slides have "
                             f"{', '.join(vocab.classes)}; resume on the same slides or use a new --out")
        ids = {(r.store, r.slide): i for r, i in zip(refs, vocab.indices(names))}
        class_ids = lambda rs: [ids[(r.store, r.slide)] for r in rs]  # noqa: E731
    train_refs, val_refs = split_slides(refs, cfg.data.val_fraction, cfg.train.seed)
    torch.manual_seed(cfg.train.seed)  # the same initial weights on every process
    # settings it cannot use are refused before anything is written
    task, opts = build(cfg, device, cond_dim, len(vocab.classes) if vocab else 0)
    base_lr = {name: [g["lr"] for g in opt.param_groups] for name, opt in opts.items()}  # the config's
    comp.nets(task.nets)
    if d.main:
        folder.write(cfg, train_refs, val_refs, vocab)
    d.barrier()
    start = 0
    found = checkpoint.latest(folder.checkpoints)
    if found is not None:
        meta, tensors = found
        checkpoint.restore(meta, tensors, dict(task.nets), opts)
        start = int(meta["step"])
        log.info("resuming %s at step %d", out, start)
        if not meta["optimizers"]:
            log.info("%s holds exported weights only: the optimizer's moments start afresh, its EMA at the weights",
                     out)
    elif cfg.train.init_from:
        init_from(task, RunFolder(cfg.train.init_from), device)
        log.info("%s: starting from the weights of %s", out, cfg.train.init_from)
    if start >= cfg.train.steps:
        log.info("%s: already trained for %d steps", out, start)
        return Result(start, {}, 0.0, 0.0)
    if cfg.train.cooldown:
        log.info("%s: the learning rate falls linearly to 0 from step %d to %d", out,
                 max(0, cfg.train.steps - cfg.train.cooldown), cfg.train.steps)
    nets = dict(task.nets)
    if cfg.train.compile:
        nets = {n: torch.compile(m) for n, m in nets.items()}
    if d.world > 1:
        nets = {n: DDP(m, device_ids=[device.index] if device.type == "cuda" else None)
                   if any(p.requires_grad for p in m.parameters()) else m
                for n, m in nets.items()}
    batches = Batches(train_refs, cfg, device, start, d.rank, d.world, steps=cfg.train.steps - start,
                      labels=class_ids(train_refs) if class_ids else None)
    writer = ScalarWriter(folder.tb) if d.main else None
    t = cfg.train
    metrics, t0, seen = {}, time.perf_counter(), 0
    progress = Progress(total=t.steps, initial=start, desc=out.name, unit="step",
                        show=show_progress if d.main else False)
    step = start
    try:
        for step in range(start, t.steps):
            batch = next(batches)
            batch["images"] = comp.images(batch["images"])
            scale = lr_scale(step, t.steps, t.cooldown)
            for name, opt in opts.items():
                for group, lr in zip(opt.param_groups, base_lr[name]):
                    group["lr"] = lr * scale
            torch.manual_seed(derive_seed(t.seed, step, d.rank, 2))  # the model's own draws (noise, timesteps)
            task.nets.train()
            with comp.autocast():
                metrics = task.train_step(batch, step, nets, opts, t.grad_clip)
            seen += len(batch["images"]) * d.world
            done = step + 1
            rate = seen / (time.perf_counter() - t0)
            progress.update(1, **dict(list(metrics.items())[:2]), **{"img/s": f"{rate:.1f}"})
            if writer and (done % t.log_every == 0 or done == t.steps):
                writer.scalars(done, {**{f"train/{k}": v for k, v in metrics.items()}, "train/images_per_s": rate})
            if done % t.val_every == 0 and val_refs and d.main:
                val_labels = class_ids(val_refs) if class_ids else None
                writer.scalars(done,
                               {f"val/{k}": v for k, v in validate(task, val_refs, cfg, device, val_labels).items()})
            if done % t.sample_every == 0 and d.main:
                sample_grid(task, opts, cfg, device, folder.grid(done), batch)
            if done % t.ckpt_every == 0 or done == t.steps:
                if d.main:
                    checkpoint.save(folder.checkpoints, done, dict(task.nets), opts, extra={"cond_dim": cond_dim},
                                    keep=t.keep)
                d.barrier()
    except NonFiniteLoss as e:
        found = sorted(folder.checkpoints.glob("step-*.json"))
        last = f"the last good checkpoint {found[-1]} is intact" if found else "no checkpoint was written yet"
        raise TrainError(f"{out}: stopped at step {step + 1}: {e}; {last}; lower the learning rate or the "
                         f"grad clip (--set train.grad_clip=...) and run the same command to resume") from e
    finally:
        progress.close()
        if writer:
            writer.close()
    seconds = time.perf_counter() - t0
    return Result(t.steps, metrics, seconds, seen / seconds if seconds else 0.0)


def lr_scale(step: int, steps: int, cooldown: int) -> float:
    """The learning rate's factor at (0-based) `step` of a run of `steps`: 1, then over the last `cooldown`
    steps linearly down towards 0 (the last step's is 1 / cooldown)."""
    return min(1.0, (steps - step) / cooldown) if cooldown else 1.0


def validate(task: Task, refs, cfg: RunConfig, device: torch.device,
             labels: list[int] | None = None) -> dict[str, float]:
    task.nets.eval()
    batches = Batches(refs, cfg, device, train=False, steps=cfg.train.val_batches, labels=labels)
    fork = torch.random.fork_rng(devices=[device] if device.type == "cuda" else [])
    with fork:
        torch.manual_seed(cfg.train.seed)  # the same draws at every validation: comparable numbers
        results = [task.validation_losses(b, dict(task.nets)) for b in batches]
    return {k: float(np.mean([r[k] for r in results])) for k in results[0]} if results else {}


def sample_grid(task: Task, opts, cfg: RunConfig, device: torch.device, path: Path, batch: dict) -> None:
    n = min(cfg.train.n_samples, len(batch["images"])) if task.reconstructs else cfg.train.n_samples
    # The batch's conditions and labels, repeated where the grid has more samples than the batch.
    cycled = lambda v: None if v is None else v[torch.arange(n) % len(v)]  # noqa: E731
    gen = torch.Generator(device).manual_seed(cfg.train.seed)
    images = task.sample(sampling_nets(task, opts), n, gen, cond=cycled(batch["cond"]), images=batch["images"][:n],
                         steps=cfg.train.sample_steps, guidance=cfg.train.guidance, label=cycled(batch.get("label")))
    save_grid(images, path)
