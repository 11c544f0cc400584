"""GroupNorm + per-sample modulation + SiLU, one Triton kernel each way.

    y = silu((xhat * weight + bias) * (1 + scale) + shift),   xhat = (x - mean) * rstd

with mean and rstd over each (sample, group), scale and shift (N, C). Modulation (MOD) and SiLU
(SILU) are compile-time flags, so the plain GroupNorm is the same kernel. One program per
(sample, group) walks the group in [BLOCK_C, BLOCK_S] tiles addressed through the tensor's strides:
contiguous and channels_last inputs are read in place, and the outputs keep the input's layout.
Arithmetic and statistics are fp32 whatever the storage dtype.

Backward, per (sample, group), without atomics (deterministic): pass 1 sums dz and dz * xhat per
channel (z the pre-activation); those sums give the group's sums of dxhat and dxhat * xhat for pass
2, which writes dx, and the (N, C) sums are also all that the weight, bias, scale and shift
gradients need (reduced over the batch on the host, a few (N, C) tensor ops).

Loop trip counts are compile-time constants: Triton 3.6's interpreter cannot loop over runtime
bounds with numpy 2. On a GPU that costs one compile per distinct (channels per group, spatial
block count), a handful per UNet.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch.autograd.function import once_differentiable

TILE = 4096  # elements per [BLOCK_C, BLOCK_S] tile; to be tuned on the GPU benchmark


@triton.jit
def _channel_affine(W, B, SCALE, SHIFT, n, C, ch, cmask, MOD: tl.constexpr):
    """Per-channel a, c with pre-activation z = xhat * a + c (the modulation folded in)."""
    a = tl.load(W + ch, mask=cmask, other=0.0).to(tl.float32)
    c = tl.load(B + ch, mask=cmask, other=0.0).to(tl.float32)
    if MOD:
        s = 1.0 + tl.load(SCALE + n * C + ch, mask=cmask, other=0.0).to(tl.float32)
        a = a * s
        c = c * s + tl.load(SHIFT + n * C + ch, mask=cmask, other=0.0).to(tl.float32)
    return a, c


@triton.jit
def _forward_kernel(X, Y, W, B, SCALE, SHIFT, MEAN, RSTD, C, G, CG, S, eps,
                    x_sn, x_sc, x_ss, y_sn, y_sc, y_ss,
                    MOD: tl.constexpr, SILU: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_S: tl.constexpr,
                    C_BLOCKS: tl.constexpr, S_BLOCKS: tl.constexpr):
    pid = tl.program_id(0)
    n = (pid // G).to(tl.int64)  # int64 offsets: large batches pass 2**31 elements
    g = pid % G
    cr = tl.arange(0, BLOCK_C)
    sr = tl.arange(0, BLOCK_S)
    x_group = X + n * x_sn + g * CG * x_sc
    # Sums of x - x0 (x0 the group's first element), not of x: no cancellation when |mean| >> std.
    x0 = tl.load(x_group).to(tl.float32)
    acc1 = tl.zeros([BLOCK_C, BLOCK_S], tl.float32)
    acc2 = tl.zeros([BLOCK_C, BLOCK_S], tl.float32)
    for cb in range(C_BLOCKS):
        c = cb * BLOCK_C + cr
        for sb in range(S_BLOCKS):
            s = sb * BLOCK_S + sr
            mask = (c[:, None] < CG) & (s[None, :] < S)
            x = tl.load(x_group + c[:, None] * x_sc + s[None, :] * x_ss, mask=mask, other=0.0).to(tl.float32)
            d = tl.where(mask, x - x0, 0.0)
            acc1 += d
            acc2 += d * d
    count = CG * S
    mean_d = tl.sum(acc1) / count
    var = tl.maximum(tl.sum(acc2) / count - mean_d * mean_d, 0.0)
    mean = x0 + mean_d
    rstd = 1.0 / tl.sqrt(var + eps)
    tl.store(MEAN + pid, mean)
    tl.store(RSTD + pid, rstd)

    y_group = Y + n * y_sn + g * CG * y_sc
    for cb in range(C_BLOCKS):
        c = cb * BLOCK_C + cr
        a, b = _channel_affine(W, B, SCALE, SHIFT, n, C, g * CG + c, c < CG, MOD)
        for sb in range(S_BLOCKS):
            s = sb * BLOCK_S + sr
            mask = (c[:, None] < CG) & (s[None, :] < S)
            x = tl.load(x_group + c[:, None] * x_sc + s[None, :] * x_ss, mask=mask, other=0.0).to(tl.float32)
            z = (x - mean) * rstd * a[:, None] + b[:, None]
            if SILU:
                z = z * tl.sigmoid(z)
            tl.store(y_group + c[:, None] * y_sc + s[None, :] * y_ss, z.to(Y.dtype.element_ty), mask=mask)


@triton.jit
def _grad_z(x, dy, mean, rstd, a, b, SILU: tl.constexpr):
    """xhat and dL/dz at one tile, z = xhat * a + b the pre-activation."""
    xhat = (x - mean) * rstd
    dz = dy
    if SILU:
        z = xhat * a[:, None] + b[:, None]
        sig = tl.sigmoid(z)
        dz = dy * sig * (1.0 + z * (1.0 - sig))
    return xhat, dz


@triton.jit
def _backward_kernel(X, DY, DX, W, B, SCALE, SHIFT, MEAN, RSTD, SUM_DZ, SUM_DZ_XHAT, C, G, CG, S,
                     x_sn, x_sc, x_ss, dy_sn, dy_sc, dy_ss, dx_sn, dx_sc, dx_ss,
                     MOD: tl.constexpr, SILU: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_S: tl.constexpr,
                     C_BLOCKS: tl.constexpr, S_BLOCKS: tl.constexpr):
    pid = tl.program_id(0)
    n = (pid // G).to(tl.int64)
    g = pid % G
    cr = tl.arange(0, BLOCK_C)
    sr = tl.arange(0, BLOCK_S)
    x_group = X + n * x_sn + g * CG * x_sc
    dy_group = DY + n * dy_sn + g * CG * dy_sc
    mean = tl.load(MEAN + pid)
    rstd = tl.load(RSTD + pid)

    # Pass 1. Masked elements load dy = 0, so their dz is 0 and they add nothing.
    sum_dxhat = 0.0
    sum_dxhat_xhat = 0.0
    for cb in range(C_BLOCKS):
        c = cb * BLOCK_C + cr
        cmask = c < CG
        a, b = _channel_affine(W, B, SCALE, SHIFT, n, C, g * CG + c, cmask, MOD)
        acc_dz = tl.zeros([BLOCK_C, BLOCK_S], tl.float32)
        acc_dz_xhat = tl.zeros([BLOCK_C, BLOCK_S], tl.float32)
        for sb in range(S_BLOCKS):
            s = sb * BLOCK_S + sr
            mask = cmask[:, None] & (s[None, :] < S)
            x = tl.load(x_group + c[:, None] * x_sc + s[None, :] * x_ss, mask=mask, other=0.0).to(tl.float32)
            dy = tl.load(dy_group + c[:, None] * dy_sc + s[None, :] * dy_ss, mask=mask, other=0.0).to(tl.float32)
            xhat, dz = _grad_z(x, dy, mean, rstd, a, b, SILU)
            acc_dz += dz
            acc_dz_xhat += dz * xhat
        ch_dz = tl.sum(acc_dz, axis=1)
        ch_dz_xhat = tl.sum(acc_dz_xhat, axis=1)
        tl.store(SUM_DZ + n * C + g * CG + c, ch_dz, mask=cmask)
        tl.store(SUM_DZ_XHAT + n * C + g * CG + c, ch_dz_xhat, mask=cmask)
        sum_dxhat += tl.sum(a * ch_dz)  # dxhat = dz * a
        sum_dxhat_xhat += tl.sum(a * ch_dz_xhat)

    # Pass 2: dx = rstd * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat)).
    count = CG * S
    m1 = sum_dxhat / count
    m2 = sum_dxhat_xhat / count
    dx_group = DX + n * dx_sn + g * CG * dx_sc
    for cb in range(C_BLOCKS):
        c = cb * BLOCK_C + cr
        cmask = c < CG
        a, b = _channel_affine(W, B, SCALE, SHIFT, n, C, g * CG + c, cmask, MOD)
        for sb in range(S_BLOCKS):
            s = sb * BLOCK_S + sr
            mask = cmask[:, None] & (s[None, :] < S)
            x = tl.load(x_group + c[:, None] * x_sc + s[None, :] * x_ss, mask=mask, other=0.0).to(tl.float32)
            dy = tl.load(dy_group + c[:, None] * dy_sc + s[None, :] * dy_ss, mask=mask, other=0.0).to(tl.float32)
            xhat, dz = _grad_z(x, dy, mean, rstd, a, b, SILU)
            dx = (dz * a[:, None] - m1 - xhat * m2) * rstd
            tl.store(dx_group + c[:, None] * dx_sc + s[None, :] * dx_ss, dx.to(DX.dtype.element_ty), mask=mask)


def _tiles(cg: int, s: int) -> dict:
    block_s = min(triton.next_power_of_2(s), TILE)
    block_c = min(triton.next_power_of_2(cg), max(1, TILE // block_s))
    return dict(BLOCK_C=block_c, BLOCK_S=block_s, C_BLOCKS=triton.cdiv(cg, block_c), S_BLOCKS=triton.cdiv(s, block_s),
                num_warps=8 if block_c * block_s >= 2048 else 4)


def _ncs(t: torch.Tensor) -> torch.Tensor:
    """(N, C, S) view of (N, C, *spatial): a view for contiguous and channels_last tensors, a
    contiguous copy only where the spatial dims cannot be flattened into one stride."""
    return t.reshape(t.shape[0], t.shape[1], -1)


def _operands(x, weight, bias, scale, shift):
    """Weight and bias (ones and zeros where absent), and scale and shift as contiguous (N, C)
    (zeros for the one absent) or both None without modulation."""
    C = x.shape[1]
    weight = torch.ones(C, device=x.device, dtype=torch.float32) if weight is None else weight.contiguous()
    bias = torch.zeros(C, device=x.device, dtype=torch.float32) if bias is None else bias.contiguous()
    if scale is None and shift is None:
        return weight, bias, None, None

    def zeros():
        return torch.zeros(x.shape[0], C, device=x.device, dtype=torch.float32)

    scale = zeros() if scale is None else scale.reshape(x.shape[0], C).contiguous()
    shift = zeros() if shift is None else shift.reshape(x.shape[0], C).contiguous()
    return weight, bias, scale, shift


class GroupNormSiLUFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, scale, shift, num_groups: int, eps: float, silu: bool):
        N, C = x.shape[:2]
        x3 = _ncs(x)
        S = x3.shape[2]
        cg = C // num_groups
        w, b, sc, sh = _operands(x, weight, bias, scale, shift)
        y3 = torch.empty_like(x3)  # keeps x's strides where x3 is a dense view
        mean = torch.empty(N * num_groups, device=x.device, dtype=torch.float32)
        rstd = torch.empty_like(mean)
        mod = sc is not None
        _forward_kernel[(N * num_groups,)](
            x3, y3, w, b, sc if mod else w, sh if mod else w, mean, rstd, C, num_groups, cg, S, eps,
            *x3.stride(), *y3.stride(), MOD=mod, SILU=silu, **_tiles(cg, S))
        ctx.save_for_backward(x3, w, b, sc, sh, mean, rstd)
        ctx.shape, ctx.num_groups, ctx.silu = x.shape, num_groups, silu
        ctx.meta = [None if t is None else (t.dtype, t.shape) for t in (weight, bias, scale, shift)]
        return y3.view(x.shape)

    @staticmethod
    @once_differentiable
    def backward(ctx, dy):
        x3, w, b, sc, sh, mean, rstd = ctx.saved_tensors
        N, C, S = x3.shape
        G = ctx.num_groups
        cg = C // G
        dy3 = _ncs(dy)
        dx3 = torch.empty_like(x3)
        sum_dz = torch.empty(N, C, device=x3.device, dtype=torch.float32)
        sum_dz_xhat = torch.empty_like(sum_dz)
        mod = sc is not None
        _backward_kernel[(N * G,)](
            x3, dy3, dx3, w, b, sc if mod else w, sh if mod else w, mean, rstd, sum_dz, sum_dz_xhat, C, G, cg, S,
            *x3.stride(), *dy3.stride(), *dx3.stride(), MOD=mod, SILU=ctx.silu, **_tiles(cg, S))
        # The (N, C) dz sums give every other gradient: u = xhat * w + b is the normalized output,
        # z = u * (1 + scale) + shift, so dL/du = dz * (1 + scale) and dL/dscale = sum(dz * u).
        need = ctx.needs_input_grad
        gain = 1 + sc.float() if mod else 1.0
        dw = (gain * sum_dz_xhat).sum(0) if need[1] else None
        db = (gain * sum_dz).sum(0) if need[2] else None
        dscale = w.float() * sum_dz_xhat + b.float() * sum_dz if need[3] else None
        dshift = sum_dz if need[4] else None
        dw, db, dscale, dshift = (None if g is None else g.to(m[0]).reshape(m[1])
                                  for g, m in zip((dw, db, dscale, dshift), ctx.meta))
        return dx3.view(ctx.shape), dw, db, dscale, dshift, None, None, None


def group_norm_silu_triton(x, num_groups, weight=None, bias=None, eps=1e-5, scale=None, shift=None, silu=True):
    return GroupNormSiLUFunction.apply(x, weight, bias, scale, shift, num_groups, eps, silu)
