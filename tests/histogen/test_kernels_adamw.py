"""AdamWEMA against torch.optim.AdamW followed by a hand-written EMA, over several steps of a set
of odd-sized parameters, on both implementations (Triton in the interpreter on CPU, compiled on a
GPU), with fp32 parameters and with bf16 parameters on fp32 masters."""
from __future__ import annotations

import io

import pytest
import torch

from histogen.kernels import AdamWEMA
from tests.support.kernels import DEVICES, rel_err, use_triton

SHAPES = [(7, 5), (13,), (3, 4, 5), (1,), (47, 53)]  # the last spans two kernel blocks
HYPER = dict(lr=1e-2, betas=(0.9, 0.99), eps=1e-8, weight_decay=0.1)
EMA_DECAY = 0.9
SKIPPED = (1, 2)  # (step, parameter) without a gradient: AdamW leaves it and its step count alone


def make_params(dtype, device):
    g = torch.Generator().manual_seed(0)
    return [torch.nn.Parameter(torch.randn(s, generator=g).to(device, dtype)) for s in SHAPES]


def set_grads(params, step):
    g = torch.Generator().manual_seed(100 + step)
    for i, p in enumerate(params):
        grad = torch.randn(p.shape, generator=g).to(p.device, p.dtype)
        p.grad = None if (step, i) == SKIPPED else grad


def run(opt, params, steps):
    for step in steps:
        set_grads(params, step)
        opt.step()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("impl,warmup", [("torch", 0), ("torch", 10), ("triton", 0), ("triton", 10)])
def test_matches_torch_adamw_then_ema(impl, warmup, dtype, device, monkeypatch):
    if impl == "triton":
        use_triton(device, monkeypatch)
    else:
        monkeypatch.setenv("HISTOGEN_KERNELS", "torch")
    params = make_params(dtype, device)
    opt = AdamWEMA(params, ema_decay=EMA_DECAY, ema_warmup=warmup, **HYPER)
    # The reference: torch's AdamW on fp32 copies (the masters), the EMA by hand from the start values,
    # its decay warmed up over each parameter's own step count t.
    masters = [torch.nn.Parameter(p.detach().float().clone()) for p in params]
    emas = [m.detach().clone() for m in masters]
    ref = torch.optim.AdamW(masters, **HYPER)
    counts = [0] * len(params)
    for step in range(4):
        set_grads(params, step)
        for p, m in zip(params, masters):
            m.grad = None if p.grad is None else p.grad.float()
        opt.step()
        ref.step()
        with torch.no_grad():
            for i, (e, m) in enumerate(zip(emas, masters)):
                if (step, i) != SKIPPED:
                    counts[i] += 1
                    d = EMA_DECAY if warmup == 0 else min(EMA_DECAY, (1 + counts[i]) / (warmup + counts[i]))
                    e.mul_(d).add_(m, alpha=1 - d)

    for i, (p, m, e) in enumerate(zip(params, masters, emas)):
        state, want = opt.state[p], ref.state[m]
        assert float(state["step"]) == float(want["step"]) == (3 if i == SKIPPED[1] else 4)
        for key in ("exp_avg", "exp_avg_sq"):
            assert state[key].dtype == torch.float32 and rel_err(state[key], want[key]) < 1e-5, (i, key)
        assert rel_err(state["ema"], e) < 1e-5, i
        assert p.dtype == dtype
        if dtype == torch.float32:
            assert "master" not in state and rel_err(p, m) < 1e-5, i
        else:
            assert rel_err(state["master"], m) < 1e-5, i
            # The interpreter rounds to bf16 by truncation, compiled Triton and torch to nearest: 1 ulp.
            assert rel_err(p, m.to(dtype)) < 1e-2, i

    sampler = [torch.zeros_like(p) for p in params]
    opt.copy_ema_to(sampler)
    assert all(torch.equal(s, e.to(dtype)) for s, e in zip(sampler, opt.ema_parameters()))
    with pytest.raises(ValueError):
        opt.copy_ema_to(sampler[1:])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_state_dict_round_trip_continues_like_uninterrupted(dtype, device, monkeypatch):
    use_triton(device, monkeypatch)
    params = make_params(dtype, device)
    opt = AdamWEMA(params, ema_decay=EMA_DECAY, **HYPER)
    run(opt, params, range(2))
    buf = io.BytesIO()
    torch.save({"params": [p.detach() for p in params], "opt": opt.state_dict()}, buf)
    run(opt, params, range(2, 4))

    buf.seek(0)
    saved = torch.load(buf)
    resumed = [torch.nn.Parameter(p) for p in saved["params"]]
    opt2 = AdamWEMA(resumed, lr=0.5, ema_decay=0.5)  # hyperparameters come from the state dict
    opt2.load_state_dict(saved["opt"])
    assert all(v.dtype == torch.float32 for s in opt2.state.values() for v in s.values())
    run(opt2, resumed, range(2, 4))

    for p, q in zip(params, resumed):
        assert torch.equal(p, q)
        for key in ("step", "exp_avg", "exp_avg_sq", "ema") + (("master",) if dtype != torch.float32 else ()):
            assert torch.equal(opt.state[p][key], opt2.state[q][key]), key


def test_checkpoint_from_before_the_warmup_resumes_with_the_plain_decay(monkeypatch):
    """A state dict saved before ema_warmup existed has no such key: it resumes as it was trained."""
    monkeypatch.setenv("HISTOGEN_KERNELS", "torch")
    params = make_params(torch.float32, "cpu")
    opt = AdamWEMA(params, ema_decay=EMA_DECAY, ema_warmup=0, **HYPER)
    run(opt, params, range(2))
    old = opt.state_dict()
    for g in old["param_groups"]:
        del g["ema_warmup"]
    resumed = [torch.nn.Parameter(p.detach().clone()) for p in params]
    opt2 = AdamWEMA(resumed, ema_decay=EMA_DECAY, **HYPER)  # warm-up on by default
    opt2.load_state_dict(old)
    run(opt, params, range(2, 4))
    run(opt2, resumed, range(2, 4))
    assert all(torch.equal(opt.state[p]["ema"], opt2.state[q]["ema"]) for p, q in zip(params, resumed))
