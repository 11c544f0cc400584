"""Fused Triton training kernels, each beside a pure PyTorch reference.

- `group_norm_silu` / `GroupNormSiLU`: GroupNorm, optional per-sample modulation
  `* (1 + scale) + shift` and optional SiLU, forward and backward in one kernel each
  (groupnorm_silu.py).
- `AdamWEMA`: an AdamW step and the EMA of the updated weights in one pass over all parameters
  (adamw_ema.py).
- `groupnorm_silu_reference`, `adamw_ema_reference`: the same in plain PyTorch (reference.py).

Dispatch (dispatch.py), decided per call from the tensors: CUDA tensors run the Triton kernels,
all others the PyTorch reference. `HISTOGEN_KERNELS=torch` forces the reference everywhere (to
compare or debug); `HISTOGEN_KERNELS=triton` forces Triton, which on CPU tensors runs only in
Triton's interpreter, `TRITON_INTERPRET=1` set before the kernel modules are first imported: that
is how the tests check the Triton code on machines without a GPU (slowly: small shapes only).
The Triton modules are imported on first use, so importing this package does not import triton.
"""
from histogen.kernels.dispatch import backend
from histogen.kernels.norm import GroupNormSiLU, group_norm_silu
from histogen.kernels.optim import AdamWEMA
from histogen.kernels.reference import adamw_ema_reference, groupnorm_silu_reference

__all__ = ["AdamWEMA", "GroupNormSiLU", "adamw_ema_reference", "backend", "group_norm_silu", "groupnorm_silu_reference"]
