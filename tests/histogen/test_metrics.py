"""histogen.metrics against closed forms and brute-force references, on fresh random inputs."""
from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg
import scipy.stats
import torch

from histogen import metrics
from histogen.stain import from_hed, to_hed
from tests.support.references import brute_precision_recall


def rng(seed=0):
    return np.random.default_rng(seed)


def random_cov(r, d):
    a = r.standard_normal((d, d))
    return a @ a.T / d + 0.1 * np.eye(d)


def test_streaming_stats_equal_numpy():
    r = rng()
    x = r.standard_normal((1000, 7)) * r.uniform(0.1, 10, 7) + r.uniform(-50, 50, 7)
    s = metrics.GaussianStats(7)
    for part in np.array_split(x, [1, 5, 300, 301, 999]):  # uneven batches, one of a single row
        s.update(part)
    assert s.n == 1000
    np.testing.assert_allclose(s.mean, x.mean(0), rtol=1e-12, atol=1e-10)
    np.testing.assert_allclose(s.cov, np.cov(x, rowvar=False), rtol=1e-10, atol=1e-10)
    back = metrics.GaussianStats.from_arrays(s.to_arrays())
    np.testing.assert_array_equal(back.cov, s.cov)


def test_frechet_closed_forms():
    r = rng(1)
    d = 16
    mu, cov = r.standard_normal(d), random_cov(r, d)
    assert metrics.frechet_distance(mu, cov, mu, cov) == pytest.approx(0, abs=1e-9)
    # 1-d: (m1 - m2)^2 + (s1 - s2)^2
    assert metrics.frechet_distance([1.0], [[4.0]], [3.0], [[9.0]]) == pytest.approx(4 + 1)
    # diagonal covariances: sum (sqrt(a) - sqrt(b))^2 plus the mean term
    a, b = r.uniform(0.1, 3, d), r.uniform(0.1, 3, d)
    mu2 = mu + r.standard_normal(d)
    want = ((mu - mu2) ** 2).sum() + ((np.sqrt(a) - np.sqrt(b)) ** 2).sum()
    assert metrics.frechet_distance(mu, np.diag(a), mu2, np.diag(b)) == pytest.approx(want, rel=1e-10)
    # general covariances: the textbook formula with scipy's matrix square root
    c2 = random_cov(r, d)
    ref = ((mu - mu2) ** 2).sum() + np.trace(cov + c2 - 2 * scipy.linalg.sqrtm(cov @ c2).real)
    assert metrics.frechet_distance(mu, cov, mu2, c2) == pytest.approx(ref, rel=1e-8)


def test_frechet_of_samples_approaches_the_known_distance():
    r = rng(2)
    d = 8
    mu1, mu2 = np.zeros(d), np.full(d, 0.5)
    c1, c2 = np.diag(np.full(d, 1.0)), np.diag(np.full(d, 4.0))
    x = r.multivariate_normal(mu1, c1, 20000)
    y = r.multivariate_normal(mu2, c2, 20000)
    want = d * 0.25 + d * (1 - 2) ** 2  # 2 + 8
    got = metrics.frechet_of(metrics.GaussianStats(d).update(x), metrics.GaussianStats(d).update(y))
    assert got == pytest.approx(want, rel=0.03)
    same = metrics.frechet_of(metrics.GaussianStats(d).update(x), metrics.GaussianStats(d).update(x.copy()))
    assert same == pytest.approx(0, abs=1e-9)


def test_precision_recall_closed_forms_and_reference(monkeypatch):
    r = rng(3)
    x = r.standard_normal((300, 5))
    assert metrics.precision_recall(x, x, 3) == (1.0, 1.0)
    assert metrics.precision_recall(x, x + 1000, 3) == (0.0, 0.0)
    # half of the fakes are real points, half far away: precision 1/2; recall = share of reals
    # inside the balls of the copied half, compared with the brute-force reference below
    fake = np.concatenate([x[:150], x[:150] + 1000])
    p, _ = metrics.precision_recall(x, fake, 3)
    assert p == 0.5
    monkeypatch.setattr(metrics, "CHUNK", 37)  # several uneven blocks
    for k in (1, 3, 5):
        y = r.standard_normal((200, 5)) * 1.3 + 0.4
        np.testing.assert_allclose(metrics.precision_recall(x, y, k), brute_precision_recall(x, y, k), rtol=0,
                                   atol=1e-12)
    with pytest.raises(ValueError, match="more than 3"):
        metrics.precision_recall(x[:3], x, 3)


def test_nearest_and_cosine_match_brute_force(monkeypatch):
    monkeypatch.setattr(metrics, "CHUNK", 10)
    r = rng(4)
    a, b = r.standard_normal((53, 9)), r.standard_normal((71, 9))
    d, j = metrics.nearest(a, b)
    full = np.linalg.norm(a[:, None] - b[None], axis=-1)
    np.testing.assert_array_equal(j, full.argmin(1))
    np.testing.assert_allclose(d, full.min(1), rtol=1e-6)
    c = metrics.cosine_pairs(a, b[:53])
    np.testing.assert_allclose(c, [np.dot(u, v) / np.linalg.norm(u) / np.linalg.norm(v) for u, v in zip(a, b)],
                               rtol=1e-12)
    np.testing.assert_allclose(metrics.cosine_pairs(a, 3 * a), 1.0)


def test_colour_deconvolution_inverts_and_finds_known_stains():
    r = rng(5)
    hed = torch.from_numpy(r.uniform(0, 1.2, (1000, 3))).float()
    torch.testing.assert_close(to_hed(from_hed(hed)), hed, atol=1e-4, rtol=1e-4)
    # an image made of one known H and E density: the histograms put all tissue mass in their bins
    h, e = 0.8, 0.35
    rgb = from_hed(torch.tensor([[h, e, 0.0]]))[0].numpy()
    pixel = np.clip(np.round(rgb * 256 - 1), 0, 255).astype(np.uint8)
    image = np.broadcast_to(pixel, (2, 8, 8, 3)).copy()
    image[:, :2] = 255  # white background is not tissue
    hist = metrics.stain_histograms(image)
    assert hist.sum(1).tolist() == [2 * 6 * 8] * 2
    centres = metrics.bin_centres()
    width = centres[1] - centres[0]
    assert abs(centres[hist[0].argmax()] - h) < 0.02 + width  # 8-bit rounding moves the density a little
    assert abs(centres[hist[1].argmax()] - e) < 0.02 + width


def test_wasserstein_of_histograms_matches_scipy():
    r = rng(6)
    centres = metrics.bin_centres()
    width = centres[1] - centres[0]
    a, b = r.gamma(2, 0.2, 5000), r.gamma(3, 0.25, 5000)
    lo, hi = metrics.OD_RANGE
    ha, _ = np.histogram(a, metrics.OD_BINS, (lo, hi))
    hb, _ = np.histogram(b, metrics.OD_BINS, (lo, hi))
    assert abs(metrics.wasserstein_hist(ha, hb) - scipy.stats.wasserstein_distance(a, b)) <= width
    assert metrics.wasserstein_hist(ha, ha) == 0
    # a pure shift (no mass wraps: the tail is empty)
    assert metrics.wasserstein_hist(ha, np.roll(ha, 7)) == pytest.approx(7 * width)
    assert np.isnan(metrics.wasserstein_hist(ha, np.zeros_like(ha)))


def test_pairwise_l1_matches_brute_force_and_sees_collapse():
    r = rng(7)
    images = r.integers(0, 256, (9, 32, 32, 3), dtype=np.uint8)
    small = images.reshape(9, 16, 2, 16, 2, 3).mean(axis=(2, 4)) / 255  # area average to 16 px
    brute = np.mean([np.abs(small[i] - small[j]).mean() for i in range(9) for j in range(9) if i != j])
    assert metrics.pairwise_l1(images) == pytest.approx(brute, rel=1e-5)
    assert metrics.pairwise_l1(np.repeat(images[:1], 9, axis=0)) == 0  # one image repeated: mode collapse
    flat = np.stack([np.full((32, 32, 3), v, np.uint8) for v in (40, 91, 215)])  # flat greys: |a - b| per value
    assert metrics.pairwise_l1(flat) == pytest.approx((51 + 175 + 124) * 2 / 6 / 255, rel=1e-5)
    noisy = (flat + r.integers(-20, 21, flat.shape)).astype(np.uint8)  # pixel noise averages out
    assert metrics.pairwise_l1(noisy) == pytest.approx(metrics.pairwise_l1(flat), abs=0.01)
    assert np.isnan(metrics.pairwise_l1(images[:1]))


def test_psnr_and_ssim_closed_forms():
    r = rng(7)
    x = r.integers(1, 255, (3, 16, 16, 3), dtype=np.uint8)
    assert (metrics.psnr(x, x) == 100).all()
    y = x + 1  # an error of 1 everywhere: 10 log10(255^2)
    np.testing.assert_allclose(metrics.psnr(x, y), 20 * np.log10(255), rtol=1e-12)
    np.testing.assert_allclose(metrics.ssim_uint8(x, x), 1.0, rtol=1e-6)
    assert (metrics.ssim_uint8(x, r.integers(0, 256, x.shape, dtype=np.uint8)) < 0.2).all()


def test_colour_deconvolution_matches_scikit_image_on_the_real_slide(cmu_svs):
    """On real H&E pixels, to_hed is scikit-image's rgb2hed in natural-log units (rgb2hed divides
    by -ln(1e-6) and clips at 0)."""
    skimage_color = pytest.importorskip("skimage.color")
    from engine.readers import open_slide

    with open_slide(cmu_svs) as s:
        rgb = np.asarray(s.read_regions([(800, 1200)], 0, (128, 128)))[0][..., :3]
    x = np.maximum(rgb / 255.0, 1e-6)
    ours = to_hed(torch.from_numpy(x).double()).numpy()
    theirs = skimage_color.rgb2hed(x) * -np.log(1e-6)
    keep = ours > 0
    assert keep.mean() > 0.5
    np.testing.assert_allclose(ours[keep], theirs[keep], rtol=1e-4, atol=1e-4)
    hist = metrics.stain_histograms(rgb[None])
    tissue = (-np.log((rgb + 1.0) / 256)).sum(-1) > metrics.TISSUE_OD
    assert 0.1 < tissue.mean() < 0.9 and hist.sum(1).tolist() == [tissue.sum()] * 2
