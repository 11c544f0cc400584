"""The contract between the models and the trainer: a Task owns the networks of one kind of
generative model and knows how to train, validate and sample them."""
from __future__ import annotations

import math
from contextlib import contextmanager

import torch
from torch import nn


class NonFiniteLoss(RuntimeError):
    """A loss or gradient norm is NaN/inf; raised before that optimizer's step, gradients cleared."""


def unwrap(net: nn.Module) -> nn.Module:
    """The module inside a DistributedDataParallel (or similar `.module`) wrapper."""
    return getattr(net, "module", net)


@contextmanager
def eval_mode(*modules: nn.Module):
    """Eval mode inside (no dropout, spectral norm not updated), each submodule's mode restored after."""
    saved = [(m, m.training) for module in modules for m in module.modules()]
    for module in modules:
        module.eval()
    try:
        yield
    finally:
        for m, training in saved:
            m.training = training


def device_of(net: nn.Module) -> torch.device:
    return next(net.parameters()).device


def noise(shape, generator: torch.Generator | None, device) -> torch.Tensor:
    """Standard normal noise on `device`, drawn on the generator's device and moved: the same seed
    gives the same samples whatever device the networks are on (None: torch's global RNG)."""
    if generator is None:
        return torch.randn(shape, device=device)
    return torch.randn(shape, generator=generator, device=generator.device).to(device)


def draw(seeds: torch.Tensor | None, n: int, shape: tuple, device, normal: bool, salt: int) -> torch.Tensor:
    """n draws of `shape` (normal or uniform). Where the trainer gives per-sample seeds, each
    sample's draw comes from its own seed (and `salt`, one per kind of draw), so a sample's noise
    does not depend on how the global batch is split over processes; else torch's global RNG."""
    fn = torch.randn if normal else torch.rand
    if seeds is None:
        return fn((n, *shape), device=device)
    return torch.stack([fn(shape, generator=torch.Generator().manual_seed(int(s) * 8 + salt))
                        for s in seeds.tolist()]).to(device)


def require(ok: bool, message: str) -> None:
    """A config dataclass's value check: ValueError (histogen.config.build reports it as a ConfigError)."""
    if not ok:
        raise ValueError(message)


def check_labels(label: torch.Tensor, n: int, n_labels: int) -> torch.Tensor:
    """The first n of `label`, class ids (N,) of a model with n_labels classes; else ValueError."""
    if label.dim() != 1 or label.shape[0] < n or label.dtype != torch.long:
        raise ValueError(f"label of shape {tuple(label.shape)} and type {label.dtype}: need ({n},) int64 class ids")
    label = label[:n]
    if n and (int(label.min()) < 0 or int(label.max()) >= n_labels):
        raise ValueError(f"class ids must be in [0, {n_labels}); got {label.tolist()}")
    return label


def check_resolution(resolution: int, factor: int, what: str) -> None:
    if resolution <= 0 or resolution % factor:
        raise ValueError(f"resolution {resolution} must be a positive multiple of {factor} ({what})")


class Task:
    """Base of the kinds. A subclass sets `kind` and `sample_net` (the network sampled with its EMA
    weights), is built as `Task(cfg, resolution, cond_dim, autoencoder)` from its model config
    dataclass, the training image side, the embedding width of a conditional run (None:
    unconditional) and the frozen autoencoder of latent models (None otherwise), and implements
    train_step, validation_losses and sample. A model conditioned on slide labels is built with
    n_labels classes (0: none) and finds class ids (N,) int64 in batches under "label"; its `sample`
    takes them as `label`."""

    kind: str
    sample_net: str
    reconstructs = False  # True: `sample` reconstructs the `images` it is given (autoencoders)

    def __init__(self, nets: dict[str, nn.Module], hyper: dict[str, dict]):
        self.nets = nn.ModuleDict(nets)
        self._hyper = hyper  # optimizer name (= the net it updates) -> lr, betas, weight_decay

    def opt_groups(self) -> dict[str, list[str]]:
        """Optimizer name -> the nets it updates; each optimizer is named after its one net."""
        return {name: [name] for name in self._hyper}

    def opt_hyper(self, name: str) -> dict:
        """lr, betas, weight_decay of optimizer `name`, for AdamWEMA(params, **opt_hyper(name), ema_decay=...)."""
        if name not in self._hyper:
            raise ValueError(f"{self.kind} has no optimizer {name!r}; it has {', '.join(self._hyper)}")
        h = self._hyper[name]
        return dict(lr=h["lr"], betas=tuple(h["betas"]), weight_decay=h["weight_decay"])

    @staticmethod
    def backward_step(name: str, loss: torch.Tensor, opt: torch.optim.Optimizer, clip: float) -> float:
        """Backward, check the loss and the gradient norm are finite (else clear the gradients and
        raise NonFiniteLoss naming the loss), clip to `clip` (0 = off), step, zero_grad; returns the
        gradient norm before clipping. The check follows backward so that under
        DistributedDataParallel every rank sees the same (all-reduced) non-finite norm and raises."""
        loss.backward()
        params = [p for group in opt.param_groups for p in group["params"] if p.grad is not None]
        norm = nn.utils.get_total_norm([p.grad for p in params])
        if not (math.isfinite(float(norm)) and math.isfinite(loss.item())):
            opt.zero_grad(set_to_none=True)
            raise NonFiniteLoss(f"{name} loss {loss.item():.4g}, gradient norm {float(norm):.4g}: "
                                "not finite; no step taken")
        if clip > 0:
            nn.utils.clip_grads_with_norm_(params, clip, norm)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return float(norm)

    @staticmethod
    @contextmanager
    def frozen(net: nn.Module):
        """No parameter gradients for `net` inside (e.g. D while computing the generator's loss)."""
        flags = [p.requires_grad for p in net.parameters()]
        net.requires_grad_(False)
        try:
            yield
        finally:
            for p, flag in zip(net.parameters(), flags):
                p.requires_grad_(flag)

    def train_step(self, batch: dict, step: int, nets: dict[str, nn.Module], opts: dict,
                   clip: float) -> dict[str, float]:
        raise NotImplementedError

    def validation_losses(self, batch: dict, nets: dict[str, nn.Module]) -> dict[str, float]:
        raise NotImplementedError

    def sample(self, nets, n: int, generator: torch.Generator, cond=None, images=None, steps: int = 50,
               guidance: float = 1.0, label=None) -> torch.Tensor:
        raise NotImplementedError

