"""The fused GroupNorm + modulation + SiLU kernel against the PyTorch reference: forward and every
gradient, in the Triton interpreter on CPU and compiled on a GPU."""
from __future__ import annotations

from contextlib import contextmanager
from unittest import mock

import pytest
import torch
from torch import nn

from histogen.kernels import GroupNormSiLU, group_norm_silu, groupnorm_silu_reference
from tests.support.kernels import DEVICES, rel_err, use_triton

F32, BF16 = torch.float32, torch.bfloat16
TOL = {F32: 1e-5, BF16: 1e-2}

# (shape, groups, modulation, silu, layout, dtype); dy is always contiguous.
CASES = [
    pytest.param((2, 8, 5, 7), 4, "scale+shift", True, "contiguous", F32, id="odd-spatial-mod-silu"),
    pytest.param((2, 8, 5, 7), 1, None, True, "channels_last", F32, id="groups=1-channels_last"),
    pytest.param((2, 8, 5, 7), 8, "scale+shift", False, "channels_last", F32,
                 id="groups=channels-no-silu-channels_last"),
    pytest.param((3, 6, 4, 4), 3, "scale", True, "contiguous", F32, id="scale-only"),
    pytest.param((1, 2, 65, 65), 1, "shift", True, "contiguous", F32, id="several-tiles-per-group"),
    pytest.param((2, 8, 5, 7), 4, "scale+shift", True, "transposed", F32, id="unflattenable-strides"),
    pytest.param((3, 6, 11), 2, "scale+shift", True, "contiguous", F32, id="1d-spatial"),
    # 8 values a group: with 2, fp32 dx is ill-conditioned even in PyTorch's own kernel.
    pytest.param((6, 16), 2, "scale+shift", True, "contiguous", F32, id="no-spatial"),
    pytest.param((2, 8, 5, 7), 4, "scale+shift", True, "channels_last", BF16, id="bf16-channels_last"),
    pytest.param((2, 8, 9, 3), 2, None, False, "contiguous", BF16, id="bf16-plain-groupnorm"),
]


@contextmanager
def poisoned_allocations():
    """torch.empty and torch.empty_like return NaN-filled tensors: an output element the kernel
    does not write shows up as NaN."""
    empty, empty_like = torch.empty, torch.empty_like

    def poison(t):
        return t.fill_(float("nan")) if t.is_floating_point() else t.fill_(-1)

    with mock.patch.object(torch, "empty", lambda *a, **k: poison(empty(*a, **k))), \
         mock.patch.object(torch, "empty_like", lambda *a, **k: poison(empty_like(*a, **k))):
        yield


def inputs(shape, modulation, dtype, device, layout):
    g = torch.Generator().manual_seed(0)
    N, C = shape[:2]
    x = torch.randn(shape, generator=g) * 2 + 3  # off-centre: the statistics must not cancel
    w, b = 1 + 0.5 * torch.randn(C, generator=g), torch.randn(C, generator=g)
    scale = 0.5 * torch.randn(N, C, generator=g) if modulation and "scale" in modulation else None
    shift = torch.randn(N, C, generator=g) if modulation and "shift" in modulation else None

    def cast(t):
        return None if t is None else t.to(device, dtype)

    x = cast(x)
    if layout == "channels_last":
        x = x.to(memory_format=torch.channels_last)
    elif layout == "transposed":  # a view whose spatial dims have no single stride: copied
        x = x.transpose(2, 3).contiguous().transpose(2, 3)
    return x, cast(w), cast(b), cast(scale), cast(shift)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shape, groups, modulation, silu, layout, dtype", CASES)
def test_forward_and_gradients_match_reference(device, shape, groups, modulation, silu, layout, dtype,
                                               monkeypatch):
    use_triton(device, monkeypatch)
    x, w, b, scale, shift = inputs(shape, modulation, dtype, device, layout)
    leaves = [t.requires_grad_() for t in (x, w, b, scale, shift) if t is not None]
    dy = torch.randn(shape, generator=torch.Generator().manual_seed(1)).to(device, dtype)
    with poisoned_allocations():
        y = group_norm_silu(x, groups, w, b, 1e-5, scale, shift, silu)
        grads = torch.autograd.grad(y, leaves, dy)

    # Truth: the reference in float64 on the same (rounded) inputs.
    up = [t.detach().double().requires_grad_() for t in (x, w, b, scale, shift) if t is not None]
    it = iter(up)
    x64, w64, b64 = next(it), next(it), next(it)
    s64 = next(it) if scale is not None else None
    h64 = next(it) if shift is not None else None
    y64 = groupnorm_silu_reference(x64, groups, w64, b64, 1e-5, s64, h64, silu)
    grads64 = torch.autograd.grad(y64, up, dy.double())

    fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    assert y.dtype == dtype and y.is_contiguous(memory_format=fmt) and grads[0].is_contiguous(memory_format=fmt)
    assert rel_err(y, y64) < TOL[dtype]
    names = ["x", "weight", "bias"] + ["scale"] * (scale is not None) + ["shift"] * (shift is not None)
    for name, got, want in zip(names, grads, grads64):
        assert got.dtype == dtype and got.shape == want.shape, name
        assert rel_err(got, want) < TOL[dtype], name


@pytest.mark.parametrize("device", DEVICES)
def test_state_dict_round_trips_with_nn_groupnorm(device, monkeypatch):
    use_triton(device, monkeypatch)
    ref = nn.GroupNorm(4, 8).to(device)
    with torch.no_grad():
        ref.weight.normal_()
        ref.bias.normal_()
    fused = GroupNormSiLU(4, 8, silu=False).to(device)
    fused.load_state_dict(ref.state_dict())
    assert (fused.num_groups, fused.num_channels, fused.eps, fused.affine) == (4, 8, ref.eps, True)
    back = nn.GroupNorm(4, 8).to(device)
    back.load_state_dict(fused.state_dict())
    assert torch.equal(back.weight, ref.weight) and torch.equal(back.bias, ref.bias)

    x = torch.randn(2, 8, 5, 7, device=device)
    with torch.no_grad():
        assert rel_err(fused(x), ref(x)) < 1e-5
        scale, shift = torch.randn(2, 8, device=device), torch.randn(2, 8, device=device)
        with_silu = GroupNormSiLU(4, 8).to(device)
        with_silu.load_state_dict(ref.state_dict())
        want = nn.functional.silu(ref(x) * (1 + scale[:, :, None, None]) + shift[:, :, None, None])
        assert rel_err(with_silu(x, scale, shift), want) < 1e-5


def test_groups_must_divide_channels():
    with pytest.raises(ValueError, match="divisible"):
        group_norm_silu(torch.zeros(2, 6, 3, 3), 4)


@pytest.mark.parametrize("device", DEVICES)
def test_without_affine_parameters(device, monkeypatch):
    use_triton(device, monkeypatch)
    x = torch.randn(2, 8, 3, 5, device=device, requires_grad=True)
    y = GroupNormSiLU(2, 8, affine=False).to(device)(x)
    (dx,) = torch.autograd.grad(y, x, torch.ones_like(y))
    x64 = x.detach().double().requires_grad_()
    y64 = groupnorm_silu_reference(x64, 2)
    (dx64,) = torch.autograd.grad(y64, x64, torch.ones_like(y64))
    assert rel_err(y, y64) < 1e-5 and rel_err(dx, dx64) < 1e-5
