"""Which implementation histogen.kernels picks, and that importing it stays cheap."""
from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from histogen.kernels import backend


def test_cpu_tensors_default_to_the_reference(monkeypatch):
    monkeypatch.delenv("HISTOGEN_KERNELS", raising=False)
    assert backend(torch.zeros(1)) == "torch"


@pytest.mark.gpu
def test_cuda_tensors_default_to_triton(monkeypatch):
    monkeypatch.delenv("HISTOGEN_KERNELS", raising=False)
    assert backend(torch.zeros(1, device="cuda")) == "triton"


def test_environment_forces_a_backend(monkeypatch):
    monkeypatch.setenv("HISTOGEN_KERNELS", "torch")
    assert backend(torch.zeros(1)) == "torch"
    monkeypatch.setenv("HISTOGEN_KERNELS", "triton")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert backend(torch.zeros(1)) == "triton"
    monkeypatch.delenv("TRITON_INTERPRET")
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
        backend(torch.zeros(1))
    monkeypatch.setenv("HISTOGEN_KERNELS", "cuda")
    with pytest.raises(ValueError, match="'torch' or 'triton'"):
        backend(torch.zeros(1))


def test_import_does_not_import_triton():
    code = "import sys, histogen.kernels; sys.exit('triton' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
