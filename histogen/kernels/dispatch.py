"""Which implementation runs: Triton on CUDA tensors, the PyTorch reference elsewhere, unless
HISTOGEN_KERNELS=torch|triton says otherwise. Read on every call, so tests can flip it."""
from __future__ import annotations

import importlib.util
import os
from functools import cache

import torch

ENV = "HISTOGEN_KERNELS"


@cache
def _triton_installed() -> bool:
    return importlib.util.find_spec("triton") is not None


def backend(t: torch.Tensor) -> str:
    """'triton' or 'torch' for an operation on tensor `t`."""
    forced = os.environ.get(ENV, "").strip().lower()
    if forced not in ("", "torch", "triton"):
        raise ValueError(f"{ENV}={forced!r}: expected 'torch' or 'triton'")
    if forced == "torch":
        return "torch"
    if forced == "triton":
        if not _triton_installed():
            raise RuntimeError(f"{ENV}=triton but triton is not installed")
        if not t.is_cuda and os.environ.get("TRITON_INTERPRET") != "1":
            raise RuntimeError(f"{ENV}=triton on {t.device} tensors needs TRITON_INTERPRET=1, set before "
                               "histogen's Triton kernels are first imported")
        return "triton"
    return "triton" if t.is_cuda and _triton_installed() else "torch"
