"""Building blocks shared by the autoencoder, the GAN generator and the UNet: one residual block
family (GroupNorm+SiLU, optionally modulated by an embedding), self-attention, resampling."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from histogen.kernels import GroupNormSiLU


def zero_(module: nn.Module) -> nn.Module:
    """Zero a layer's parameters: residual branches then start as the identity (stable early
    training, as in guided-diffusion)."""
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


class ResBlock(nn.Module):
    """norm-SiLU-conv, norm (modulated: * (1 + scale) + shift from `emb`)-SiLU-dropout-conv, plus a
    skip (1x1 conv when the width changes). emb_dim None: no modulation."""

    def __init__(self, cin: int, cout: int, groups: int, emb_dim: int | None = None, dropout: float = 0.0):
        super().__init__()
        self.norm1 = GroupNormSiLU(groups, cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.emb = nn.Sequential(nn.SiLU(), nn.Linear(emb_dim, 2 * cout)) if emb_dim else None
        self.norm2 = GroupNormSiLU(groups, cout)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = zero_(nn.Conv2d(cout, cout, 3, padding=1))
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor | None = None) -> torch.Tensor:
        h = self.conv1(self.norm1(x))
        scale = shift = None
        if self.emb is not None:
            scale, shift = self.emb(emb).chunk(2, dim=1)
        h = self.conv2(self.dropout(self.norm2(h, scale, shift)))
        return self.skip(x) + h


class Attention(nn.Module):
    """Multi-head self-attention over the pixels of a feature map, residual."""

    def __init__(self, channels: int, groups: int, head_channels: int = 64):
        super().__init__()
        self.heads = max(1, channels // head_channels)
        self.norm = GroupNormSiLU(groups, channels, silu=False)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = zero_(nn.Conv2d(channels, channels, 1))

    def forward(self, x: torch.Tensor, emb: torch.Tensor | None = None) -> torch.Tensor:
        n, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(n, 3, self.heads, c // self.heads, h * w).transpose(-1, -2).unbind(1)
        out = F.scaled_dot_product_attention(q, k, v)  # (n, heads, hw, c/heads)
        return x + self.proj(out.transpose(-1, -2).reshape(n, c, h, w))


class Downsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor | None = None) -> torch.Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    """2x resize then a 3x3 conv. mode "nearest" or "bilinear": nearest gives the four pixels of each
    2x2 cell one input, so a stack of them can paint one motif into every cell of the coarse grid
    (seen in GAN samples as a repeating pattern at the coarse period)."""

    def __init__(self, channels: int, mode: str = "nearest"):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)
        self.mode = mode

    def forward(self, x: torch.Tensor, emb: torch.Tensor | None = None) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode=self.mode))


class Sequence(nn.ModuleList):
    """Blocks applied in order, each given the same embedding."""

    def forward(self, x: torch.Tensor, emb: torch.Tensor | None = None) -> torch.Tensor:
        for block in self:
            x = block(x, emb)
        return x


def sinusoidal(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal features (N, dim) of the scalars t (N,) (transformer positional encoding)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    angles = t.float()[:, None] * freqs[None]
    return torch.cat([angles.cos(), angles.sin()], dim=1)
