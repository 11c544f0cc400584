"""The convolutional KL autoencoder (the latent space of latent diffusion): its config, networks
and training task."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from histogen.kernels import GroupNormSiLU
from histogen.models.blocks import Attention, Downsample, ResBlock, Sequence, Upsample
from histogen.models.disc import PatchDiscriminator, hinge_d, hinge_g
from histogen.models.ssim import ssim
from histogen.models.task import Task, check_resolution, device_of, eval_mode, noise, require, unwrap


@dataclass(frozen=True)
class AutoencoderConfig:
    """KL autoencoder (taming / Stable Diffusion VAE layout): downsampling 2**(len(channel_mult)-1).

    Loss: L1 + ssim_weight * (1 - SSIM) + kl_weight * KL, KL summed over the latent and divided by
    the number of image values (so kl_weight means what it does in taming, where both terms are
    sums), + disc_weight * hinge generator loss of a patch discriminator from step disc_start on
    (disc_weight 0: no discriminator). The weight is fixed, not taming's adaptive one (that needs a
    gradient of the last decoder layer, awkward under DistributedDataParallel).
    """

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
    # False: the encoder keeps its initial weights (train.init_from): a decoder fine-tuned under a latent
    # diffusion already trained on this encoder's latents (histogen export --autoencoder swaps it in)
    train_encoder: bool = True

    def __post_init__(self):
        require(len(self.channel_mult) >= 1 and self.num_res_blocks >= 1,
                "ae: channel_mult and num_res_blocks must be non-empty/>= 1")
        require(self.disc_weight >= 0 and self.disc_start >= 0, "ae: disc_weight and disc_start must be >= 0")

    @property
    def downsample(self) -> int:
        return 2 ** (len(self.channel_mult) - 1)

    def optimizers(self) -> dict[str, dict]:
        hyper = {"ae": dict(lr=self.lr, betas=self.betas, weight_decay=self.weight_decay)}
        if self.disc_weight > 0:
            hyper["disc"] = dict(lr=self.lr_d, betas=self.betas, weight_decay=self.weight_decay)
        return hyper


def _mid(channels: int, cfg: AutoencoderConfig) -> Sequence:
    blocks = [ResBlock(channels, channels, cfg.groups, dropout=cfg.dropout)]
    if cfg.mid_attention:
        blocks.append(Attention(channels, cfg.groups, cfg.head_channels))
    blocks.append(ResBlock(channels, channels, cfg.groups, dropout=cfg.dropout))
    return Sequence(blocks)


class LatentEncoder(nn.Module):
    """Images -> the (mean, logvar) channels of the latent posterior."""

    def __init__(self, cfg: AutoencoderConfig):
        super().__init__()
        widths = [cfg.channels * m for m in cfg.channel_mult]
        blocks, cin = [nn.Conv2d(3, cfg.channels, 3, padding=1)], cfg.channels
        for level, width in enumerate(widths):
            for _ in range(cfg.num_res_blocks):
                blocks.append(ResBlock(cin, width, cfg.groups, dropout=cfg.dropout))
                cin = width
            if level < len(widths) - 1:
                blocks.append(Downsample(cin))
        blocks += [_mid(cin, cfg), GroupNormSiLU(cfg.groups, cin), nn.Conv2d(cin, 2 * cfg.z_channels, 3, padding=1)]
        self.net = nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class LatentDecoder(nn.Module):
    """Latents -> images."""

    def __init__(self, cfg: AutoencoderConfig):
        super().__init__()
        widths = [cfg.channels * m for m in cfg.channel_mult]
        cin = widths[-1]
        blocks = [nn.Conv2d(cfg.z_channels, cin, 3, padding=1), _mid(cin, cfg)]
        for level in reversed(range(len(widths))):
            for _ in range(cfg.num_res_blocks + 1):
                blocks.append(ResBlock(cin, widths[level], cfg.groups, dropout=cfg.dropout))
                cin = widths[level]
            if level > 0:
                blocks.append(Upsample(cin))
        blocks += [GroupNormSiLU(cfg.groups, cin), nn.Conv2d(cin, 3, 3, padding=1)]
        self.net = nn.Sequential(*blocks)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)


class Autoencoder(nn.Module):
    """x (N, 3, H, W) in [-1, 1] <-> latents (N, z_channels, H/f, W/f), f = `downsample`.

    encode(x) -> (mean, logvar) of the diagonal Gaussian posterior; `latent(mean, logvar,
    generator)` draws from it; decode(z) -> images (unclamped). forward(x) = (reconstruction of a
    posterior sample, mean, logvar) for training. The latents are unscaled: latent diffusion keeps
    its own scale factor (DiffusionConfig.latent_scale)."""

    def __init__(self, cfg: AutoencoderConfig):
        super().__init__()
        self.downsample = cfg.downsample
        self.z_channels = cfg.z_channels
        self.encoder = LatentEncoder(cfg)
        self.decoder = LatentDecoder(cfg)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean, logvar = self.encoder(x).chunk(2, dim=1)
        return mean, logvar.clamp(-30.0, 20.0)  # taming's bounds: exp stays finite

    @staticmethod
    def latent(mean: torch.Tensor, logvar: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        return mean + (0.5 * logvar).exp() * noise(mean.shape, generator, mean.device)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(z)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        mean, logvar = self.encode(x)
        return self.decode(self.latent(mean, logvar)), mean, logvar


def kl_per_value(mean: torch.Tensor, logvar: torch.Tensor, image_values: int) -> torch.Tensor:
    """KL(posterior || N(0, I)) summed over each latent, divided by the values of its image, batch mean."""
    kl = 0.5 * (mean.square() + logvar.exp() - 1.0 - logvar)
    return kl.flatten(1).sum(1).mean() / image_values


class AutoencoderTask(Task):
    kind = "ae"
    sample_net = "ae"
    reconstructs = True

    def __init__(self, cfg: AutoencoderConfig, resolution: int, cond_dim: int | None = None,
                 autoencoder: nn.Module | None = None, n_labels: int = 0):
        """cond_dim and autoencoder are ignored: an autoencoder is unconditional and its own latent space."""
        if n_labels:
            raise ValueError("an autoencoder is not conditioned on labels; leave data.label unset "
                             "(condition the diffusion on them)")
        check_resolution(resolution, cfg.downsample, f"the autoencoder downsamples by {cfg.downsample}")
        nets = {"ae": Autoencoder(cfg)}
        if not cfg.train_encoder:
            nets["ae"].encoder.requires_grad_(False)  # no gradient: its optimizer passes it over, its EMA is itself
        if cfg.disc_weight > 0:
            nets["disc"] = PatchDiscriminator(cfg.disc_channels, cfg.disc_layers)
        super().__init__(nets, cfg.optimizers())
        self.cfg = cfg

    def _losses(self, x, rec, mean, logvar) -> dict[str, torch.Tensor]:
        l1 = (rec - x).abs().mean()
        s = ssim(rec, x).mean()
        kl = kl_per_value(mean, logvar, x[0].numel())
        return {"loss": l1 + self.cfg.ssim_weight * (1 - s) + self.cfg.kl_weight * kl, "l1": l1, "ssim": s, "kl": kl}

    def train_step(self, batch, step, nets, opts, clip):
        x = batch["images"]
        rec, mean, logvar = nets["ae"](x)
        losses = self._losses(x, rec, mean, logvar)
        adversarial = "disc" in nets and step >= self.cfg.disc_start
        if adversarial:
            with self.frozen(self.nets["disc"]):  # the generator loss needs gradients of the input only
                losses["g_adv"] = hinge_g(self.nets["disc"](rec))
            losses["loss"] = losses["loss"] + self.cfg.disc_weight * losses["g_adv"]
        metrics = {k: v.item() for k, v in losses.items()}
        metrics["grad_norm_ae"] = self.backward_step("ae", losses["loss"], opts["ae"], clip)
        if adversarial:  # reals and fakes in one forward: one spectral-norm update, one DDP forward
            logits = nets["disc"](torch.cat([x, rec.detach()]))
            d_loss = hinge_d(*logits.chunk(2))
            metrics["d_loss"] = d_loss.item()
            metrics["grad_norm_disc"] = self.backward_step("disc", d_loss, opts["disc"], clip)
        return metrics

    @torch.no_grad()
    def validation_losses(self, batch, nets):
        x = batch["images"]
        ae = unwrap(nets["ae"])
        with eval_mode(ae):
            mean, logvar = ae.encode(x)
            rec = ae.decode(mean)
        losses = self._losses(x, rec, mean, logvar)
        out = {k: v.item() for k, v in losses.items()}
        out["psnr"] = float(10 * torch.log10(4.0 / F.mse_loss(rec.clamp(-1, 1), x)))
        return out

    @torch.no_grad()
    def sample(self, nets, n, generator, cond=None, images=None, steps=50, guidance=1.0, label=None):
        """Reconstructions (posterior means decoded, deterministic) of the first n `images`."""
        if images is None:
            raise ValueError("ae sample: reconstructions need `images`")
        ae = unwrap(nets["ae"])
        with eval_mode(ae):
            return ae.decode(ae.encode(images[:n].to(device_of(ae)))[0]).clamp(-1, 1)
