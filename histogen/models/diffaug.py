"""DiffAugment (Zhao et al. 2020): differentiable colour, translation and cutout augmentation, drawn
independently per image. Applied to real and fake images before the discriminator, it keeps D
from memorising a small training set while G still gets gradients through it."""
from __future__ import annotations

import torch


def _rand(x: torch.Tensor, generator, *shape) -> torch.Tensor:
    return torch.rand(x.shape[0], *shape, device=x.device, dtype=x.dtype, generator=generator)


def color(x: torch.Tensor, generator=None) -> torch.Tensor:
    """Random brightness (+-0.5), saturation (x0..2) and contrast (x0.5..1.5) per image."""
    x = x + (_rand(x, generator, 1, 1, 1) - 0.5)
    mean = x.mean(dim=1, keepdim=True)
    x = (x - mean) * (_rand(x, generator, 1, 1, 1) * 2) + mean
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return (x - mean) * (_rand(x, generator, 1, 1, 1) + 0.5) + mean


def _grid(x: torch.Tensor):
    """Row and column indices, broadcastable to (N, H, W)."""
    h, w = x.shape[-2:]
    return torch.arange(h, device=x.device).view(1, h, 1), torch.arange(w, device=x.device).view(1, 1, w)


def _randint(x: torch.Tensor, generator, low: int, high: int) -> torch.Tensor:
    return torch.randint(low, high, (x.shape[0], 1, 1), device=x.device, generator=generator)


def translation(x: torch.Tensor, generator=None, ratio: float = 0.125) -> torch.Tensor:
    """Shift each image by up to ratio of its size in x and y, filling with zeros."""
    n, c, h, w = x.shape
    sy, sx = int(h * ratio + 0.5), int(w * ratio + 0.5)
    gy, gx = _grid(x)
    gy = gy + _randint(x, generator, -sy, sy + 1)
    gx = gx + _randint(x, generator, -sx, sx + 1)
    inside = (gy >= 0) & (gy < h) & (gx >= 0) & (gx < w)  # (n, h, w)
    index = (gy.clamp(0, h - 1) * w + gx.clamp(0, w - 1)).view(n, 1, h * w).expand(n, c, h * w)
    return x.flatten(2).gather(2, index).view(n, c, h, w) * inside.unsqueeze(1)


def cutout(x: torch.Tensor, generator=None, ratio: float = 0.5) -> torch.Tensor:
    """Zero a square of ratio of the image size at a random place (it may overhang the border)."""
    n, _, h, w = x.shape
    ch, cw = int(h * ratio + 0.5), int(w * ratio + 0.5)
    gy, gx = _grid(x)
    y0 = _randint(x, generator, -(ch // 2), h - ch // 2)
    x0 = _randint(x, generator, -(cw // 2), w - cw // 2)
    hole = (gy >= y0) & (gy < y0 + ch) & (gx >= x0) & (gx < x0 + cw)
    return x * (~hole).unsqueeze(1)


OPS = {"color": color, "translation": translation, "cutout": cutout}


def diff_augment(x: torch.Tensor, policy: str, generator: torch.Generator | None = None) -> torch.Tensor:
    """Apply the comma-separated ops of `policy` ("" = none) in order."""
    for name in filter(None, policy.split(",")):
        x = OPS[name](x, generator)
    return x
