"""H&E colour deconvolution (Ruifrok & Johnston 2001, the matrix scikit-image's rgb2hed uses):
RGB in (0, 1] <-> optical densities of haematoxylin, eosin and a residual (DAB) channel. Used to
jitter stains in training and to compare stain distributions in evaluation."""
from __future__ import annotations

import torch

RGB_FROM_HED = torch.tensor([[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]])
HED_FROM_RGB = torch.linalg.inv(RGB_FROM_HED)


def to_hed(rgb: torch.Tensor) -> torch.Tensor:
    """(..., 3) RGB in (0, 1] -> (..., 3) stain optical densities (natural log)."""
    return -torch.log(rgb.float()) @ HED_FROM_RGB.to(rgb.device)


def from_hed(hed: torch.Tensor) -> torch.Tensor:
    """The inverse of `to_hed`."""
    return torch.exp(-(hed @ RGB_FROM_HED.to(hed.device)))


def stain_jitter(x: torch.Tensor, sigma: float, gen: torch.Generator) -> torch.Tensor:
    """Scale and shift each stain's optical density per image (x in [-1, 1], NCHW)."""
    n = x.shape[0]
    alpha = 1 + (torch.rand(n, 1, 3, generator=gen) * 2 - 1) * sigma
    beta = (torch.rand(n, 1, 3, generator=gen) * 2 - 1) * sigma
    rgb = ((x.float() + 1) / 2).clamp(1e-4, 1).flatten(2).transpose(1, 2)  # (n, HW, 3)
    out = from_hed(to_hed(rgb) * alpha.to(x.device) + beta.to(x.device)).clamp(0, 1).transpose(1, 2).reshape(x.shape)
    return (out * 2 - 1).to(x.dtype)
