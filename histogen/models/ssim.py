"""SSIM (Wang et al. 2004): gaussian window (11 px, sigma 1.5), per channel, valid positions only
(no padding), K1 = 0.01, K2 = 0.03. Differentiable: the autoencoder's loss and the evaluation use it."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def gaussian_window(size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """The normalised 1-d gaussian (size,); the 2-d window is its outer product."""
    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-x.square() / (2 * sigma**2))
    return (g / g.sum()).float()


def _blur(x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    c = x.shape[1]
    x = F.conv2d(x, g.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    return F.conv2d(x, g.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


def ssim(x: torch.Tensor, y: torch.Tensor, data_range: float = 2.0, window: int = 11,
         sigma: float = 1.5) -> torch.Tensor:
    """Mean SSIM per image (N,) of x, y (N, C, H, W); data_range = max - min of the value range
    (2 for [-1, 1]). Computed in float32, autocast or not: the variances are differences of
    near-equal means, which bf16 convolutions cancel to zero or below (the loss went NaN)."""
    if x.shape != y.shape or x.dim() != 4:
        raise ValueError(f"ssim needs two (N, C, H, W) tensors of one shape, got {tuple(x.shape)} and {tuple(y.shape)}")
    if min(x.shape[-2:]) < window:
        raise ValueError(f"ssim: images {tuple(x.shape[-2:])} are smaller than the {window} px window")
    with torch.autocast(x.device.type, enabled=False):
        return _ssim(x.float(), y.float(), data_range, window, sigma)


def _ssim(x: torch.Tensor, y: torch.Tensor, data_range: float, window: int, sigma: float) -> torch.Tensor:
    g = gaussian_window(window, sigma).to(x.device)
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    mx, my = _blur(x, g), _blur(y, g)
    vx = _blur(x * x, g) - mx * mx
    vy = _blur(y * y, g) - my * my
    cov = _blur(x * y, g) - mx * my
    s = ((2 * mx * my + c1) * (2 * cov + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
    return s.mean(dim=(1, 2, 3))
