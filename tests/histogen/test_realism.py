"""The model-free realism measures: the classifier two-sample test on real H&E (real vs real near
0.5, real vs blurred or hue-shifted real near 1) through a real patch store and `histogen eval
--samples` without a run; nuclei counted and measured exactly on rendered disks and as
scikit-image measures them; the untrained marker of TorchScript encoders."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import scipy.stats
import torch
import zarr
from PIL import Image
from scipy import ndimage

from engine.store import Codec, PatchStore
from histogen import nuclei
from histogen.encoders import UNTRAINED_MARKER, TorchEncoder, load_encoder
from histogen.evaluate import EvalConfig, evaluate
from histogen.stain import from_hed
from histogen.two_sample import TwoSampleConfig, two_sample_test, wilson
from tests.support.data import SHARED

HE = SHARED / "he"
FOLDERS = ("lung-colon", "camelyon")
FAST = TwoSampleConfig(folds=5, steps=80, min_steps=80, width=8, max_per_class=200)  # 2-5 s of CPU per test at 32 px


def crops(files: list[Path], size: int = 64) -> np.ndarray:
    """Non-overlapping size x size crops of the images, each first halved (about 2x the publishers' scale)."""
    out = []
    for f in files:
        a = np.asarray(Image.open(f).convert("RGB").reduce(2))
        out += [a[y : y + size, x : x + size] for y in range(0, a.shape[0] - size + 1, size)
                for x in range(0, a.shape[1] - size + 1, size)]
    return np.stack(out)


@pytest.fixture(scope="module")
def he(tmp_path_factory) -> tuple[Path, np.ndarray]:
    """A patch store of real H&E crops (even-numbered files, one slide per folder) and crops of the
    odd-numbered files of the same folders (never in the store)."""
    if not HE.is_dir():
        pytest.skip(f"real H&E images {HE} are absent (they live in ../shared/data beside the checkout)")
    path = tmp_path_factory.mktemp("he") / "he.zarr"
    store = PatchStore.create_or_resume(path, 64, {})
    other = []
    for folder in FOLDERS:
        files = sorted((HE / folder).glob("*.jp*g"))[:24]
        images = crops(files[0::2])
        other.append(crops(files[1::2]))
        w = store.begin_slide(folder, {}, len(images), Codec(), check=None)
        w.append(images, np.zeros((len(images), 2), np.int64), np.ones(len(images)))
        w.finish(np.zeros((2, 2)), {}, {})
    return path, np.concatenate(other)


def halve(images: np.ndarray) -> np.ndarray:
    """2 x 2 means: 64 px crops to 32 px."""
    x = torch.nn.functional.avg_pool2d(torch.from_numpy(images).permute(0, 3, 1, 2).float(), 2)
    return np.asarray(x.round().permute(0, 2, 3, 1).to(torch.uint8))


def hue_shift(images: np.ndarray, turn: float) -> np.ndarray:
    out = []
    for im in images:
        hsv = np.asarray(Image.fromarray(im).convert("HSV")).copy()
        hsv[..., 0] = (hsv[..., 0].astype(np.int64) + round(turn * 256)) % 256
        out.append(np.asarray(Image.fromarray(hsv, "HSV").convert("RGB")))
    return np.stack(out)


def blur(images: np.ndarray, sigma: float) -> np.ndarray:
    blurred = ndimage.gaussian_filter(images.astype(np.float32), (0, sigma, sigma, 0))
    return np.clip(np.round(blurred), 0, 255).astype(np.uint8)


def small_encoder() -> TorchEncoder:
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 8, 8), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())
    return TorchEncoder(net, "small", input_size=64, pipeline="torch")


def test_samples_without_a_run_real_vs_real_is_chance_and_hue_shift_is_told(he, tmp_path):
    """The floor is real vs real (two disjoint draws from the store); the value is real vs other real
    crops turned 0.08 of the way round the hue circle, given at 32 px: the samples set the resolution."""
    store, other = he
    d = tmp_path / "samples"
    d.mkdir()
    zarr.create_array(str(d / "samples.zarr"), data=hue_shift(halve(other), 0.08), chunks=(16, 32, 32, 3))
    ev = evaluate([store], tmp_path / "report", samples=d, cfg=EvalConfig(n=200, two_sample=FAST, pipeline="torch"),
                  encoder=small_encoder())
    m = json.loads((tmp_path / "report" / "metrics.json").read_text())
    assert m["info"]["resolution"] == 32 and m["info"]["run"] is None
    assert m["info"]["n_real"] == m["info"]["n_real_floor"] == 200
    real_vs_real, real_vs_hue = m["floor"]["c2st"], m["metrics"]["c2st"]
    assert abs(real_vs_real["accuracy"] - 0.5) <= 0.1, real_vs_real
    assert real_vs_hue["accuracy"] >= 0.9, real_vs_hue
    assert real_vs_real["ci95_low"] < real_vs_real["accuracy"] < real_vs_real["ci95_high"]
    fake, most_real = ev.pictures["c2st"]
    assert fake.shape == most_real.shape == (16, 32, 32, 3)
    # the nuclei of real draws are closer to each other than to hue-shifted ones, in intensity at least
    assert m["floor"]["nuclei"]["intensity_w1"] < m["metrics"]["nuclei"]["intensity_w1"]
    html = (tmp_path / "report" / "report.html").read_text()
    assert "found most fake" in html and "Nuclei" in html


def test_two_sample_test_tells_blur(he):
    """Real 32 px patches of the store against other real crops blurred (sigma 1.5 px at 32 px)."""
    store, other = he
    real = PatchStore.open(store)
    a = halve(np.concatenate([real.slide(f)["images"][:] for f in FOLDERS]))
    a = a[np.random.default_rng(0).permutation(len(a))[:200]]
    r = two_sample_test(a, blur(halve(other[:200]), 1.5), FAST)
    assert r.accuracy >= 0.9, r.to_dict()
    assert r.n_per_class == 200 and len(r.fold_accuracies) == 5
    # out-of-fold predictions: the extremes are the most confident calls of each side
    fake, most_real = r.extremes(5)
    assert (r.p_second[200:][np.searchsorted(r.index_second, fake)] >= np.sort(r.p_second[200:])[-5]).all()
    assert (r.p_second[:200][np.searchsorted(r.index_first, most_real)] <= np.sort(r.p_second[:200])[4]).all()


def test_wilson_interval_matches_the_closed_form():
    lo, hi = wilson(50, 100)
    assert (lo, hi) == pytest.approx((0.4038, 0.5962), abs=1e-4)
    lo, hi = wilson(100, 100)
    assert hi == pytest.approx(1.0) and lo == pytest.approx(0.963, abs=1e-3)


# -- nuclei ---------------------------------------------------------------------------------------

def stain_pixel(h: float, e: float) -> np.ndarray:
    return np.clip(np.round(from_hed(torch.tensor([[h, e, 0.0]]))[0].numpy() * 256 - 1), 0, 255).astype(np.uint8)


def disk(shape, cy, cx, r) -> np.ndarray:
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r


def test_nuclei_counts_and_areas_are_exact_on_rendered_disks():
    rng = np.random.default_rng(0)
    background, nucleus = stain_pixel(0.05, 0.3), stain_pixel(1.0, 0.2)
    images = np.broadcast_to(background, (6, 48, 48, 3)).copy()
    want_count, want_area, want_patch = [], [], []
    for i in range(len(images)):
        masks = []
        for cy, cx in [(10, 10), (10, 34), (34, 10), (34, 34), (24, 24)][: rng.integers(1, 6)]:
            m = disk((48, 48), cy + rng.integers(-2, 3), cx + rng.integers(-2, 3), rng.uniform(2.5, 5))
            masks.append(m)
            images[i][m] = nucleus
            want_area.append(int(m.sum()))
            want_patch.append(i)
        edge = disk((48, 48), 0, 47, 4)  # a nucleus cut by the border: counted, not measured
        images[i][edge] = nucleus
        want_count.append(len(masks) + 1)
    got = nuclei.measure(images, threshold=0.5)
    assert got.count.tolist() == want_count
    assert sorted(zip(got.patch.tolist(), got.area.tolist())) == sorted(zip(want_patch, want_area))
    # hull of the pixel squares
    assert (got.eccentricity < 0.35).all() and (got.solidity > 0.75).all() and (got.solidity <= 1).all()
    np.testing.assert_allclose(got.intensity, 1.0, atol=0.02)  # 8-bit rounding of the rendered density
    # an ellipse with axes 8 and 4: eccentricity sqrt(1 - 1/4)
    yy, xx = np.mgrid[:48, :48]
    im = np.broadcast_to(background, (1, 48, 48, 3)).copy()
    im[0][((yy - 24) / 4.0) ** 2 + ((xx - 24) / 8.0) ** 2 <= 1] = nucleus
    assert nuclei.measure(im, 0.5).eccentricity[0] == pytest.approx(np.sqrt(0.75), abs=0.03)
    # specks smaller than min_area are noise
    im[0, 2:4, 2:4] = nucleus
    assert nuclei.measure(im, 0.5, nuclei.NucleiParams(min_area=5)).count.tolist() == [1]
    assert nuclei.measure(im, 0.5, nuclei.NucleiParams(min_area=4)).count.tolist() == [2]


def test_nuclei_measures_equal_scikit_image_per_patch():
    measure = pytest.importorskip("skimage.measure")
    rng = np.random.default_rng(1)
    noise = ndimage.gaussian_filter(rng.standard_normal((20, 40, 40)), (0, 2, 2))
    images = np.stack([stain_pixel(0.05, 0.3), stain_pixel(1.0, 0.2)])[(noise > 0.15).astype(int)]
    got = nuclei.measure(images, 0.5, nuclei.NucleiParams(min_area=1))
    h = nuclei.haematoxylin(images)
    want = []
    for i in range(len(images)):
        labels, _ = ndimage.label(ndimage.binary_fill_holes(h[i] > 0.5, nuclei._CROSS), nuclei._CROSS)
        t = measure.regionprops_table(labels, h[i], properties=("area", "eccentricity", "intensity_mean", "bbox"))
        assert got.count[i] == len(t["area"])
        inside = (t["bbox-0"] > 0) & (t["bbox-1"] > 0) & (t["bbox-2"] < 40) & (t["bbox-3"] < 40)
        want += [(i, a, e, v) for a, e, v in zip(t["area"][inside], t["eccentricity"][inside],
                                                 t["intensity_mean"][inside])]
    ours = sorted(zip(got.patch, got.area, got.eccentricity, got.intensity))
    assert len(ours) == len(want) > 50
    np.testing.assert_allclose(np.array(ours), np.array(sorted(want)), atol=1e-5)


def test_normalised_wasserstein():
    rng = np.random.default_rng(2)
    a, b = rng.normal(0, 2, 500), rng.normal(1, 2, 700)
    assert nuclei.normalised_w1(a, b) == pytest.approx(scipy.stats.wasserstein_distance(a, b) / a.std())
    assert nuclei.normalised_w1(a, a) == 0
    assert np.isnan(nuclei.normalised_w1(a, b[:0])) and np.isnan(nuclei.normalised_w1(np.ones(3), b))


# -- the untrained marker -------------------------------------------------------------------------

def test_torchscript_untrained_marker_is_read(tmp_path):
    net = torch.jit.script(torch.nn.Sequential(torch.nn.Conv2d(3, 2, 4, 4), torch.nn.AdaptiveAvgPool2d(1),
                                               torch.nn.Flatten()))
    plain, marked = tmp_path / "plain.pt", tmp_path / "marked.pt"
    torch.jit.save(net, str(plain))
    torch.jit.save(net, str(marked), _extra_files={UNTRAINED_MARKER: json.dumps({"what": "random weights"})})
    assert load_encoder(str(plain)).untrained is None
    assert load_encoder(str(marked)).untrained == "random weights"
