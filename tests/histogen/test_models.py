"""The generative models on CPU at tiny sizes: each overfits a fixed batch of synthetic H&E patches,
sampling is reproducible, conditioning and guidance act, and bad configs or non-finite losses
fail clearly. Optimizers are AdamWEMA, as in the trainer."""
from __future__ import annotations

import copy
import dataclasses

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import histosynth as synth
from histogen import config
from histogen.kernels import AdamWEMA
from histogen.models.autoencoder import Autoencoder
from histogen.models.diffaug import color, cutout, diff_augment, translation
from histogen.models.diffusion import CosineSchedule, ddim, split, target
from histogen.models.registry import KINDS
from histogen.models.ssim import ssim
from histogen.models.task import NonFiniteLoss, Task, draw
from histogen.run import build_task

RES, COND = 32, 384
TINY = {kind: config.resolve(f"{kind}-tiny").model for kind in KINDS}  # the *-tiny presets' model sections


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """One intra-op thread: on a shared, busy CPU two threads that wait on each other are several
    times slower than one."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def patches() -> torch.Tensor:
    """8 H&E patches (8, 3, 32, 32) in [-1, 1]: 128 px tissue windows of the real CMU slide,
    4x4-averaged; 64 px windows of a synthetic slide where ../shared is absent."""
    from tests.support.data import SHARED

    cmu = SHARED / "slides" / "CMU-1-Small-Region.svs"
    if cmu.is_file():
        from engine.mask import tissue_mask
        from engine.plan import plan_tiles
        from engine.readers import open_slide

        with open_slide(cmu) as s:
            mask = tissue_mask(s.thumbnail(16)).mask
            coords, _ = plan_tiles(mask, s.dimensions, 128, 128, 0.9)
            windows = s.read_regions([tuple(c) for c in coords[:: max(1, len(coords) // 8)][:8].tolist()], 0,
                                     (128, 128))
        x = torch.from_numpy(np.asarray(windows)).permute(0, 3, 1, 2).float() / 127.5 - 1
        return F.avg_pool2d(x, 4)
    return synthetic_windows()


def synthetic_windows() -> torch.Tensor:
    spec = synth.SynthSpec(width=4096, height=3072, seed=0)
    windows = np.stack([synth.render_region(spec, 1500 + 70 * i, 1200 + 70 * (i % 3), 64, 64) for i in range(8)])
    return F.avg_pool2d(torch.from_numpy(windows).permute(0, 3, 1, 2).float() / 127.5 - 1, 2)


@pytest.fixture(scope="module")
def cond() -> torch.Tensor:
    return torch.randn(8, COND, generator=torch.Generator().manual_seed(7))


def optimizers(task: Task, ema_decay: float = 0.9) -> dict[str, AdamWEMA]:
    return {name: AdamWEMA([p for net in nets for p in task.nets[net].parameters()], **task.opt_hyper(name),
                           ema_decay=ema_decay)
            for name, nets in task.opt_groups().items()}


def train(task: Task, batch: dict, steps: int, opts=None) -> dict:
    """`steps` training steps; the last step's metrics, checked to be finite floats."""
    opts = opts or optimizers(task)
    for step in range(steps):
        metrics = task.train_step(batch, step, dict(task.nets), opts, clip=1.0)
    assert all(isinstance(v, float) and np.isfinite(v) for v in metrics.values()), metrics
    return metrics


def validation_losses(task: Task, batch: dict) -> dict:
    torch.manual_seed(123)
    return task.validation_losses(batch, dict(task.nets))


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ---------------------------------------------------------------------------------------- SSIM

def ssim_numpy(x: np.ndarray, y: np.ndarray, size=11, sigma=1.5, data_range=2.0) -> np.ndarray:
    """SSIM per image straight from the definition: a gaussian-weighted window at every valid place."""
    g = np.exp(-((np.arange(size) - (size - 1) / 2) ** 2) / (2 * sigma**2))
    w = np.outer(g, g) / np.outer(g, g).sum()
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    n, c, h, wd = x.shape
    out = np.zeros(n)
    for i in range(n):
        vals = []
        for ch in range(c):
            for r in range(h - size + 1):
                for col in range(wd - size + 1):
                    a, b = x[i, ch, r:r + size, col:col + size], y[i, ch, r:r + size, col:col + size]
                    ma, mb = (w * a).sum(), (w * b).sum()
                    va, vb = (w * (a - ma) ** 2).sum(), (w * (b - mb) ** 2).sum()
                    cov = (w * (a - ma) * (b - mb)).sum()
                    vals.append((2 * ma * mb + c1) * (2 * cov + c2) / ((ma**2 + mb**2 + c1) * (va + vb + c2)))
        out[i] = np.mean(vals)
    return out


def test_ssim_matches_direct_numpy():
    g = gen(0)
    x = torch.rand(2, 3, 14, 17, generator=g, dtype=torch.float64) * 2 - 1
    y = (0.7 * x + 0.3 * torch.randn(x.shape, generator=g, dtype=torch.float64)).clamp(-1, 1)
    expected = ssim_numpy(x.numpy(), y.numpy())
    got = ssim(x, y).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)
    assert 0.2 < got.min() and got.max() < 0.95
    np.testing.assert_allclose(ssim(x, x).numpy(), 1.0, atol=1e-5)
    with pytest.raises(ValueError, match="smaller than the 11 px window"):
        ssim(x[..., :8], y[..., :8])


def test_ssim_under_bf16_autocast_is_the_float32_value():
    # A reconstruction close to its image: the variances are differences of near-equal means, which
    # bf16 convolutions cancelled to zero or below and the autoencoder's loss went NaN at step 3.
    g = gen(1)
    x = torch.rand(4, 3, 64, 64, generator=g) * 2 - 1
    y = (x + 0.05 * torch.randn(x.shape, generator=g)).clamp(-1, 1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = ssim(x, y)
    assert got.dtype == torch.float32 and torch.isfinite(got).all()
    torch.testing.assert_close(got, ssim(x, y), rtol=0, atol=1e-6)


# ----------------------------------------------------------------------------------- autoencoder

def test_autoencoder_overfits_and_reconstructs(patches):
    task = build_task("ae", {**TINY["ae"], "disc_weight": 0}, RES, COND)  # cond_dim ignored by the autoencoder
    assert set(task.nets) == {"ae"} and task.sample_net == "ae" and task.opt_groups() == {"ae": ["ae"]}
    batch = {"images": patches, "cond": None}
    before = validation_losses(task, batch)
    train(task, batch, 100)
    after = validation_losses(task, batch)
    assert after["loss"] < 0.5 * before["loss"], (before, after)
    assert after["ssim"] > before["ssim"] + 0.3 and after["psnr"] > before["psnr"] + 6

    ae = task.nets["ae"]
    rec = task.sample(dict(task.nets), 4, gen(0), images=patches)
    assert torch.equal(rec, ae.decode(ae.encode(patches[:4])[0]).clamp(-1, 1))
    assert rec.shape == (4, 3, RES, RES) and rec.abs().max() <= 1
    mean, logvar = ae.encode(patches)
    assert mean.shape == logvar.shape == (8, 4, RES // 8, RES // 8)
    with pytest.raises(ValueError, match="need `images`"):
        task.sample(dict(task.nets), 4, gen(0))


def test_autoencoder_discriminator_starts_at_disc_start(patches):
    task = build_task("ae", {**TINY["ae"], "disc_start": 1}, RES, None)
    assert set(task.nets) == {"ae", "disc"} and task.opt_groups() == {"ae": ["ae"], "disc": ["disc"]}
    opts, batch = optimizers(task), {"images": patches, "cond": None}
    metrics = task.train_step(batch, 0, dict(task.nets), opts, clip=0.0)
    assert "d_loss" not in metrics and not opts["disc"].state
    metrics = task.train_step(batch, 1, dict(task.nets), opts, clip=0.0)
    assert {"g_adv", "d_loss", "grad_norm_disc"} <= set(metrics) and opts["disc"].state
    assert all(p.requires_grad for p in task.nets["disc"].parameters()), "unfrozen after the generator loss"


# -------------------------------------------------------------------------------------------- GAN

def sample_stats(task: Task, gen_net: nn.Module, data: torch.Tensor) -> tuple[float, float]:
    """For 16 samples: the L1 distance of their mean colour to the data's (summed over RGB), and
    the mean L1 distance from each to its nearest training image."""
    samples = task.sample({"gen": gen_net}, 16, gen(0))
    colour = (samples.mean(dim=(0, 2, 3)) - data.mean(dim=(0, 2, 3))).abs().sum().item()
    nearest = (samples[:, None] - data[None]).abs().mean(dim=(2, 3, 4)).min(dim=1).values.mean().item()
    return colour, nearest


def test_gan_overfits():
    """A GAN's losses do not fall, so the test measures the samples: 40 steps bring the (EMA)
    generator's colour to the data's and its samples nearer to the training images. On synthetic
    H&E: on 8 real CMU patches 120 steps brought the colour to 0.38x but not the nearest distance
    down, more than a CPU test can afford."""
    patches = synthetic_windows()
    torch.manual_seed(0)
    task = build_task("gan", TINY["gan"], RES, None)
    assert task.opt_hyper("gen") == dict(lr=2e-3, betas=(0.0, 0.99), weight_decay=0.0)
    colour0, nearest0 = sample_stats(task, task.nets["gen"], patches)
    opts = optimizers(task)
    train(task, {"images": patches, "cond": None}, 40, opts)
    ema = copy.deepcopy(task.nets["gen"])  # sample with the EMA generator, as the trainer does
    opts["gen"].copy_ema_to(ema.parameters())
    colour, nearest = sample_stats(task, ema, patches)
    assert colour < 0.3 * colour0 and nearest < 0.8 * nearest0, (colour0, colour, nearest0, nearest)


def test_gan_sampling_and_conditioning(patches, cond):
    torch.manual_seed(0)
    task = build_task("gan", TINY["gan"], RES, COND)
    nets = dict(task.nets)
    metrics = train(task, {"images": patches, "cond": cond}, 3)  # moves the zero-initialised residual convs
    assert {"d_loss", "g_loss", "grad_norm_gen", "grad_norm_disc"} <= set(metrics)
    a, b = task.sample(nets, 4, gen(1), cond=cond), task.sample(nets, 4, gen(1), cond=cond)
    assert torch.equal(a, b) and a.shape == (4, 3, RES, RES) and a.abs().max() <= 1
    assert (a - task.sample(nets, 4, gen(2), cond=cond)).abs().mean() > 1e-3
    assert (a - task.sample(nets, 4, gen(1), cond=cond.flip(0))).abs().mean() > 1e-4, "the condition must act"
    logits = task.nets["disc"](patches[:4], cond[:4])
    assert (logits - task.nets["disc"](patches[:4], cond[4:])).abs().max() > 1e-4, "projection term"
    with pytest.raises(ValueError, match="give cond"):
        task.sample(nets, 4, gen(1))


def test_gan_discriminator_steps(patches):
    """d_steps D updates per G update, each on fresh fakes; R1 on the first of them."""
    torch.manual_seed(0)
    task = build_task("gan", {**TINY["gan"], "d_steps": 3, "r1_every": 1}, RES, None)
    opts = optimizers(task)
    steps = lambda name: {int(opts[name].state[p]["step"]) for p in task.nets[name].parameters()}  # noqa: E731
    metrics = train(task, {"images": patches}, 2, opts)
    assert steps("disc") == {6} and steps("gen") == {2}
    assert metrics["r1"] >= 0
    with pytest.raises(ValueError, match="d_steps must be >= 1"):
        build_task("gan", {**TINY["gan"], "d_steps": 0}, RES, None)


def test_gan_bilinear_upsampling():
    """upsample "bilinear": with the conv set to the identity, a ramp doubles into a finer ramp
    (nearest repeats each value in a 2x2 cell); the GAN's generator takes the mode from its config."""
    from histogen.models.blocks import Upsample

    ramp = torch.arange(8.0).repeat(1, 1, 8, 1)  # (1, 1, 8, 8), rising along x
    out = {}
    for mode in ("nearest", "bilinear"):
        up = Upsample(1, mode)
        with torch.no_grad():
            nn.init.dirac_(up.conv.weight)
            up.conv.bias.zero_()
        out[mode] = up(ramp)[0, 0, 4, 1:-1]  # one row, away from the zero-padded border
    assert torch.equal(out["nearest"], torch.arange(8.0).repeat_interleave(2)[1:-1])
    assert torch.allclose(out["bilinear"], torch.arange(1, 15) / 2 - 0.25)
    task = build_task("gan", {**TINY["gan"], "upsample": "bilinear"}, RES, None)
    assert {m.mode for m in task.nets["gen"].modules() if isinstance(m, Upsample)} == {"bilinear"}
    with pytest.raises(ValueError, match="upsample must be"):
        build_task("gan", {**TINY["gan"], "upsample": "bicubic"}, RES, None)


def test_gan_minibatch_std():
    """mbstd_group: D's logit for an image depends on the other images of its group and on no
    others; in a call on reals and fakes (parts=2) no group mixes the two; identical images give
    a std channel of (almost) zero."""
    from histogen.models.disc import minibatch_std

    h = torch.randn(12, 5, 2, 2)
    same = h.clone()
    same[:6] = h[0]
    out = minibatch_std(same, 4, parts=2)  # 6 per part: groups of 3, never straddling image 6
    assert out.shape == (12, 6, 2, 2) and torch.equal(out[:, :5], same)
    assert out[:6, 5].abs().max() < 1e-3 and out[6:, 5].min() > 0.1
    expected = h[6:9].var(dim=0, unbiased=False).add(1e-8).sqrt().mean()
    assert torch.allclose(out[6:9, 5], expected.expand(3, 2, 2))
    torch.manual_seed(0)
    task = build_task("gan", {**TINY["gan"], "mbstd_group": 4}, RES, None)
    disc = task.nets["disc"].eval()
    x = torch.rand(16, 3, RES, RES) * 2 - 1
    moved = x.clone()
    moved[5] = -moved[5]
    with torch.no_grad():
        a, b = disc(x, parts=2), disc(moved, parts=2)
    changed = (a - b).abs() > 1e-6
    assert changed[4:8].all() and not changed[:4].any() and not changed[8:].any()  # group 4..7 only
    with pytest.raises(ValueError, match="mbstd_group must be >= 0"):
        build_task("gan", {**TINY["gan"], "mbstd_group": -1}, RES, None)


def test_diffaugment_is_differentiable_and_does_what_it_says():
    x = torch.ones(64, 3, 16, 16, requires_grad=True)
    holes = cutout(x, gen(0))
    zeros = (holes[:, 0] == 0).flatten(1).sum(1)
    assert zeros.max() == 64 and zeros.min() > 0 and (zeros < 64).any()  # an 8x8 square, sometimes overhanging
    dot = torch.zeros(8, 1, 16, 16)
    dot[:, :, 8, 8] = 1
    moved = translation(dot, gen(0))
    where = moved.flatten(1).argmax(1)
    dy, dx = where // 16 - 8, where % 16 - 8
    assert moved.sum() == 8 and dy.abs().max() <= 2 and dx.abs().max() <= 2 and (dy != 0).any()
    y = color(torch.zeros(4, 3, 4, 4), gen(0))
    assert y.std(dim=(1, 2, 3)).max() < 1e-6 and y.mean(dim=(1, 2, 3)).abs().max() > 0.01  # brightness only
    out = diff_augment(x, "color,translation,cutout", gen(3))
    assert torch.equal(out, diff_augment(x, "color,translation,cutout", gen(3)))
    out.sum().backward()
    assert x.grad.abs().sum() > 0
    assert diff_augment(x, "") is x


# -------------------------------------------------------------------------------------- diffusion

def test_cosine_schedule_and_parameterisations():
    sched = CosineSchedule(-15, 15)
    t = torch.linspace(0, 1, 11)
    alpha, sigma = sched.alpha_sigma(t)
    torch.testing.assert_close(alpha.square() + sigma.square(), torch.ones_like(alpha))
    torch.testing.assert_close(alpha.flatten(), torch.cos(torch.pi / 2 * t), atol=2e-3, rtol=0)
    torch.testing.assert_close(sched.logsnr(torch.tensor([0.0, 1.0])), torch.tensor([15.0, -15.0]), atol=1e-4, rtol=0)
    x0, eps = torch.randn(3, 3, 2, 2, generator=gen(0)), torch.randn(3, 3, 2, 2, generator=gen(1))
    a, s = sched.alpha_sigma(torch.tensor([0.1, 0.5, 0.9]))
    xt = a * x0 + s * eps
    for prediction in ("eps", "v"):
        got_x0, got_eps = split(prediction, target(prediction, x0, eps, a, s), xt, a, s)
        torch.testing.assert_close(got_x0, x0, atol=1e-4, rtol=0)
        torch.testing.assert_close(got_eps, eps)


def test_ddim_is_deterministic_given_the_noise():
    sched = CosineSchedule()
    calls = []

    def denoise(xt, t, alpha, sigma):  # a model that believes every image is 0.5
        calls.append(float(t[0]))
        x0 = torch.full_like(xt, 0.5)
        return x0, (xt - alpha * x0) / sigma

    x = torch.randn(2, 3, 4, 4, generator=gen(0))
    one = ddim(denoise, x, sched, steps=1)
    assert calls == [1.0] and torch.equal(one, torch.full_like(x, 0.5))
    calls.clear()
    five = ddim(denoise, x, sched, steps=5)
    assert calls == pytest.approx([1.0, 0.8, 0.6, 0.4, 0.2])
    torch.testing.assert_close(five, torch.full_like(x, 0.5))
    assert torch.equal(five, ddim(denoise, x.clone(), sched, steps=5))


@pytest.fixture(scope="module")
def trained_diffusion(patches, cond):
    """Conditional pixel diffusion (v prediction) trained 40 steps on the fixed batch, with its
    evaluation before and after."""
    torch.manual_seed(0)
    task = build_task("diffusion", TINY["diffusion"], RES, COND)
    batch = {"images": patches, "cond": cond}
    before = validation_losses(task, batch)
    train(task, batch, 40)
    return task, before, validation_losses(task, batch)


def test_diffusion_overfits(trained_diffusion):
    task, before, after = trained_diffusion
    assert after["loss"] < 0.5 * before["loss"], (before, after)


@pytest.mark.parametrize("steps", [1, 5])
def test_diffusion_sampling(trained_diffusion, cond, steps):
    task, _, _ = trained_diffusion
    nets = dict(task.nets)
    a = task.sample(nets, 3, gen(1), cond=cond, steps=steps)
    assert a.shape == (3, 3, RES, RES) and a.abs().max() <= 1 and a.std() > 0.05
    assert torch.equal(a, task.sample(nets, 3, gen(1), cond=cond, steps=steps))
    assert (a - task.sample(nets, 3, gen(2), cond=cond, steps=steps)).abs().mean() > 1e-3
    guided = task.sample(nets, 3, gen(1), cond=cond, steps=steps, guidance=3.0)
    assert (guided - a).abs().mean() > 1e-3, "guidance 3 must differ from the conditional sample"
    assert (task.sample(nets, 3, gen(1), steps=steps) - a).abs().mean() > 1e-4, "no cond: the null condition"


def test_diffusion_eta_noise_comes_from_the_generator(trained_diffusion, cond):
    task, _, _ = trained_diffusion
    stochastic = copy.copy(task)  # the same networks, eta 1
    stochastic.cfg = dataclasses.replace(task.cfg, eta=1.0)
    nets = dict(task.nets)
    a = stochastic.sample(nets, 2, gen(1), cond=cond, steps=4)
    assert torch.equal(a, stochastic.sample(nets, 2, gen(1), cond=cond, steps=4))
    assert (a - task.sample(nets, 2, gen(1), cond=cond, steps=4)).abs().mean() > 1e-4


def test_condition_dropout(patches, cond):
    seeds = torch.arange(4000)  # per-sample seeds, as the trainer gives them
    dropped = draw(seeds, 4000, (), "cpu", normal=False, salt=1) < 0.1
    assert dropped.float().mean().item() == pytest.approx(0.1, abs=0.015)
    torch.manual_seed(0)
    task = build_task("diffusion", {**TINY["diffusion"], "cond_drop": 0.5}, RES, COND)
    unet = task.nets["unet"]
    with torch.no_grad():
        unet.null_cond.normal_()  # as if learned: dropping must show in the output
        unet.out[1].weight.normal_(std=0.1)
    seen = []
    hook = unet.register_forward_pre_hook(lambda m, args: seen.append(args[3]))
    images = patches.repeat(4, 1, 1, 1)
    task.train_step({"images": images, "cond": cond.repeat(4, 1)}, 0, dict(task.nets), optimizers(task), clip=1.0)
    hook.remove()
    assert 4 <= seen[0].sum() <= 28, "about half of 32 conditions dropped"

    x, t = patches[:4], torch.full((4,), 0.5)
    with torch.no_grad():
        all_dropped = unet(x, t, cond[:4], torch.ones(4, dtype=torch.bool))
        assert torch.equal(all_dropped, unet(x, t, cond[4:], torch.ones(4, dtype=torch.bool)))
        assert torch.equal(all_dropped, unet(x, t))
        kept = unet(x, t, cond[:4], torch.zeros(4, dtype=torch.bool))
    assert (kept - all_dropped).abs().mean() > 1e-4


def test_latent_diffusion(patches, cond):
    torch.manual_seed(0)
    ae = build_task("ae", TINY["ae"], RES, None).nets["ae"]
    model = {**TINY["diffusion"], "latent": True, "attention_resolutions": [4]}
    task = build_task("diffusion", model, RES, COND, autoencoder=ae)
    unet = task.nets["unet"]
    assert unet.latent_scale == 0 and "latent_scale" in unet.state_dict()
    shapes = []
    unet.register_forward_pre_hook(lambda m, args: shapes.append(tuple(args[0].shape)))
    with pytest.raises(ValueError, match="latent scale is not known"):
        task.sample(dict(task.nets), 2, gen(0), cond=cond)

    torch.manual_seed(5)
    task.train_step({"images": patches, "cond": cond}, 0, dict(task.nets), optimizers(task), clip=1.0)
    torch.manual_seed(5)
    with torch.no_grad():
        z = ae.latent(*ae.encode(patches))
    assert shapes == [(8, 4, RES // 8, RES // 8)]
    assert unet.latent_scale.item() == pytest.approx(1 / z.std().item(), rel=1e-5)
    assert not any(p.requires_grad for p in ae.parameters()), "the autoencoder is frozen"

    out = task.sample(dict(task.nets), 2, gen(0), cond=cond, steps=2)
    assert out.shape == (2, 3, RES, RES) and out.abs().max() <= 1
    assert shapes[-1] == (2, 4, RES // 8, RES // 8)
    assert torch.equal(out, task.sample(dict(task.nets), 2, gen(0), cond=cond, steps=2))

    fixed = build_task("diffusion", {**model, "latent_scale": 0.5}, RES, COND, autoencoder=ae)
    train(fixed, {"images": patches, "cond": cond}, 1)
    assert fixed.nets["unet"].latent_scale == 0.5


# ------------------------------------------------------------------------------ errors, contract

def test_bad_configs_fail_clearly():
    with pytest.raises(ValueError, match=r"unknown diffusion model key\(s\) chanels; known keys: channels, "):
        build_task("diffusion", {"chanels": 64}, 64, None)
    with pytest.raises(ValueError, match="diffusion model key channels: expected int, got '64'"):
        build_task("diffusion", {"channels": "64"}, 64, None)
    tiny = build_task("diffusion", {**TINY["diffusion"], "lr": "1e-4", "betas": [0.9, 0.99]}, RES, None)
    assert tiny.opt_hyper("unet") == dict(lr=1e-4, betas=(0.9, 0.99), weight_decay=0.0)  # YAML: 1e-4 is a string
    with pytest.raises(ValueError, match="unknown model kind 'vae'; known kinds: ae, gan, diffusion"):
        build_task("vae", {}, 64, None)
    with pytest.raises(ValueError,
                       match=r"resolution 36 must be a positive multiple of 8 \(the autoencoder downsamples by 8\)"):
        build_task("ae", TINY["ae"], 36, None)
    with pytest.raises(ValueError, match="multiple of 16 .*autoencoder downsamples by 8 and the UNet by 2"):
        build_task("diffusion", {**TINY["diffusion"], "latent": True}, 40, None,
                   autoencoder=Autoencoder(config.model_config("ae", TINY["ae"])))
    with pytest.raises(ValueError, match="multiple of 2 .*UNet downsamples by 2"):
        build_task("diffusion", TINY["diffusion"], 33, None)
    with pytest.raises(ValueError, match="base_res \\(4\\) times a power of two"):
        build_task("gan", TINY["gan"], 48, None)
    with pytest.raises(ValueError, match="needs the trained autoencoder"):
        build_task("diffusion", {"latent": True}, 64, None)
    with pytest.raises(ValueError, match="prediction must be 'eps' or 'v'"):
        build_task("diffusion", {"prediction": "x0"}, 64, None)
    with pytest.raises(ValueError, match="diffaug 'color,flip'"):
        build_task("gan", {"diffaug": "color,flip"}, 64, None)
    with pytest.raises(ValueError, match="no optimizer 'd'; it has gen, disc"):
        build_task("gan", TINY["gan"], 32, None).opt_hyper("d")


@pytest.mark.parametrize("kind", ["ae", "gan", "diffusion"])
def test_nan_loss_raises_before_any_weight_changes(kind, patches, cond):
    task = build_task(kind, TINY[kind], RES, COND)
    opts = optimizers(task)
    before = {k: p.detach().clone() for k, p in task.nets.named_parameters()}
    bad = patches.clone()
    bad[0, 0, 0, 0] = float("nan")
    with pytest.raises(NonFiniteLoss, match="loss nan.*not finite; no step taken"):
        task.train_step({"images": bad, "cond": cond}, 0, dict(task.nets), opts, clip=1.0)
    assert all(torch.equal(before[k], p) for k, p in task.nets.named_parameters())
    assert all(p.grad is None for p in task.nets.parameters()) and not any(o.state for o in opts.values())


def test_backward_step_clips_to_the_given_norm():
    net = nn.Linear(4, 1, bias=False)
    nn.init.zeros_(net.weight)
    opt = torch.optim.SGD(net.parameters(), lr=1.0)
    loss = net(torch.full((1, 4), 3.0)).sum()  # gradient (3, 3, 3, 3): norm 6
    assert Task.backward_step("test", loss, opt, clip=0.5) == pytest.approx(6.0)
    torch.testing.assert_close(net.weight, torch.full((1, 4), -0.25))  # clipped to norm 0.5
    assert net.weight.grad is None
