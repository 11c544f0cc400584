"""engine.check: per-patch scores, native vs reference, known answers, reasons."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from engine import _native
from engine.check import check_native_layout, check_patches, patch_qc, patch_qc_reference
from engine.qc import REASONS, SCORES, CheckParams, reasons_of
from engine.mask import MaskParams
from tests.support.thumbnails import BLACK_INK, BLUE_INK, GREEN_INK, PINK, PURPLE, SLIDE, synthetic_thumbnail

BLUISH = (90, 80, 140)  # haematoxylin-like blue: not ink pixel by pixel, only as a wide region
PARAMS = [CheckParams(), CheckParams(step=1, ink_radius=0),
          CheckParams(step=3, ink_radius=1, fold_od=1500, grey_max=230),
          CheckParams(step=7, ink_radius=3), CheckParams(ink_region_radius=0), CheckParams(step=2, ink_region_radius=1)]


def patches_of(rng, n, p):
    """Mixed batch: structured synthetic tiles and uniform noise."""
    out = [synthetic_thumbnail(rng, p, p) for _ in range(n - 1)]
    out.append(rng.integers(0, 256, (p, p, 3), dtype=np.uint8))
    return np.stack(out)


def assert_same(a, b):
    assert set(a) == set(b) == set(SCORES)
    for k in SCORES:
        assert a[k].dtype == np.float32
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("cp", PARAMS)
def test_native_matches_reference(seed, cp):
    rng = np.random.default_rng(seed)
    patches = patches_of(rng, 5, int(rng.integers(16, 80)))
    for threshold, mp in ((20, MaskParams()), (90, MaskParams()), (45, MaskParams(white=200, dark=80)),
                          (30, MaskParams(inks=("green", "black", "blue"))), (30, MaskParams(inks=("red",)))):
        assert_same(patch_qc(patches, threshold, mp, cp), patch_qc_reference(patches, threshold, mp, cp))


@pytest.mark.parametrize("shape", [(1, 1), (1, 13), (13, 1), (5, 5), (7, 13)])
def test_odd_patch_sizes(shape):
    patches = np.random.default_rng(5).integers(0, 256, (3, *shape, 3), dtype=np.uint8)
    for cp in PARAMS:
        assert_same(patch_qc(patches, 30, None, cp), patch_qc_reference(patches, 30, None, cp))


def solid(colour, p=32):
    return np.broadcast_to(np.array(colour, np.uint8), (1, p, p, 3)).copy()


@pytest.mark.parametrize("fn", [patch_qc, patch_qc_reference])
def test_known_answers(fn):
    def score(patch, name, threshold=20, cp=None):
        return fn(patch, threshold, None, cp)[name][0]

    assert score(solid((255, 255, 255)), "tissue") == 0.0
    for ink in ((0, 0, 0), BLACK_INK, GREEN_INK, BLUE_INK, (170, 10, 30)):
        assert score(solid(ink), "tissue") == 0.0 and score(solid(ink), "ink") == 1.0
    for stain in (PURPLE, PINK):
        assert score(solid(stain), "tissue") == 1.0 and score(solid(stain), "ink") == 0.0
        assert score(solid(stain), "clean") == 1.0 and score(solid(stain), "fold") == 0.0
    assert score(solid(PINK), "tissue", 89) == 0.0  # pink saturation is 88
    assert score(solid((40, 10, 60)), "fold") == 1.0  # dark purple: OD sum above fold_od
    assert score(solid((40, 10, 60)), "clean") == 0.0
    assert score(solid((150, 150, 150)), "bubble") == 1.0  # grey, not glass
    assert score(solid((150, 150, 150)), "focus") == 0.0  # flat: no edge, nothing in focus
    half = solid((255, 255, 255), 16)
    half[:, :, :8] = PURPLE
    assert score(half, "tissue", cp=CheckParams(step=4)) == 0.5


@pytest.mark.parametrize("fn", [patch_qc, patch_qc_reference])
def test_wide_bluish_region_is_ink_nuclei_are_not(fn):
    patch = solid(PINK, 64)
    patch[:, :, 32:] = BLUISH  # a band of 8 sub-grid columns: wider than the (2 * 3 + 1) window
    assert fn(patch, 20)["ink"][0] == 0.5
    assert fn(patch, 20, None, CheckParams(ink_region_radius=0))["ink"][0] == 0.0
    nuclei = solid(PINK, 64)
    for y in range(0, 64, 24):
        for x in range(0, 64, 24):
            nuclei[0, y : y + 16, x : x + 16] = BLUISH  # 4 sub-grid pixels wide
    assert fn(nuclei, 20)["ink"][0] == 0.0 and fn(nuclei, 20)["tissue"][0] == 1.0
    both = np.concatenate([patch, nuclei])
    for cp in PARAMS:
        assert_same(patch_qc(both, 20, None, cp), patch_qc_reference(both, 20, None, cp))


@pytest.mark.parametrize("fn", [patch_qc, patch_qc_reference])
def test_focus_drops_with_blur(fn):
    from scipy import ndimage

    rng = np.random.default_rng(1)
    sharp = (rng.random((64, 64)) < 0.3) * 120 + 100
    img = np.stack([sharp, sharp * 0.6, sharp], -1).astype(np.uint8)
    blurred = np.stack([ndimage.gaussian_filter(img[..., k].astype(float), 2) for k in range(3)],
                       -1).round().astype(np.uint8)
    focus = fn(np.stack([img, blurred]), 20)["focus"]
    assert focus[0] > 0.5 and focus[1] < 0.15


def test_native_columns_are_laid_out_from_scores():
    """setup.py generates the kernel's column layout from engine.qc.SCORES; a build made for another
    layout is refused at import."""
    assert _native.PATCH_SCORES == SCORES
    check_native_layout(SCORES)
    with pytest.raises(ImportError, match="rebuild"):
        check_native_layout(SCORES[1:] + SCORES[:1])
    with pytest.raises(ImportError, match="rebuild"):
        check_native_layout(SCORES + ("extra",))


def test_empty_batch():
    for fn in (patch_qc, patch_qc_reference):
        out = fn(np.zeros((0, 8, 8, 3), np.uint8), 20)
        assert all(v.shape == (0,) and v.dtype == np.float32 for v in out.values())


def with_nuclei(patch):
    """`patch` with a purple dot every 16 px: edges, as tissue in focus has."""
    out = patch.copy()
    out[:, 4::16, 4::16] = PURPLE
    return out


def test_check_patches_reasons():
    patches = np.concatenate([solid((255, 255, 255)), with_nuclei(solid(PINK)), solid(GREEN_INK),
                              solid((205, 205, 210))])
    qc = check_patches(patches, 20)
    np.testing.assert_array_equal(qc.scores["tissue"], [0, 1, 0, 0])
    np.testing.assert_array_equal(qc.passed, [False, True, False, False])
    assert qc.reasons[2] == REASONS["tissue"] | REASONS["ink"] | REASONS["blur"]  # flat: no edge in focus either
    # A lower white level turns the light pink into background.
    assert not check_patches(patches, 20, MaskParams(white=140)).passed.any()


DARK_VIOLET = (60, 35, 110)  # a violet marker: haematoxylin's own hue, pixel by pixel


def blurred_ink_tile(sigma: float, seed: int = 1) -> np.ndarray:
    """A 512 px tile of glass crossed by a red and a dark-violet marker stroke, no tissue, out of focus
    by a Gaussian of `sigma` px, with a scanner's noise (1.5 grey levels) and JPEG at quality 80."""
    import io

    from PIL import Image, ImageFilter

    from tests.support.ink import paint, stroke

    rng = np.random.default_rng(seed)
    tile = np.full((512, 512, 3), (232, 232, 236), np.uint8)
    tile = paint(tile, stroke(tile.shape[:2], rng, 90), (170, 10, 30), 0.9)
    tile = paint(tile, stroke(tile.shape[:2], rng, 90), DARK_VIOLET, 0.95)
    blurred = np.asarray(Image.fromarray(tile).filter(ImageFilter.GaussianBlur(sigma)), np.float64)
    noisy = np.clip(np.round(blurred + rng.normal(0, 1.5, blurred.shape)), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(noisy).save(buf, "JPEG", quality=80)
    return np.asarray(Image.open(buf).convert("RGB"))


@pytest.mark.parametrize("sigma", [6, 8, 12])
def test_blurred_ink_keeps_no_64px_patch(sigma):
    """Out-of-focus marker on glass: inside a stroke, a 64 px patch is evenly coloured noise, whose
    Laplacian ratio looks sharp and whose violet passes for haematoxylin. Without an edge it has no
    focus, so none is kept (before the edge count: 17, 19 and 18 of the 64 were)."""
    tile = blurred_ink_tile(sigma)
    patches = tile.reshape(8, 64, 8, 64, 3).swapaxes(1, 2).reshape(64, 64, 64, 3)
    for threshold in (20, 40):  # the mask's Otsu threshold is clamped to 20..40
        qc = check_patches(patches, threshold)
        assert not qc.passed.any()
        violet = np.all(np.abs(np.median(patches, (1, 2)) - DARK_VIOLET) < 12, axis=-1)
        assert violet.sum() >= 3 and (qc.reasons[violet] & REASONS["blur"]).all()
        assert_same(qc.scores, patch_qc_reference(patches, threshold))


def test_reasons_of_rethresholds():
    scores = {k: np.array(v, np.float32) for k, v in dict(
        tissue=[0.5, 0.05, 0.5, 0.5, 0.5, 0.5], ink=[0, 0, 0.5, 0, 0, 0], focus=[1, 1, 1, 0.05, 1, 1],
        fold=[0, 0, 0, 0, 0.9, 0], bubble=[0, 0, 0, 0, 0, 0.9], clean=[0.5] * 6).items()}
    r = reasons_of(scores, CheckParams())
    np.testing.assert_array_equal(r, [0, REASONS["tissue"], REASONS["ink"], REASONS["blur"], REASONS["fold"],
                                      REASONS["bubble"]])
    assert reasons_of(scores, CheckParams(min_tissue=0.6))[0] == REASONS["tissue"]


def test_real_slide_patches():
    if not SLIDE.exists():
        pytest.skip(f"real slide not available: {SLIDE} (../shared/data is absent)")
    from engine.readers import open_slide

    with open_slide(SLIDE) as slide:
        w, h = slide.dimensions
        corners = [(0, 0), (w // 2 - 128, h // 2 - 128), (w // 2, h - 600), (w - 256, h - 256)]
        patches = slide.read_regions(corners, 0, (256, 256))
    for cp in (CheckParams(step=1), CheckParams()):
        native = patch_qc(patches, 40, None, cp)
        assert_same(native, patch_qc_reference(patches, 40, None, cp))
    assert native["tissue"][0] < 0.05  # glass corner
    assert native["tissue"][1] > 0.5 and check_patches(patches, 40).passed[1]  # centre of the tissue strip


def test_params():
    p = CheckParams()
    assert set(p.to_dict()) >= {"min_tissue", "step", "max_ink", "min_focus", "max_fold", "max_bubble"}
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.step = 2  # type: ignore[misc]
    for kwargs, match in [(dict(step=0), "step"), (dict(min_tissue=-0.1), "min_tissue"), (dict(max_ink=2), "max_ink"),
                          (dict(min_focus=-1), "min_focus"), (dict(ink_radius=-1), "ink_radius"),
                          (dict(ink_region_radius=-1), "ink_region_radius")]:
        with pytest.raises(ValueError, match=match):
            CheckParams(**kwargs)


@pytest.mark.parametrize("fn", [patch_qc, patch_qc_reference])
@pytest.mark.parametrize(
    "patches, match",
    [(np.zeros((2, 8, 8, 3), np.float32), "uint8"), (np.zeros((8, 8, 3), np.uint8), "shape"),
     (np.zeros((2, 8, 8, 4), np.uint8), "shape")],
)
def test_bad_input(fn, patches, match):
    with pytest.raises(ValueError, match=match):
        fn(patches, 20)
