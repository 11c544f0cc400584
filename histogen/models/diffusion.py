"""Diffusion in continuous time t in [0, 1]: its config, cosine schedule, eps/v parameterisations,
DDIM sampling with classifier-free guidance, and the task (pixel space, or a frozen autoencoder's
latents). The network is the UNet of unet.py."""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from histogen.models.task import (Task, check_labels, check_resolution, device_of, draw, eval_mode, noise, require,
                                  unwrap)
from histogen.models.unet import UNet


@dataclass(frozen=True)
class DiffusionConfig:
    """UNet (guided-diffusion layout; attention where the feature map side is in
    attention_resolutions), cosine schedule in continuous time, eps or v prediction, DDIM sampling
    (eta 0: deterministic given the initial noise), classifier-free guidance: the condition is
    replaced by a learned null embedding, and a slide label by the null class, with probability
    cond_drop in training (one draw for both).

    latent: model a frozen autoencoder's latents, scaled by latent_scale; None = 1 / std of the
    first batch's latents, kept in the UNet's `latent_scale` buffer so that it travels in the
    UNet's checkpoint (0 there = not estimated yet).

    logsnr_min/max bound the schedule's log signal-to-noise ratio at t = 1 and t = 0. Pixel
    sampling clamps the x0 estimates to [-1, 1]; latent sampling cannot, so eps prediction in
    latent space wants a higher logsnr_min (about -6, as Stable Diffusion's schedule) or v.
    Defaults: latent diffusion at 256 px (32x32 latents) or pixel diffusion at 64 px.

    loss_weight: "uniform" (plain MSE on the prediction target) or "min_snr": each sample's error
    weighted by min(SNR, snr_gamma) / SNR for eps, / (SNR + 1) for v (Hang et al. 2023, min-SNR-γ),
    which stops the nearly clean timesteps from dominating and converges several times faster.
    Validation losses are unweighted either way, so runs of either weighting compare.
    """

    channels: int = 128
    channel_mult: tuple[int, ...] = (1, 2, 2, 4)
    num_res_blocks: int = 2
    attention_resolutions: tuple[int, ...] = (16, 8)
    head_channels: int = 64
    groups: int = 32
    dropout: float = 0.0
    prediction: str = "v"
    cond_drop: float = 0.1
    eta: float = 0.0
    logsnr_min: float = -15.0
    logsnr_max: float = 15.0
    latent: bool = False
    latent_scale: float | None = None
    loss_weight: str = "uniform"
    snr_gamma: float = 5.0
    lr: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 0.0

    def __post_init__(self):
        require(self.prediction in ("eps", "v"), f"diffusion: prediction must be 'eps' or 'v', not {self.prediction!r}")
        require(0 <= self.cond_drop < 1, f"diffusion: cond_drop must be in [0, 1), not {self.cond_drop}")
        require(self.logsnr_min < self.logsnr_max, "diffusion: logsnr_min must be < logsnr_max")
        require(self.latent_scale is None or self.latent_scale > 0, "diffusion: latent_scale must be > 0 or null")
        require(self.loss_weight in ("uniform", "min_snr"),
                f"diffusion: loss_weight must be 'uniform' or 'min_snr', not {self.loss_weight!r}")
        require(self.snr_gamma > 0, f"diffusion: snr_gamma must be > 0, not {self.snr_gamma}")

    @property
    def downsample(self) -> int:
        return 2 ** (len(self.channel_mult) - 1)

    def optimizers(self) -> dict[str, dict]:
        return {"unet": dict(lr=self.lr, betas=self.betas, weight_decay=self.weight_decay)}


class CosineSchedule:
    """x_t = alpha(t) x_0 + sigma(t) eps with alpha^2 + sigma^2 = 1 and alpha^2 = cos^2(pi t / 2)
    (Nichol & Dhariwal's cosine schedule, s = 0) written through the log signal-to-noise ratio
    logsnr(t) = -2 log tan(a t + b), with a, b such that logsnr runs from logsnr_max at t = 0 to
    logsnr_min at t = 1: both ends stay finite (Kingma et al. 2021, Hoogeboom et al. 2023)."""

    def __init__(self, logsnr_min: float = -15.0, logsnr_max: float = 15.0):
        self.b = math.atan(math.exp(-0.5 * logsnr_max))
        self.a = math.atan(math.exp(-0.5 * logsnr_min)) - self.b

    def logsnr(self, t: torch.Tensor) -> torch.Tensor:
        return -2 * torch.log(torch.tan(self.a * t + self.b))

    def alpha_sigma(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """alpha, sigma shaped (N, 1, 1, 1) for t (N,)."""
        lam = self.logsnr(t.double()).view(-1, 1, 1, 1)
        return torch.sigmoid(lam).sqrt().float(), torch.sigmoid(-lam).sqrt().float()


def target(prediction: str, x0: torch.Tensor, eps: torch.Tensor, alpha, sigma) -> torch.Tensor:
    """What the network learns to output: eps, or v = alpha eps - sigma x0 (Salimans & Ho 2022)."""
    return eps if prediction == "eps" else alpha * eps - sigma * x0


def loss_weight(cfg: DiffusionConfig, logsnr: torch.Tensor) -> torch.Tensor:
    """Per-sample weight of the prediction error at log-SNR `logsnr` (N,) (DiffusionConfig.loss_weight)."""
    if cfg.loss_weight == "uniform":
        return torch.ones_like(logsnr)
    snr = logsnr.exp()
    return snr.clamp(max=cfg.snr_gamma) / (snr if cfg.prediction == "eps" else snr + 1)


def split(prediction: str, out: torch.Tensor, xt: torch.Tensor, alpha, sigma) -> tuple[torch.Tensor, torch.Tensor]:
    """The network output at x_t as (x0, eps) estimates."""
    if prediction == "eps":
        return (xt - sigma * out) / alpha, out
    return alpha * xt - sigma * out, sigma * xt + alpha * out


def guide(unet: nn.Module, xt: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None, label: torch.Tensor | None,
          guidance: float) -> torch.Tensor:
    """Classifier-free guidance: null + w (cond - null), the conditioned and the null half (condition
    and label dropped) in one batch. At w = 1 it equals the unguided unet(xt, t, cond, label=label)."""
    n = xt.shape[0]
    twice = lambda v: None if v is None else torch.cat([v, v])  # noqa: E731
    drop = torch.arange(2 * n, device=xt.device) >= n  # second half: null condition
    c, u = unet(twice(xt), twice(t), twice(cond), drop, label=twice(label)).chunk(2)
    return u + guidance * (c - u)


def ddim(denoise, x: torch.Tensor, schedule: CosineSchedule, steps: int, eta: float = 0.0,
         clip: bool = False, generator: torch.Generator | None = None) -> torch.Tensor:
    """DDIM (Song et al. 2021) from pure noise x at t = 1 to t = 0 in `steps` equal steps; returns
    the final x0 estimate. denoise(x_t, t (N,), alpha, sigma) -> (x0, eps). eta 0 is deterministic
    given x; eta > 0 adds DDIM's noise, drawn from `generator`. clip: clamp the x0 estimates to
    [-1, 1] (pixel space) and recompute eps from them."""
    if steps < 1:
        raise ValueError(f"DDIM needs steps >= 1, not {steps}")
    ts = torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64)
    for t, s in zip(ts[:-1], ts[1:]):
        tt = torch.full((x.shape[0],), float(t), device=x.device)
        alpha_t, sigma_t = schedule.alpha_sigma(tt)
        x0, eps = denoise(x, tt, alpha_t, sigma_t)
        if clip:
            x0 = x0.clamp(-1, 1)
            eps = (x - alpha_t * x0) / sigma_t
        if s > 0:
            alpha_s, sigma_s = schedule.alpha_sigma(torch.full_like(tt, float(s)))
            c = eta * (sigma_s**2 / sigma_t**2 * (1 - alpha_t**2 / alpha_s**2)).clamp(min=0).sqrt()
            x = alpha_s * x0 + (sigma_s**2 - c**2).sqrt() * eps
            if eta > 0:
                x = x + c * noise(x.shape, generator, x.device)
    return x0


class DiffusionTask(Task):
    kind = "diffusion"
    sample_net = "unet"

    def __init__(self, cfg: DiffusionConfig, resolution: int, cond_dim: int | None, autoencoder: nn.Module | None,
                 n_labels: int = 0):
        if cfg.latent and autoencoder is None:
            raise ValueError("latent diffusion (model: {latent: true}) needs the trained autoencoder; none was given")
        ae_factor = autoencoder.downsample if cfg.latent else 1
        check_resolution(resolution, ae_factor * cfg.downsample,
                         f"the autoencoder downsamples by {ae_factor} and the UNet by {cfg.downsample}" if cfg.latent
                         else f"the UNet downsamples by {cfg.downsample}")
        self.autoencoder = autoencoder.eval().requires_grad_(False) if cfg.latent else None
        channels = autoencoder.z_channels if cfg.latent else 3
        unet = UNet(channels, resolution // ae_factor, cfg, cond_dim,
                    latent_scale=(cfg.latent_scale or 0.0) if cfg.latent else None, n_labels=n_labels)
        super().__init__({"unet": unet}, cfg.optimizers())
        self.cfg, self.cond_dim, self.shape = cfg, cond_dim, (channels, resolution // ae_factor,
                                                              resolution // ae_factor)
        self.n_labels = n_labels
        self.schedule = CosineSchedule(cfg.logsnr_min, cfg.logsnr_max)

    def _cond(self, cond: torch.Tensor | None, n: int) -> torch.Tensor | None:
        if self.cond_dim is None or cond is None:
            return None  # unconditional model, or the null condition of a conditional one
        if cond.shape[0] < n or cond.shape[1:] != (self.cond_dim,):
            raise ValueError(f"cond of shape {tuple(cond.shape)}: need ({n}, {self.cond_dim})")
        return cond[:n]

    def _label(self, label: torch.Tensor | None, n: int) -> torch.Tensor | None:
        if not self.n_labels or label is None:
            return None  # no labels, or the null class of a labelled model
        return check_labels(label, n, self.n_labels)

    def _ae(self, device) -> nn.Module:
        if device_of(self.autoencoder) != device:
            self.autoencoder.to(device)
        return self.autoencoder

    @torch.no_grad()
    def _latents(self, x: torch.Tensor, unet: nn.Module) -> torch.Tensor:
        """Scaled latents of images x; the scale is estimated on the first batch if not set."""
        ae = self._ae(x.device)
        z = ae.latent(*ae.encode(x))
        if unet.latent_scale == 0:
            unet.latent_scale.fill_(1.0 / z.float().std().clamp(min=1e-6))
        return z * unet.latent_scale

    def _loss(self, unet_call, x: torch.Tensor, t: torch.Tensor, cond, drop=None, seeds=None, label=None,
              weighted: bool = False) -> torch.Tensor:
        eps = draw(seeds, len(x), tuple(x.shape[1:]), x.device, normal=True, salt=0).to(x.dtype)
        alpha, sigma = self.schedule.alpha_sigma(t)
        out = unet_call(alpha * x + sigma * eps, t, cond, drop, label=label)
        err = (out.float() - target(self.cfg.prediction, x, eps, alpha, sigma)).pow(2).flatten(1).mean(1)
        if weighted:
            err = err * loss_weight(self.cfg, self.schedule.logsnr(t.double()).float())
        return err.mean()

    def train_step(self, batch, step, nets, opts, clip):
        x = batch["images"]
        n = x.shape[0]
        if self.cfg.latent:
            x = self._latents(x, self.nets["unet"])
        cond, label = self._cond(batch.get("cond"), n), self._label(batch.get("label"), n)
        seeds = batch.get("seeds")
        # One draw drops the embedding and the label together: guidance is against the null of both.
        drop = (None if cond is None and label is None
                else draw(seeds, n, (), x.device, normal=False, salt=1) < self.cfg.cond_drop)
        t = draw(seeds, n, (), x.device, normal=False, salt=2)
        loss = self._loss(nets["unet"], x, t, cond, drop, seeds, label, weighted=True)
        return {"loss": loss.item(), "grad_norm_unet": self.backward_step("unet", loss, opts["unet"], clip)}

    @torch.no_grad()
    def validation_losses(self, batch, nets):
        """The loss at evenly spread times (less variance than random ones), the condition kept."""
        unet = unwrap(nets["unet"])
        x = batch["images"]
        n = x.shape[0]
        with eval_mode(unet):
            if self.cfg.latent:
                x = self._latents(x, unet)
            t = (torch.arange(n, device=x.device) + 0.5) / n
            return {"loss": float(self._loss(unet, x, t, self._cond(batch.get("cond"), n),
                                             label=self._label(batch.get("label"), n)))}

    @torch.no_grad()
    def sample(self, nets, n, generator, cond=None, images=None, steps=50, guidance=1.0, label=None):
        """DDIM with `steps` steps from noise drawn from `generator`; with a condition (embedding,
        label (n,) class ids, or both) and guidance w != 1, classifier-free guidance (`guide`).
        Without cond or label a conditional or labelled model samples from the null condition."""
        unet = unwrap(nets["unet"])
        device = device_of(unet)
        cond, label = self._cond(cond, n), self._label(label, n)
        cond = None if cond is None else cond.to(device)
        label = None if label is None else label.to(device)
        guided = (cond is not None or label is not None) and guidance != 1.0

        def denoise(xt, t, alpha, sigma):
            if guided:
                out = guide(unet, xt, t, cond, label, guidance)
            else:
                out = unet(xt, t, cond, label=label)
            return split(self.cfg.prediction, out.float(), xt, alpha, sigma)

        if self.cfg.latent and unet.latent_scale == 0:
            raise ValueError("latent diffusion: the latent scale is not known yet (train a step first, "
                             "or set latent_scale in the model config)")
        with eval_mode(unet):
            x = ddim(denoise, noise((n, *self.shape), generator, device), self.schedule, steps,
                     self.cfg.eta, clip=not self.cfg.latent, generator=generator)
        if self.cfg.latent:
            x = self._ae(device).decode(x / unet.latent_scale)
        return x.clamp(-1, 1)
