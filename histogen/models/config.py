"""Model configurations: one dataclass per kind, built from the YAML model section by `from_dict`.

Defaults are sized for real use (256-512 px patches on one large GPU). `TINY` (below) holds the
settings that train in seconds on a CPU at 32-64 px, for the `*-tiny` presets and the tests;
latent diffusion on the tiny autoencoder (32 px -> 4x4 latents) takes TINY["diffusion"] plus
{latent: true, attention_resolutions: [4]}.
"""
from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass

from histogen.models.diffaug import OPS as DIFFAUG_OPS


_SCALARS = {"int": int, "float": float, "bool": bool, "str": str}


def _coerce(where: str, hint: str, v):
    """v as the field type `hint` (its annotation string): lists become tuples, ints and numeric
    strings become floats (PyYAML reads 1e-4 as a string); anything else of the wrong type raises."""
    if hint.endswith(" | None"):
        if v is None:
            return None
        hint = hint.removesuffix(" | None")
    if hint.startswith("tuple["):
        if not isinstance(v, (list, tuple)):
            raise ValueError(f"{where}: expected a list, got {v!r}")
        return tuple(_coerce(where, hint[6:-1].split(", ")[0], e) for e in v)
    kind = _SCALARS[hint]
    if kind is float and isinstance(v, (int, str)) and not isinstance(v, bool):
        try:
            return float(v)
        except ValueError:
            pass
    if not isinstance(v, kind) or (kind is int and isinstance(v, bool)):
        raise ValueError(f"{where}: expected {hint}, got {v!r}")
    return v


def from_dict(cls, d: dict | None):
    """Build the dataclass `cls` from a plain dict (YAML): unknown keys raise ValueError naming them
    and listing the known ones; values are checked against the field types (see _coerce)."""
    d = dict(d or {})
    fields = {f.name: f.type for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - set(fields))
    if unknown:
        raise ValueError(f"unknown {cls.kind} model key(s) {', '.join(unknown)}; known keys: {', '.join(fields)}")
    return cls(**{k: _coerce(f"{cls.kind} model key {k}", fields[k], v) for k, v in d.items()})


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ValueError(message)


@dataclass(frozen=True)
class AutoencoderConfig:
    """KL autoencoder (taming / Stable Diffusion VAE layout): downsampling 2**(len(channel_mult)-1).

    Loss: L1 + ssim_weight * (1 - SSIM) + kl_weight * KL, KL summed over the latent and divided by
    the number of image values (so kl_weight means what it does in taming, where both terms are
    sums), + disc_weight * hinge generator loss of a patch discriminator from step disc_start on
    (disc_weight 0: no discriminator). The weight is fixed, not taming's adaptive one (that needs a
    gradient of the last decoder layer, awkward under DistributedDataParallel).
    """

    kind: typing.ClassVar[str] = "ae"
    channels: int = 128
    channel_mult: tuple[int, ...] = (1, 2, 4, 4)
    num_res_blocks: int = 2
    z_channels: int = 4
    groups: int = 32
    dropout: float = 0.0
    mid_attention: bool = True
    head_channels: int = 64
    ssim_weight: float = 0.2
    kl_weight: float = 1e-6
    disc_weight: float = 0.1
    disc_start: int = 20000
    disc_channels: int = 64
    disc_layers: int = 3
    lr: float = 1e-4
    lr_d: float = 1e-4
    betas: tuple[float, float] = (0.5, 0.9)
    weight_decay: float = 0.0

    def __post_init__(self):
        _check(len(self.channel_mult) >= 1 and self.num_res_blocks >= 1, "ae: channel_mult and num_res_blocks must be non-empty/>= 1")
        _check(self.disc_weight >= 0 and self.disc_start >= 0, "ae: disc_weight and disc_start must be >= 0")

    @property
    def downsample(self) -> int:
        return 2 ** (len(self.channel_mult) - 1)

    def optimizers(self) -> dict[str, dict]:
        hyper = {"ae": dict(lr=self.lr, betas=self.betas, weight_decay=self.weight_decay)}
        if self.disc_weight > 0:
            hyper["disc"] = dict(lr=self.lr_d, betas=self.betas, weight_decay=self.weight_decay)
        return hyper


@dataclass(frozen=True)
class GANConfig:
    """ResNet generator from a base_res x base_res start, doubling to the training resolution; the
    spectral-norm discriminator mirrors it. Channels at side r: min(channel_base // r, channel_max)
    (StyleGAN's rule, so one config serves every resolution). Hinge loss, lazy R1 (gamma r1_gamma,
    every r1_every D steps, scaled by r1_every), DiffAugment `diffaug` ("" = off) on real and fake."""

    kind: typing.ClassVar[str] = "gan"
    z_dim: int = 128
    base_res: int = 4
    channel_base: int = 16384
    channel_max: int = 512
    groups: int = 32
    r1_gamma: float = 1.0
    r1_every: int = 16
    diffaug: str = "color,translation,cutout"
    lr_g: float = 2e-4
    lr_d: float = 2e-4
    betas: tuple[float, float] = (0.0, 0.99)
    weight_decay: float = 0.0

    def __post_init__(self):
        ops = [op for op in self.diffaug.split(",") if op]
        _check(all(op in DIFFAUG_OPS for op in ops), f"gan: diffaug {self.diffaug!r}: ops are {', '.join(DIFFAUG_OPS)}")
        _check(self.r1_every >= 1 and self.r1_gamma >= 0, "gan: r1_every must be >= 1 and r1_gamma >= 0")
        _check(self.base_res >= 2, "gan: base_res must be >= 2")

    def channels_at(self, side: int) -> int:
        return min(self.channel_base // side, self.channel_max)

    def optimizers(self) -> dict[str, dict]:
        return {"gen": dict(lr=self.lr_g, betas=self.betas, weight_decay=self.weight_decay),
                "disc": dict(lr=self.lr_d, betas=self.betas, weight_decay=self.weight_decay)}


@dataclass(frozen=True)
class DiffusionConfig:
    """UNet (guided-diffusion layout; attention where the feature map side is in
    attention_resolutions), cosine schedule in continuous time, eps or v prediction, DDIM sampling
    (eta 0: deterministic given the initial noise), classifier-free guidance: the condition is
    replaced by a learned null embedding with probability cond_drop in training.

    latent: model a frozen autoencoder's latents, scaled by latent_scale; None = 1 / std of the
    first batch's latents, kept in the UNet's `latent_scale` buffer so that it travels in the
    UNet's checkpoint (0 there = not estimated yet).

    logsnr_min/max bound the schedule's log signal-to-noise ratio at t = 1 and t = 0. Pixel
    sampling clamps the x0 estimates to [-1, 1]; latent sampling cannot, so eps prediction in
    latent space wants a higher logsnr_min (about -6, as Stable Diffusion's schedule) or v.
    Defaults: latent diffusion at 256 px (32x32 latents) or pixel diffusion at 64 px.
    """

    kind: typing.ClassVar[str] = "diffusion"
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
    lr: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 0.0

    def __post_init__(self):
        _check(self.prediction in ("eps", "v"), f"diffusion: prediction must be 'eps' or 'v', not {self.prediction!r}")
        _check(0 <= self.cond_drop < 1, f"diffusion: cond_drop must be in [0, 1), not {self.cond_drop}")
        _check(self.logsnr_min < self.logsnr_max, "diffusion: logsnr_min must be < logsnr_max")
        _check(self.latent_scale is None or self.latent_scale > 0, "diffusion: latent_scale must be > 0 or null")

    @property
    def downsample(self) -> int:
        return 2 ** (len(self.channel_mult) - 1)

    def optimizers(self) -> dict[str, dict]:
        return {"unet": dict(lr=self.lr, betas=self.betas, weight_decay=self.weight_decay)}


CONFIGS = {c.kind: c for c in (AutoencoderConfig, GANConfig, DiffusionConfig)}


TINY = {
    "ae": dict(channels=16, channel_mult=(1, 2, 2, 2), num_res_blocks=1, groups=8, head_channels=32,
               disc_channels=16, disc_start=0, lr=1e-3, lr_d=1e-3),
    "gan": dict(z_dim=32, channel_base=1024, channel_max=64, groups=8, r1_every=4, lr_g=2e-3, lr_d=2e-3),
    "diffusion": dict(channels=32, channel_mult=(1, 2), num_res_blocks=1, attention_resolutions=(16,), groups=8,
                      head_channels=32, lr=2e-3),
}
