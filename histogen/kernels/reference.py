"""Pure PyTorch references for the fused kernels: the CPU path of the dispatch and the ground
truth of the tests and benchmarks. Each is written the way the operation is usually written in
eager PyTorch, so it is also the baseline the fused kernels are measured against."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def groupnorm_silu_reference(x, num_groups, weight=None, bias=None, eps=1e-5, scale=None, shift=None, silu=True):
    """silu(group_norm(x) * (1 + scale) + shift), scale and shift (N, C) per sample and channel.

    Either of scale and shift may be None (no modulation term); silu=False gives the plain
    (modulated) GroupNorm."""
    y = F.group_norm(x, num_groups, weight, bias, eps)
    per_sample = (x.shape[0], x.shape[1]) + (1,) * (x.dim() - 2)
    if scale is not None:
        y = y * (1 + scale.reshape(per_sample))
    if shift is not None:
        y = y + shift.reshape(per_sample)
    return F.silu(y) if silu else y


@torch.no_grad()
def adamw_ema_reference(params, grads, exp_avgs, exp_avg_sqs, emas, step, *, lr, beta1, beta2, eps,
                        weight_decay, ema_decay):
    """One torch.optim.AdamW step (its single-tensor formulas, in place) on fp32 `params`, then
    `ema = ema * ema_decay + param * (1 - ema_decay)` on the updated params.

    `step` is the step count after this update (1 on the first); all tensors are fp32 and
    updated in place (for low-precision models, `params` are the fp32 masters)."""
    bias_correction1 = 1 - beta1**step
    bias_correction2_sqrt = math.sqrt(1 - beta2**step)
    step_size = lr / bias_correction1
    for p, g, m, v, e in zip(params, grads, exp_avgs, exp_avg_sqs, emas):
        g = g.float()
        p.mul_(1 - lr * weight_decay)
        m.lerp_(g, 1 - beta1)
        v.mul_(beta2).addcmul_(g, g, value=1 - beta2)
        p.addcdiv_(m, (v.sqrt() / bias_correction2_sqrt).add_(eps), value=-step_size)
        e.mul_(ema_decay).add_(p, alpha=1 - ema_decay)
