"""Shared by the kernel tests: Triton's interpreter where there is no GPU, the devices, forcing the
Triton path, the error measure."""
from __future__ import annotations

import os

import pytest
import torch


def _load_interpreted_kernels() -> str | None:
    """Import triton and histogen's Triton kernels in interpreter mode; why not, or None.

    Triton picks interpreter or compiler once per @triton.jit function, when it is defined: for its
    own library (tl.sum, tl.zeros...) at `import triton`, for histogen's kernels when their modules
    are imported. So TRITON_INTERPRET=1 must be set before both, which this does at collection
    (pytest imports every test module before running any test), and unset right after: the rest
    of the suite and its subprocesses never see it."""
    before = os.environ.get("TRITON_INTERPRET")
    os.environ["TRITON_INTERPRET"] = "1"
    try:
        import triton.language as tl
        from triton.runtime.interpreter import InterpretedFunction

        from histogen.kernels import adamw_ema, groupnorm_silu
    finally:
        if before is None:
            del os.environ["TRITON_INTERPRET"]
        else:
            os.environ["TRITON_INTERPRET"] = before
    kernels = (tl.zeros, groupnorm_silu._forward_kernel, adamw_ema._adamw_ema_kernel)
    if not all(isinstance(k, InterpretedFunction) for k in kernels):
        return ("triton was imported in compiled mode before the kernel tests were collected (by a module "
                "collected earlier): import triton lazily there, or run with TRITON_INTERPRET=1")
    return None


# Without a GPU the Triton path runs in the interpreter; with one it compiles, and the CPU twins skip.
INTERPRETER_PROBLEM = None if torch.cuda.is_available() else _load_interpreted_kernels()
DEVICES = [pytest.param("cpu", id="cpu"), pytest.param("cuda", id="cuda", marks=pytest.mark.gpu)]


def use_triton(device: str, monkeypatch) -> None:
    """Force the Triton path for the rest of the test (TRITON_INTERPRET=1 on CPU, which the
    dispatch asks for)."""
    if device == "cpu":
        if torch.cuda.is_available():
            pytest.skip("the interpreter twin runs on machines without a GPU (here the kernels compile for CUDA)")
        if INTERPRETER_PROBLEM:
            pytest.fail(INTERPRETER_PROBLEM)
        monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.setenv("HISTOGEN_KERNELS", "triton")


def rel_err(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """Largest absolute error relative to the largest magnitude of the expected tensor."""
    expected = expected.detach().double().cpu()
    return ((actual.detach().double().cpu() - expected).abs().max() / expected.abs().max()).item()
