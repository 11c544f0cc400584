"""histogen.compute (how a run computes on the CPU) and the diffusion loss weighting: the fast CPU
path (bf16 autocast, channels_last) against the fp32 NCHW reference on the same steps."""
from __future__ import annotations

import logging
import math

import pytest
import torch

from histogen import compute, config
from histogen.models.diffusion import DiffusionConfig, loss_weight
from histogen.run import build
from tests.support.training import SMALL


def test_cpu_flags_are_read_from_cpuinfo(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512_bf16\nbugs\t\t: none\n")
    flags = compute.cpu_flags(info)
    assert {"avx2", "avx512_bf16"} <= flags and "none" not in flags
    assert compute.cpu_has_bf16(flags)
    assert not compute.cpu_has_bf16({"avx2", "avx512f"})
    assert compute.cpu_has_bf16({"amx_bf16"})
    assert compute.cpu_flags(tmp_path / "missing") == set()


def test_a_cpu_without_native_bf16_trains_in_fp32_and_says_why(monkeypatch, caplog):
    monkeypatch.setattr(compute, "cpu_has_bf16", lambda flags=None: False)
    threads = torch.get_num_threads()
    try:
        with caplog.at_level(logging.INFO, "histogen.compute"):
            c = compute.decide(torch.device("cpu"), bf16=True, channels_last=True, threads=1)
        assert not c.bf16 and c.threads == 1 and torch.get_num_threads() == 1
        assert "fp32" in caplog.text and "no native bf16" in caplog.text
        monkeypatch.setattr(compute, "cpu_has_bf16", lambda flags=None: True)
        monkeypatch.setenv("OMP_NUM_THREADS", "1")
        c = compute.decide(torch.device("cpu"), bf16=True, channels_last=False)
        assert c.bf16 and c.threads == 1 and "bf16 autocast" in c.describe()
    finally:
        torch.set_num_threads(threads)


def test_threads_default_to_the_cores_shared_among_local_processes():
    cores = compute.cpu_threads(1)
    assert cores >= 1 and compute.cpu_threads(2) == max(1, cores // 2)


@pytest.mark.parametrize("prediction", ["v", "eps"])
def test_min_snr_weights(prediction):
    cfg = DiffusionConfig(prediction=prediction, loss_weight="min_snr", snr_gamma=5.0)
    logsnr = torch.tensor([math.log(0.01), 0.0, math.log(5.0), math.log(100.0)])
    snr = torch.tensor([0.01, 1.0, 5.0, 100.0])
    expected = torch.tensor([0.01, 1.0, 5.0, 5.0]) / (snr if prediction == "eps" else snr + 1)
    torch.testing.assert_close(loss_weight(cfg, logsnr), expected)
    torch.testing.assert_close(loss_weight(DiffusionConfig(prediction=prediction), logsnr), torch.ones(4))


def steps(cfg_items, comp: compute.Compute, n: int, images: torch.Tensor) -> tuple[list[float], dict]:
    """n training steps of diffusion-tiny on fixed images with per-sample seeds, as the loop runs them;
    the losses and the final weights."""
    cfg = config.resolve("diffusion-tiny", SMALL + cfg_items)
    torch.manual_seed(0)
    task, opts = build(cfg, torch.device("cpu"), None)
    comp.nets(task.nets)
    losses = []
    for s in range(n):
        batch = {"images": comp.images(images[(s % 2) :: 2]), "cond": None, "label": None,
                 "seeds": torch.arange(4) + 4 * s}
        with comp.autocast():
            losses.append(task.train_step(batch, s, dict(task.nets), opts, 1.0)["loss"])
    return losses, {k: v.detach().clone() for k, v in task.nets.state_dict().items()}


def smooth_images(n: int, side: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    low = torch.rand(n, 3, side // 8, side // 8, generator=g) * 2 - 1
    return torch.nn.functional.interpolate(low, size=(side, side), mode="bilinear", align_corners=False)


def test_channels_last_steps_match_nchw():
    cpu = torch.device("cpu")
    images = smooth_images(8, 16)
    a, wa = steps(["resolution=16"], compute.Compute(cpu, False, False, None), 3, images)
    b, wb = steps(["resolution=16"], compute.Compute(cpu, False, True, None), 3, images)
    assert a == pytest.approx(b, rel=1e-4)
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k].contiguous(), rtol=1e-4, atol=1e-5, msg=k)


def test_bf16_autocast_loss_curve_matches_fp32_within_noise():
    """Forced bf16 (emulated where the CPU has none): the same 30 steps give the same loss curve as
    fp32: the curves' means over each third agree to 5 % while the loss itself falls by far more
    than that, and the weights stay fp32."""
    cpu = torch.device("cpu")
    images = smooth_images(8, 16)
    fp32, _ = steps(["resolution=16", "model.lr=3e-3"], compute.Compute(cpu, False, True, None), 30, images)
    bf16, w = steps(["resolution=16", "model.lr=3e-3"], compute.Compute(cpu, True, True, None), 30, images)
    thirds = lambda v: [sum(v[i : i + 10]) / 10 for i in range(0, 30, 10)]  # noqa: E731
    qa, qb = thirds(fp32), thirds(bf16)
    assert qa[-1] < 0.8 * qa[0]  # it learnt: a curve to compare, not noise around a constant
    assert qb == pytest.approx(qa, rel=0.05)
    assert fp32 != bf16  # autocast did run in bf16
    assert all(v.dtype == torch.float32 for v in w.values() if v.is_floating_point())
