"""A trained run's models: building a run's task and optimizers, restoring them from its folder
(histogen.run_folder), its EMA network, and sampling it (RunSampler)."""
from __future__ import annotations

import copy

import numpy as np
import torch

from histogen import checkpoint, compute, config
from histogen.batches import embedding_width
from histogen.checkpoint import CheckpointError
from histogen.config import ConfigError, RunConfig
from histogen.images import to_uint8
from histogen.kernels import AdamWEMA
from histogen.labels import LabelError
from histogen.models.autoencoder import AutoencoderTask
from histogen.models.registry import KINDS
from histogen.models.task import Task
from histogen.run_folder import RunFolder, TrainError


def build_task(kind: str, model: dict, resolution: int, cond_dim: int | None,
               autoencoder: torch.nn.Module | None = None, n_labels: int = 0) -> Task:
    """The task of `kind` from a config's model section. resolution: the training image side,
    divisible by the model's downsampling; cond_dim: the embedding width of a conditional run
    (None: unconditional); autoencoder: the frozen `Autoencoder` of latent diffusion; n_labels: the
    classes of a run conditioned on labels (0: none). Settings it cannot use raise ConfigError (a
    ValueError)."""
    settings = config.model_config(kind, model)
    try:
        return KINDS[kind].task(settings, resolution, cond_dim, autoencoder, n_labels=n_labels)
    except ValueError as e:
        raise ConfigError(str(e)) from e


def build(cfg: RunConfig, device: torch.device, cond_dim: int | None,
          n_labels: int = 0) -> tuple[Task, dict[str, AdamWEMA]]:
    """The run's task on `device` and its optimizers (which keep the EMA of the weights)."""
    autoencoder = load_autoencoder(RunFolder(cfg.autoencoder), device) if cfg.autoencoder else None
    task = build_task(cfg.kind, cfg.model, cfg.resolution, cond_dim, autoencoder, n_labels)
    task.nets.to(device)
    opts = {name: AdamWEMA([p for n in nets for p in task.nets[n].parameters()], **task.opt_hyper(name),
                           ema_decay=cfg.train.ema_decay, ema_warmup=cfg.train.ema_warmup)
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


def sampling_nets(task: Task, opts: dict[str, AdamWEMA]) -> dict[str, torch.nn.Module]:
    """The task's nets as it samples with them: the sampling net's EMA copy in its place."""
    return {**dict(task.nets), task.sample_net: ema_net(task, opts)}


def load_run(folder: RunFolder, device: torch.device) -> tuple[Task, dict[str, AdamWEMA], dict]:
    """A trained run's task (weights restored), its optimizers (with the EMA) and its latest
    checkpoint's metadata (histogen.checkpoint: step, extra)."""
    cfg = folder.cfg
    found = checkpoint.latest(folder.checkpoints)
    if found is None:
        raise CheckpointError(f"{folder.path}: no usable checkpoint in {folder.checkpoints}; "
                              "train it first (or longer)")
    meta, tensors = found
    cond_dim = None
    if cfg.data.conditional:  # the width the checkpoint records; older checkpoints lack it: the training stores'
        cond_dim = (meta["extra"]["cond_dim"] if "cond_dim" in meta["extra"]
                    else embedding_width(folder.split["train"], cfg.data.embedding))
    if cfg.data.label and folder.vocabulary is None:
        raise TrainError(f"{folder.path}: conditioned on labels (data.label {cfg.data.label}) but labels.json is "
                         "missing; train it again or restore the file")
    task, opts = build(cfg, device, cond_dim, len(folder.vocabulary.classes) if cfg.data.label else 0)
    checkpoint.restore(meta, tensors, dict(task.nets), opts, rng=False)
    return task, opts, meta


def init_from(task: Task, source: RunFolder, device: torch.device) -> None:
    """Start `task`'s nets from `source`'s latest weights (train.init_from): the sampling net from its
    EMA, the others from their weights; a net `source` lacks keeps its initialisation."""
    if source.cfg.kind != task.kind:
        raise ConfigError(f"train.init_from: {source.path} trained a {source.cfg.kind}, not a {task.kind}")
    weights = sampling_nets(*load_run(source, device)[:2])
    for name, net in task.nets.items():
        if name in weights:
            try:
                net.load_state_dict(weights[name].state_dict())
            except RuntimeError as e:
                raise ConfigError(f"train.init_from: {source.path}'s {name} has another shape than this run's; "
                                  f"start from a run of the same model settings ({str(e).splitlines()[0]})") from e


def load_autoencoder(folder: RunFolder, device: torch.device) -> torch.nn.Module:
    """The frozen EMA autoencoder of an autoencoder run: the latent space of latent diffusion."""
    task, opts, _ = load_run(folder, device)
    if not isinstance(task, AutoencoderTask):
        raise ConfigError(f"autoencoder: {folder.path} trained a {folder.cfg.kind}, not an autoencoder")
    net = ema_net(task, opts)
    net.requires_grad_(False)
    return net


class RunSampler:
    """A trained run's EMA network, ready to sample batches: uint8 (n, R, R, 3) per call."""

    def __init__(self, folder: RunFolder, device: torch.device | None = None):
        self.folder = folder
        self.device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
        t = folder.cfg.train
        # As the run trained: bf16 autocast where the device has it (3-4x faster sampling on such a CPU).
        self.compute = compute.decide(self.device, t.bf16, t.channels_last, t.threads)
        self.task, opts, meta = load_run(folder, self.device)
        self.step = int(meta["step"])
        self.nets = sampling_nets(self.task, opts)
        for net in self.nets.values():
            self.compute.nets(net)

    @property
    def conditional(self) -> bool:
        return self.folder.cfg.data.conditional

    def class_ids(self, labels: list[str]) -> torch.Tensor:
        """The class ids of label names (LabelError naming the known ones for an unknown one)."""
        if self.folder.vocabulary is None:
            raise LabelError(f"{self.folder.path} is not conditioned on labels; leave out --label")
        try:
            return torch.tensor(self.folder.vocabulary.indices(labels), dtype=torch.long)
        except LabelError as e:
            raise LabelError(f"{self.folder.path}: {e}") from e

    @property
    def reconstructs(self) -> bool:
        """An autoencoder: its samples are reconstructions of the `images` it is given."""
        return self.task.reconstructs

    def __call__(self, n: int, gen: torch.Generator, *, steps: int, guidance: float, cond: torch.Tensor | None = None,
                 images: torch.Tensor | None = None, label: torch.Tensor | None = None) -> np.ndarray:
        """n samples; `cond` (n, D) embeddings for conditional runs; `label` (n,) class ids
        (class_ids) for runs conditioned on labels; reconstructing runs take `images` (n, 3, R, R)
        in [-1, 1]."""
        to = lambda t: None if t is None else t.to(self.device)  # noqa: E731
        images = None if images is None else self.compute.images(to(images))
        with self.compute.autocast():
            return to_uint8(self.task.sample(self.nets, n, gen, cond=to(cond), images=images, steps=steps,
                                             guidance=guidance, label=to(label)))
