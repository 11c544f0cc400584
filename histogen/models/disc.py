"""Spectral-norm discriminators and the hinge losses: the GAN's projection discriminator and the
autoencoder's patch discriminator. No normalisation layers: spectral norm bounds D's Lipschitz
constant, and batch statistics would couple real and fake batches."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm as sn


def hinge_d(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    return F.relu(1 - real_logits).mean() + F.relu(1 + fake_logits).mean()


def hinge_g(fake_logits: torch.Tensor) -> torch.Tensor:
    return -fake_logits.mean()


def _lrelu(x: torch.Tensor) -> torch.Tensor:
    return F.leaky_relu(x, 0.2)


def minibatch_std(h: torch.Tensor, group: int, parts: int = 1) -> torch.Tensor:
    """StyleGAN's minibatch standard deviation: h (N, C, H, W) with one channel more, holding, for
    each group of up to `group` consecutive samples, the standard deviation of every feature over the
    group, averaged. A generator that draws one image for every z shows D a std near zero. The batch
    is `parts` equal parts (reals, fakes) that no group straddles."""
    n, c, height, width = h.shape
    m = n // parts
    g = max(d for d in range(1, min(group, m) + 1) if m % d == 0)
    std = (h.view(n // g, g, c, height, width).var(dim=1, unbiased=False) + 1e-8).sqrt().mean(dim=(1, 2, 3))
    return torch.cat([h, std.repeat_interleave(g).view(n, 1, 1, 1).expand(n, 1, height, width)], dim=1)


class DBlock(nn.Module):
    """Residual block halving the resolution (BigGAN's D block, leaky ReLU)."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.conv1 = sn(nn.Conv2d(cin, cout, 3, padding=1))
        self.conv2 = sn(nn.Conv2d(cout, cout, 3, padding=1))
        self.skip = sn(nn.Conv2d(cin, cout, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv2(_lrelu(self.conv1(_lrelu(x))))
        return F.avg_pool2d(h + self.skip(x), 2)


class ProjectionDiscriminator(nn.Module):
    """Images (N, 3, R, R) -> logits (N,): DBlocks from R down to base_res, with mbstd_group > 0 a
    minibatch-std channel and a 3x3 conv there, global sum pooling, a linear head plus, when
    conditional, the projection <embed(cond), features> and, when labelled, the projection
    <embed(label), features> (Miyato & Koyama). `parts`: the batch is that many equal parts (reals
    and fakes in one call) whose samples the minibatch std never mixes."""

    def __init__(self, resolution: int, base_res: int, channels_at, cond_dim: int | None = None, n_labels: int = 0,
                 mbstd_group: int = 0):
        super().__init__()
        self.from_rgb = sn(nn.Conv2d(3, channels_at(resolution), 3, padding=1))
        blocks, side = [], resolution
        while side > base_res:
            blocks.append(DBlock(channels_at(side), channels_at(side // 2)))
            side //= 2
        self.blocks = nn.Sequential(*blocks)
        width = channels_at(base_res)
        self.mbstd_group = mbstd_group
        self.mbstd_conv = sn(nn.Conv2d(width + 1, width, 3, padding=1)) if mbstd_group else None
        self.head = sn(nn.Linear(width, 1))
        self.embed = sn(nn.Linear(cond_dim, width, bias=False)) if cond_dim else None
        self.label_embed = sn(nn.Embedding(n_labels, width)) if n_labels else None

    def forward(self, x: torch.Tensor, cond: torch.Tensor | None = None, label: torch.Tensor | None = None,
                parts: int = 1) -> torch.Tensor:
        h = _lrelu(self.blocks(self.from_rgb(x)))
        if self.mbstd_conv is not None:
            h = _lrelu(self.mbstd_conv(minibatch_std(h, self.mbstd_group, parts)))
        h = h.sum(dim=(2, 3))
        out = self.head(h).squeeze(1)
        if self.embed is not None:
            out = out + (self.embed(cond) * h).sum(1)
        if self.label_embed is not None:
            out = out + (self.label_embed(label) * h).sum(1)
        return out


class PatchDiscriminator(nn.Module):
    """PatchGAN (taming's NLayerDiscriminator with spectral norm for batch norm): images ->
    logits (N, 1, h, w), one per ~70 px receptive field at layers=3."""

    def __init__(self, channels: int = 64, layers: int = 3):
        super().__init__()
        widths = [channels * min(2**i, 8) for i in range(layers + 1)]
        convs = [sn(nn.Conv2d(3, widths[0], 4, stride=2, padding=1))]
        for i in range(1, layers + 1):
            convs.append(sn(nn.Conv2d(widths[i - 1], widths[i], 4, stride=2 if i < layers else 1, padding=1)))
        self.convs = nn.ModuleList(convs)
        self.out = sn(nn.Conv2d(widths[-1], 1, 4, padding=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for conv in self.convs:
            x = _lrelu(conv(x))
        return self.out(x)
