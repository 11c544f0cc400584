"""GroupNorm + optional modulation + optional SiLU: the dispatching function and its module."""
from __future__ import annotations

import torch
from torch import nn

from histogen.kernels.dispatch import backend
from histogen.kernels.reference import groupnorm_silu_reference


def group_norm_silu(x: torch.Tensor, num_groups: int, weight=None, bias=None, eps: float = 1e-5,
                    scale=None, shift=None, silu: bool = True) -> torch.Tensor:
    """silu(group_norm(x) * (1 + scale) + shift) for x (N, C, *spatial), scale and shift (N, C)
    or None; silu=False for the plain (modulated) GroupNorm. Triton on CUDA, see histogen.kernels."""
    if x.dim() < 2 or x.shape[1] % num_groups:
        raise ValueError(f"input of shape {tuple(x.shape)}: channels must be divisible by num_groups={num_groups}")
    if backend(x) == "triton":
        from histogen.kernels.groupnorm_silu import group_norm_silu_triton

        return group_norm_silu_triton(x, num_groups, weight, bias, eps, scale, shift, silu)
    return groupnorm_silu_reference(x, num_groups, weight, bias, eps, scale, shift, silu)


class GroupNormSiLU(nn.GroupNorm):
    """nn.GroupNorm (same parameters, attributes and state_dict) with the modulation and SiLU
    fused in: forward(x, scale=None, shift=None)."""

    def __init__(self, num_groups: int, num_channels: int, eps: float = 1e-5, affine: bool = True,
                 silu: bool = True, device=None, dtype=None):
        super().__init__(num_groups, num_channels, eps, affine, device, dtype)
        self.silu = silu

    def forward(self, x: torch.Tensor, scale=None, shift=None) -> torch.Tensor:
        return group_norm_silu(x, self.num_groups, self.weight, self.bias, self.eps, scale, shift, self.silu)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, silu={self.silu}"
