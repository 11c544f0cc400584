"""The GAN: ResNet generator whose norms are modulated by z (and the condition), spectral-norm
projection discriminator, hinge loss, lazy R1, DiffAugment. The generator's EMA lives in its
optimizer (AdamWEMA); sampling uses whichever generator it is given."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from histogen.kernels import GroupNormSiLU
from histogen.models.blocks import ResBlock, Sequence, Upsample
from histogen.models.diffaug import OPS as DIFFAUG_OPS
from histogen.models.diffaug import diff_augment
from histogen.models.disc import ProjectionDiscriminator, hinge_d, hinge_g
from histogen.models.task import Task, check_labels, device_of, eval_mode, noise, require, unwrap


@dataclass(frozen=True)
class GANConfig:
    """ResNet generator from a base_res x base_res start, doubling to the training resolution; the
    spectral-norm discriminator mirrors it. Channels at side r: min(channel_base // r, channel_max)
    (StyleGAN's rule, so one config serves every resolution). Hinge loss; d_steps D updates per G
    update, each on the batch's reals with fresh fakes; lazy R1 (gamma r1_gamma, on the first D update
    of every r1_every-th training step, scaled by r1_every); DiffAugment `diffaug` ("" = off) on real
    and fake. upsample: the generator's 2x resize, "nearest" or "bilinear". mbstd_group: D's minibatch
    standard deviation over groups of that many images (0 = off), against mode collapse."""

    z_dim: int = 128
    base_res: int = 4
    channel_base: int = 16384
    channel_max: int = 512
    groups: int = 32
    r1_gamma: float = 1.0
    r1_every: int = 16
    d_steps: int = 1
    upsample: str = "nearest"
    mbstd_group: int = 0
    diffaug: str = "color,translation,cutout"
    lr_g: float = 2e-4
    lr_d: float = 2e-4
    betas: tuple[float, float] = (0.0, 0.99)
    weight_decay: float = 0.0

    def __post_init__(self):
        ops = [op for op in self.diffaug.split(",") if op]
        require(all(op in DIFFAUG_OPS for op in ops),
                f"gan: diffaug {self.diffaug!r}: ops are {', '.join(DIFFAUG_OPS)}")
        require(self.r1_every >= 1 and self.r1_gamma >= 0, "gan: r1_every must be >= 1 and r1_gamma >= 0")
        require(self.d_steps >= 1, f"gan: d_steps must be >= 1, not {self.d_steps}")
        require(self.mbstd_group >= 0, f"gan: mbstd_group must be >= 0, not {self.mbstd_group}")
        require(self.upsample in ("nearest", "bilinear"),
                f"gan: upsample must be 'nearest' or 'bilinear', not {self.upsample!r}")
        require(self.base_res >= 2, "gan: base_res must be >= 2")

    def channels_at(self, side: int) -> int:
        return min(self.channel_base // side, self.channel_max)

    def optimizers(self) -> dict[str, dict]:
        return {"gen": dict(lr=self.lr_g, betas=self.betas, weight_decay=self.weight_decay),
                "disc": dict(lr=self.lr_d, betas=self.betas, weight_decay=self.weight_decay)}


class Generator(nn.Module):
    """z (N, z_dim) [+ cond (N, cond_dim)] [+ label (N,) class ids] -> images (N, 3, R, R) in [-1, 1].

    A linear map of z gives the base_res x base_res features; each doubling is a ResBlock then an
    upsample. A style vector, an MLP of z concatenated with a projection of the condition and an
    embedding of the label, modulates every block's second norm (BigGAN's conditional norms, with
    GroupNorm)."""

    def __init__(self, resolution: int, cfg: GANConfig, cond_dim: int | None = None, n_labels: int = 0):
        super().__init__()
        self.z_dim, self.base = cfg.z_dim, cfg.base_res
        ch = cfg.channels_at
        self.cond = nn.Linear(cond_dim, cfg.z_dim) if cond_dim else None
        self.label = nn.Embedding(n_labels, cfg.z_dim) if n_labels else None
        parts = 1 + bool(cond_dim) + bool(n_labels)
        self.mapping = nn.Sequential(nn.Linear(cfg.z_dim * parts, cfg.z_dim), nn.SiLU(),
                                     nn.Linear(cfg.z_dim, cfg.z_dim))
        self.stem = nn.Linear(cfg.z_dim, ch(self.base) * self.base**2)
        blocks, side = [], self.base
        while side < resolution:
            blocks += [ResBlock(ch(side), ch(2 * side), cfg.groups, emb_dim=cfg.z_dim),
                       Upsample(ch(2 * side), cfg.upsample)]
            side *= 2
        blocks.append(ResBlock(ch(side), ch(side), cfg.groups, emb_dim=cfg.z_dim))
        self.blocks = Sequence(blocks)
        self.to_rgb = nn.Sequential(GroupNormSiLU(cfg.groups, ch(side)), nn.Conv2d(ch(side), 3, 3, padding=1),
                                    nn.Tanh())

    def forward(self, z: torch.Tensor, cond: torch.Tensor | None = None,
                label: torch.Tensor | None = None) -> torch.Tensor:
        parts = ([z] + ([self.cond(cond)] if self.cond is not None else [])
                 + ([self.label(label)] if self.label is not None else []))
        style = self.mapping(parts[0] if len(parts) == 1 else torch.cat(parts, dim=1))
        h = self.stem(z).view(z.shape[0], -1, self.base, self.base)
        return self.to_rgb(self.blocks(h, style))


class GANTask(Task):
    kind = "gan"
    sample_net = "gen"

    def __init__(self, cfg: GANConfig, resolution: int, cond_dim: int | None, autoencoder: nn.Module | None = None,
                 n_labels: int = 0):
        """autoencoder is ignored: the GAN works in pixel space."""
        ratio = resolution // cfg.base_res
        if resolution % cfg.base_res or ratio < 2 or ratio & (ratio - 1):
            raise ValueError(f"resolution {resolution} must be base_res ({cfg.base_res}) times a power of two >= 2 "
                             f"(the GAN doubles from {cfg.base_res}x{cfg.base_res})")
        super().__init__({"gen": Generator(resolution, cfg, cond_dim, n_labels),
                          "disc": ProjectionDiscriminator(resolution, cfg.base_res, cfg.channels_at, cond_dim, n_labels,
                                                          cfg.mbstd_group)},
                         cfg.optimizers())
        self.cfg, self.cond_dim, self.n_labels = cfg, cond_dim, n_labels

    def _cond(self, cond: torch.Tensor | None, n: int) -> torch.Tensor | None:
        if self.cond_dim is None:
            return None  # unconditional: a batch's embeddings are ignored
        if cond is None:
            raise ValueError(f"this GAN is conditioned on {self.cond_dim}-d embeddings: give cond")
        if cond.shape[0] < n or cond.shape[1:] != (self.cond_dim,):
            raise ValueError(f"cond of shape {tuple(cond.shape)}: need ({n}, {self.cond_dim})")
        return cond[:n]

    def _label(self, label: torch.Tensor | None, n: int) -> torch.Tensor | None:
        if not self.n_labels:
            return None  # no labels: a batch's labels are ignored
        if label is None:
            raise ValueError(f"this GAN is conditioned on {self.n_labels} labels (it has no null class): give label")
        return check_labels(label, n, self.n_labels)

    def train_step(self, batch, step, nets, opts, clip):
        real, cfg = batch["images"], self.cfg
        n = real.shape[0]
        cond, label = self._cond(batch.get("cond"), n), self._label(batch.get("label"), n)
        cond2 = None if cond is None else torch.cat([cond, cond])
        label2 = None if label is None else torch.cat([label, label])
        z_dim = unwrap(nets["gen"]).z_dim

        # D updates: reals and fakes in one forward (one spectral-norm update, one DDP forward).
        metrics = {}
        for i in range(cfg.d_steps):
            with torch.no_grad():
                fake = nets["gen"](torch.randn(n, z_dim, device=real.device), cond, label=label)
            r1 = cfg.r1_gamma > 0 and step % cfg.r1_every == 0 and i == 0
            x = real.detach().requires_grad_(r1)
            logits = nets["disc"](diff_augment(torch.cat([x, fake]), cfg.diffaug), cond2, label=label2, parts=2)
            d_real, d_fake = logits[:n], logits[n:]
            d_loss = hinge_d(d_real, d_fake)
            metrics.update(d_loss=d_loss.item(), d_real=d_real.mean().item(), d_fake=d_fake.mean().item())
            if r1:  # lazy R1: every r1_every steps, scaled by r1_every (StyleGAN2)
                (grad,) = torch.autograd.grad(d_real.sum(), x, create_graph=True)
                penalty = grad.square().sum(dim=(1, 2, 3)).mean()
                d_loss = d_loss + 0.5 * cfg.r1_gamma * cfg.r1_every * penalty
                metrics["r1"] = penalty.item()
            metrics["grad_norm_disc"] = self.backward_step("disc", d_loss, opts["disc"], clip)

        # G step: D frozen, called unwrapped (no parameter gradients, so nothing for DDP to reduce).
        fake = nets["gen"](torch.randn(n, z_dim, device=real.device), cond, label=label)
        with self.frozen(self.nets["disc"]):
            g_loss = hinge_g(self.nets["disc"](diff_augment(fake, cfg.diffaug), cond, label=label))
        metrics["g_loss"] = g_loss.item()
        metrics["grad_norm_gen"] = self.backward_step("gen", g_loss, opts["gen"], clip)
        return metrics

    @torch.no_grad()
    def validation_losses(self, batch, nets):
        """Hinge losses of D and G on the batch and fresh fakes (no augmentation)."""
        real = batch["images"]
        n = real.shape[0]
        cond, label = self._cond(batch.get("cond"), n), self._label(batch.get("label"), n)
        gen, disc = unwrap(nets["gen"]), unwrap(nets["disc"])
        with eval_mode(gen, disc):
            fake = gen(torch.randn(n, gen.z_dim, device=real.device), cond, label=label)
            d_real, d_fake = disc(real, cond, label=label), disc(fake, cond, label=label)
        return {"d_loss": float(hinge_d(d_real, d_fake)), "g_loss": float(hinge_g(d_fake)),
                "d_real": d_real.mean().item(), "d_fake": d_fake.mean().item()}

    @torch.no_grad()
    def sample(self, nets, n, generator, cond=None, images=None, steps=50, guidance=1.0, label=None):
        """n samples from z drawn from `generator`; conditional and labelled GANs need `cond` and
        `label` (guidance does not apply: a GAN has no null condition)."""
        gen = unwrap(nets["gen"])
        z = noise((n, gen.z_dim), generator, device_of(gen))
        cond, label = self._cond(cond, n), self._label(label, n)
        with eval_mode(gen):
            return gen(z, None if cond is None else cond.to(z.device),
                       label=None if label is None else label.to(z.device)).clamp(-1, 1)
