"""One AdamW step and the EMA of the updated weights in a single pass over many tensors.

Multi-tensor by pointer table rather than by flattening: each launch gets an int64 table with one
row per tensor (addresses of param, grad, exp_avg, exp_avg_sq, ema, fp32 master, and its numel)
and a block -> (tensor, start) map, one BLOCK per program. Flattening into one buffer would need
the model's parameters and gradients rebound as views of it (and re-checked whenever autograd or
zero_grad(set_to_none=True) replaces a .grad), or a gather/scatter copy per step that costs more
memory traffic than the fusion saves; the table leaves parameters, gradients and the per-parameter
state exactly where PyTorch keeps them, at the price of a few KB uploaded when addresses change.

Per element, all fp32 (low-precision params are written back from their fp32 master):
    p = p * (1 - lr * wd);  m += (1 - b1) * (g - m);  v = v * b2 + (1 - b2) * g * g
    p -= lr / (1 - b1**t) * m / (sqrt(v) / sqrt(1 - b2**t) + eps);  ema = ema * d + p * (1 - d)
which is torch.optim.AdamW's update followed by the EMA of the updated weights.
"""
from __future__ import annotations

import math
from functools import lru_cache

import torch
import triton
import triton.language as tl

BLOCK = 2048  # elements per program; to be tuned on the GPU benchmark
_TL_DTYPES = {torch.float32: tl.float32, torch.bfloat16: tl.bfloat16, torch.float16: tl.float16}


@triton.jit
def _adamw_ema_kernel(TABLE, BLOCK_TENSOR, BLOCK_START, lr, weight_decay, beta1, beta2, eps, step_size,
                      bias_correction2_sqrt, ema_decay, PARAM: tl.constexpr, MASTER: tl.constexpr,
                      BLOCK: tl.constexpr):
    pid = tl.program_id(0)
    # A row: param, grad, exp_avg, exp_avg_sq, ema, master (0: none) addresses, numel.
    row = TABLE + tl.load(BLOCK_TENSOR + pid) * 7
    idx = tl.load(BLOCK_START + pid) + tl.arange(0, BLOCK)
    mask = idx < tl.load(row + 6)
    param = tl.load(row + 0).to(tl.pointer_type(PARAM))
    grad = tl.load(row + 1).to(tl.pointer_type(PARAM))
    exp_avg = tl.load(row + 2).to(tl.pointer_type(tl.float32))
    exp_avg_sq = tl.load(row + 3).to(tl.pointer_type(tl.float32))
    ema = tl.load(row + 4).to(tl.pointer_type(tl.float32))
    if MASTER:
        master = tl.load(row + 5).to(tl.pointer_type(tl.float32))
        p = tl.load(master + idx, mask=mask)
    else:
        p = tl.load(param + idx, mask=mask)
    g = tl.load(grad + idx, mask=mask).to(tl.float32)
    m = tl.load(exp_avg + idx, mask=mask)
    v = tl.load(exp_avg_sq + idx, mask=mask)
    e = tl.load(ema + idx, mask=mask)

    p = p * (1.0 - lr * weight_decay)
    m = m + (1.0 - beta1) * (g - m)
    v = v * beta2 + (1.0 - beta2) * g * g
    p = p - step_size * (m / (tl.sqrt(v) / bias_correction2_sqrt + eps))
    e = e * ema_decay + p * (1.0 - ema_decay)

    tl.store(exp_avg + idx, m, mask=mask)
    tl.store(exp_avg_sq + idx, v, mask=mask)
    tl.store(ema + idx, e, mask=mask)
    if MASTER:
        tl.store(master + idx, p, mask=mask)
    tl.store(param + idx, p.to(PARAM), mask=mask)


@lru_cache(maxsize=16)
def _tables(rows: tuple, device: torch.device):
    """Pointer table and block map on the device, cached: addresses rarely change between steps
    (the caching allocator hands gradients the same blocks back), so steady state uploads nothing."""
    numels = torch.tensor([r[-1] for r in rows])
    blocks = (numels + BLOCK - 1) // BLOCK
    block_tensor = torch.repeat_interleave(torch.arange(len(rows)), blocks)
    first = torch.cumsum(blocks, 0) - blocks  # index of each tensor's first block
    block_start = (torch.arange(int(blocks.sum())) - first[block_tensor]) * BLOCK
    table = torch.tensor(rows, dtype=torch.int64)
    return table.to(device), block_tensor.to(device, torch.int32), block_start.to(device)


def adamw_ema_triton(params, grads, exp_avgs, exp_avg_sqs, emas, masters, step: int, *, lr, beta1, beta2, eps,
                     weight_decay, ema_decay):
    """One launch for tensors that share device, dtype and step count; masters[i] is the fp32
    master of a low-precision params[i] or None for fp32 params. Every tensor of a row must
    have the same strides as its param (the optimizer allocates its state so)."""
    dtype = params[0].dtype
    has_master = masters[0] is not None
    rows, copies = [], []  # copies: alive until the kernel has been queued
    for p, g, m, v, e, w in zip(params, grads, exp_avgs, exp_avg_sqs, emas, masters):
        if p.dtype != dtype or g.dtype != dtype or (w is not None) != has_master:
            raise ValueError("one launch needs params and grads of one dtype, all with or all without masters")
        if g.stride() != p.stride():  # e.g. a gradient produced in another memory format
            g = torch.empty_like(p).copy_(g)
            copies.append(g)
        rows.append((p.data_ptr(), g.data_ptr(), m.data_ptr(), v.data_ptr(), e.data_ptr(),
                     0 if w is None else w.data_ptr(), p.numel()))
    table, block_tensor, block_start = _tables(tuple(rows), params[0].device)
    _adamw_ema_kernel[(block_tensor.numel(),)](
        table, block_tensor, block_start, lr, weight_decay, beta1, beta2, eps, lr / (1 - beta1**step),
        math.sqrt(1 - beta2**step), ema_decay, PARAM=_TL_DTYPES[dtype], MASTER=has_master, BLOCK=BLOCK)
