"""A training run: its folder, and building, loading and sampling its models.

    runs/NAME/config.yaml      the resolved config (a resumed run must match it, steps aside)
    runs/NAME/split.json       which slides trained and which validated
    runs/NAME/labels.json      the classes of a run conditioned on labels (histogen.labels)
    runs/NAME/checkpoints/     safetensors + JSON, atomic, the last `keep` kept (histogen.checkpoint)
    runs/NAME/tb/              TensorBoard scalars
    runs/NAME/samples/         a PNG grid every `sample_every` steps

The training loop that fills it is histogen.train.
"""
from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import torch

from engine.errors import UserError
from engine.store import SlideRef, dict_diff
from histogen import checkpoint, config
from histogen.batches import embedding_width, open_store
from histogen.checkpoint import CheckpointError
from histogen.config import ConfigError, RunConfig
from histogen.images import to_uint8
from histogen.kernels import AdamWEMA
from histogen.labels import LabelError, Vocabulary, run_labels
from histogen.models.autoencoder import AutoencoderTask
from histogen.models.registry import KINDS
from histogen.models.task import Task
from histogen.selection import select

# Settings a resumed run may change: how long it trains, and how often it logs, samples and saves.
FREE_ON_RESUME = {f"train.{k}" for k in ("steps", "log_every", "val_every", "sample_every", "ckpt_every", "keep", "n_samples",
                                         "sample_steps", "guidance")} | {"data.workers"}


class TrainError(UserError):
    """A run that cannot start, go on or be loaded; the message says what to do."""


# -- the folder ---------------------------------------------------------------------------------


def check_resume(cfg: RunConfig, out: Path) -> None:
    """Refuse to go on with a run folder that was started with other settings (writes nothing)."""
    path = out / "config.yaml"
    if not path.is_file():
        return

    def flat(c: RunConfig) -> dict:  # sections are one level deep
        items = []
        for k, v in c.to_dict().items():
            items += [(f"{k}.{k2}", v2) for k2, v2 in v.items()] if isinstance(v, dict) else [(k, v)]
        return {k: v for k, v in items if k not in FREE_ON_RESUME}

    diff = dict_diff(flat(config.load(path)), flat(cfg))
    if diff:
        raise TrainError(f"{out} was started with other settings ({diff}); resume with the same settings or use a new --out")


def write_run(out: Path, cfg: RunConfig, train: list[SlideRef], val: list[SlideRef], vocab: Vocabulary | None = None) -> None:
    """config.yaml, split.json: the slides as {store, slide, n} (their rows follow from the
    stores and the config's data.qc, so they are not written), and labels.json of a labelled run."""
    out.mkdir(parents=True, exist_ok=True)
    config.save(cfg, out / "config.yaml")
    if vocab is not None:
        vocab.save(out)
    split = {k: [{"store": r.store, "slide": r.slide, "n": r.n} for r in refs] for k, refs in (("train", train), ("val", val))}
    (out / "split.json").write_text(json.dumps(split, indent=1))


def read_split(run: Path) -> dict[str, list[SlideRef]]:
    """The run's {"train": [SlideRef], "val": [SlideRef]}, each standing for the patches of its
    slide that pass the check under the run's data.qc (as in training)."""
    split = json.loads((run / "split.json").read_text())
    qc = config.load(run / "config.yaml").data.qc
    return {k: [select(open_store(r["store"]), SlideRef(**r), qc) for r in v] for k, v in split.items()}


# -- the models ---------------------------------------------------------------------------------


def build_task(kind: str, model: dict, resolution: int, cond_dim: int | None, autoencoder: torch.nn.Module | None = None,
               n_labels: int = 0) -> Task:
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


def build(cfg: RunConfig, device: torch.device, cond_dim: int | None, n_labels: int = 0) -> tuple[Task, dict[str, AdamWEMA]]:
    """The run's task on `device` and its optimizers (which keep the EMA of the weights)."""
    autoencoder = load_autoencoder(Path(cfg.autoencoder), device) if cfg.autoencoder else None
    task = build_task(cfg.kind, cfg.model, cfg.resolution, cond_dim, autoencoder, n_labels)
    task.nets.to(device)
    opts = {name: AdamWEMA([p for n in nets for p in task.nets[n].parameters()], **task.opt_hyper(name), ema_decay=cfg.train.ema_decay,
                                ema_warmup=cfg.train.ema_warmup)
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
    """A trained run's config, task (weights restored) and optimizers (with the EMA), and its step."""
    if not (run / "config.yaml").is_file():
        raise TrainError(f"{run}: not a training run (no config.yaml); give the --out folder of histogen train")
    cfg = config.load(run / "config.yaml")
    found = checkpoint.latest(run / "checkpoints")
    if found is None:
        raise CheckpointError(f"{run}: no usable checkpoint in {run / 'checkpoints'}; train it first (or longer)")
    meta, tensors = found
    cond_dim = None
    if cfg.data.conditional:  # the width the checkpoint records; older checkpoints lack it: the training stores'
        cond_dim = meta["extra"]["cond_dim"] if "cond_dim" in meta["extra"] else embedding_width(read_split(run)["train"])
    task, opts = build(cfg, device, cond_dim, len(vocabulary(run, cfg).classes) if cfg.data.label else 0)
    checkpoint.restore(meta, tensors, dict(task.nets), opts, rng=False)
    return cfg, task, opts, int(meta["step"])


def vocabulary(run: Path, cfg: RunConfig) -> Vocabulary | None:
    """The classes of a run conditioned on labels (None for other runs)."""
    vocab = run_labels(run)
    if cfg.data.label and vocab is None:
        raise TrainError(f"{run}: conditioned on labels (data.label {cfg.data.label}) but labels.json is missing; "
                         "train it again or restore the file")
    return vocab


def load_autoencoder(run: Path, device: torch.device) -> torch.nn.Module:
    """The frozen EMA autoencoder of an autoencoder run: the latent space of latent diffusion."""
    cfg, task, opts, _ = load_run(run, device)
    if not isinstance(task, AutoencoderTask):
        raise ConfigError(f"autoencoder: {run} trained a {cfg.kind}, not an autoencoder")
    net = ema_net(task, opts)
    net.requires_grad_(False)
    return net


class RunSampler:
    """A trained run's EMA network, ready to sample batches: uint8 (n, R, R, 3) per call."""

    def __init__(self, run: Path, device: torch.device | None = None):
        self.run = Path(run)
        self.device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.cfg, self.task, opts, self.step = load_run(self.run, self.device)
        self.nets = {**dict(self.task.nets), self.task.sample_net: ema_net(self.task, opts).to(self.device)}
        self.vocabulary = vocabulary(self.run, self.cfg)  # None: not conditioned on labels

    @property
    def conditional(self) -> bool:
        return self.cfg.data.conditional

    def class_ids(self, labels: list[str]) -> torch.Tensor:
        """The class ids of label names (LabelError naming the known ones for an unknown one)."""
        if self.vocabulary is None:
            raise LabelError(f"{self.run} is not conditioned on labels; leave out --label")
        try:
            return torch.tensor(self.vocabulary.indices(labels), dtype=torch.long)
        except LabelError as e:
            raise LabelError(f"{self.run}: {e}") from e

    @property
    def reconstructs(self) -> bool:
        """An autoencoder: its samples are reconstructions of the `images` it is given."""
        return self.task.reconstructs

    def __call__(self, n: int, gen: torch.Generator, cond: torch.Tensor | None = None, images: torch.Tensor | None = None,
                 steps: int = 50, guidance: float = 1.0, label: torch.Tensor | None = None) -> np.ndarray:
        """n samples; `cond` (n, D) embeddings for conditional runs; `label` (n,) class ids
        (class_ids) for runs conditioned on labels; reconstructing runs take `images` (n, 3, R, R)
        in [-1, 1]."""
        to = lambda t: None if t is None else t.to(self.device)  # noqa: E731
        return to_uint8(self.task.sample(self.nets, n, gen, cond=to(cond), images=to(images), steps=steps, guidance=guidance,
                                         label=to(label)))

    def split(self) -> dict[str, list[SlideRef]]:
        return read_split(self.run)
