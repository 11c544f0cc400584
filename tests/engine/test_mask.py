"""engine.mask: native kernel vs numpy reference, and known answers."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from engine.ink import is_bluish_reference, is_ink_reference
from engine.mask import (
    CANDIDATE,
    DARK,
    PEN,
    WHITE,
    MaskParams,
    MaskResult,
    pixel_classes_reference,
    tissue_mask,
    tissue_mask_reference,
)
from tests.support.thumbnails import BLACK_INK, BLUE_INK, GREEN_INK, PINK, PURPLE, SLIDE, synthetic_thumbnail

BLUISH = (90, 80, 140)  # haematoxylin-like blue: not ink pixel by pixel, only as a wide region


def assert_same(a: MaskResult, b: MaskResult) -> None:
    assert a.mask.dtype == b.mask.dtype == np.uint8
    assert a.mask.shape == b.mask.shape
    assert a.threshold == b.threshold
    assert a.pen_fraction == pytest.approx(b.pen_fraction, abs=1e-12)
    np.testing.assert_array_equal(a.mask, b.mask)
    assert set(np.unique(a.mask)) <= {0, 1, 2}


def square_image(size=64, lo=16, hi=48, colour=PINK) -> np.ndarray:
    img = np.full((size, size, 3), 255, np.uint8)
    img[lo:hi, lo:hi] = colour
    return img


PARAM_VARIANTS = [
    MaskParams(),
    MaskParams(close_radius=0, open_radius=0, ink_speck_radius=0, min_object_area=0),
    MaskParams(close_radius=1, open_radius=3, max_hole_area=20, min_object_area=40),
    MaskParams(saturation=35, close_radius=3, open_radius=1, ink_speck_radius=2),
    MaskParams(min_saturation=0, max_saturation=255, min_object_area=1),
    MaskParams(white=200, dark=80, max_hole_area=1),
    MaskParams(open_radius=0, max_hole_area=50, min_object_area=60),
    MaskParams(ink_region_radius=0),
    MaskParams(ink_region_radius=1, ink_speck_radius=0),
    MaskParams(inks=("green", "black", "blue")),  # no red: bone and blood studies
    MaskParams(inks=("red",)),
    MaskParams(inks=()),
]


# --- native vs reference ------------------------------------------------------


@pytest.mark.parametrize("seed", range(14))
def test_native_matches_reference_structured(seed):
    rng = np.random.default_rng(seed)
    img = synthetic_thumbnail(rng, int(rng.integers(40, 160)), int(rng.integers(40, 160)))
    params = PARAM_VARIANTS[seed % len(PARAM_VARIANTS)]
    native, ref = tissue_mask(img, params), tissue_mask_reference(img, params)
    assert_same(native, ref)
    if params == MaskParams():
        assert 0 < (native.mask == 1).sum() < native.mask.size


@pytest.mark.parametrize("seed", range(4))
def test_native_matches_reference_noise(seed):
    rng = np.random.default_rng(100 + seed)
    img = rng.integers(0, 256, (37, 53, 3), dtype=np.uint8)
    for params in PARAM_VARIANTS:
        assert_same(tissue_mask(img, params), tissue_mask_reference(img, params))


@pytest.mark.parametrize("shape", [(1, 1), (1, 17), (17, 1), (2, 2), (7, 13), (13, 7), (5, 64)])
def test_native_matches_reference_odd_sizes(shape):
    rng = np.random.default_rng(sum(shape))
    for img in (synthetic_thumbnail(rng, *shape), rng.integers(0, 256, (*shape, 3), dtype=np.uint8)):
        for params in PARAM_VARIANTS:
            assert_same(tissue_mask(img, params), tissue_mask_reference(img, params))


def test_non_contiguous_input():
    img = synthetic_thumbnail(np.random.default_rng(7), 80, 120)
    view = img[::2, ::-1]
    assert_same(tissue_mask(view), tissue_mask_reference(np.ascontiguousarray(view)))


@pytest.fixture(scope="module")
def slide_thumbnail() -> np.ndarray:
    if not SLIDE.exists():
        pytest.skip(f"real slide not available: {SLIDE} (../shared/data is absent)")
    openslide = pytest.importorskip("openslide")
    with openslide.OpenSlide(str(SLIDE)) as slide:
        return np.asarray(slide.get_thumbnail((256, 256)).convert("RGB"))


def test_real_slide_matches_reference(slide_thumbnail):
    for params in PARAM_VARIANTS:
        native = tissue_mask(slide_thumbnail, params)
        assert_same(native, tissue_mask_reference(slide_thumbnail, params))
    native = tissue_mask(slide_thumbnail)
    # CMU-1-Small-Region: one tissue strip on glass, roughly a third of the thumbnail.
    assert 0.2 < (native.mask == 1).mean() < 0.6
    assert native.mask[:8, :8].sum() == 0  # glass corner
    assert 20 <= native.threshold <= 40


# --- pixel rule -----------------------------------------------------------------


@pytest.mark.parametrize(
    "rgb, expected",
    [
        ((255, 255, 255), WHITE),
        ((225, 221, 230), WHITE),
        ((0, 0, 0), DARK),
        (BLACK_INK, DARK),
        ((60, 60, 64), PEN),  # black ink, lighter than `dark`
        (GREEN_INK, PEN),
        ((60, 180, 190), PEN),  # cyan
        (BLUE_INK, PEN),
        ((170, 10, 30), PEN),  # red marker
        ((220, 80, 90), PEN),  # red marker, faint
        (PURPLE, CANDIDATE),  # r clearly above g: haematoxylin, not ink
        (PINK, CANDIDATE),
        ((200, 120, 150), CANDIDATE),
    ],
)
def test_pixel_rule(rgb, expected):
    px = np.array(rgb, np.uint8).reshape(1, 1, 3)
    cls, _ = pixel_classes_reference(px, 220, 50)
    assert cls[0, 0] == expected
    # The native rule agrees: a 1x1 image with a fixed threshold and no cleanup.
    params = MaskParams(saturation=0, close_radius=0, open_radius=0, min_object_area=0)
    result = tissue_mask(px, params)
    assert result.mask[0, 0] == {WHITE: 0, CANDIDATE: 1}.get(int(expected), 2)
    assert result.pen_fraction == (expected in (PEN, DARK))


def test_saturation_formula():
    px = np.array([[[200, 100, 150], [0, 0, 0], [255, 0, 0], [90, 90, 90]]], np.uint8)
    _, sat = pixel_classes_reference(px, 220, 50)
    np.testing.assert_array_equal(sat[0], [255 * 100 // 200, 0, 255, 0])


# --- known answers --------------------------------------------------------------


@pytest.mark.parametrize("fn", [tissue_mask, tissue_mask_reference])
def test_all_white_is_empty(fn):
    result = fn(np.full((50, 70, 3), 245, np.uint8))
    assert result.mask.sum() == 0
    assert result.threshold == MaskParams().min_saturation  # no candidate pixels
    assert result.pen_fraction == 0.0


@pytest.mark.parametrize("fn", [tissue_mask, tissue_mask_reference])
@pytest.mark.parametrize("colour", [PINK, PURPLE])
def test_square_on_white_is_exact(fn, colour):
    result = fn(square_image(colour=colour))
    expected = np.zeros((64, 64), np.uint8)
    expected[16:48, 16:48] = 1
    np.testing.assert_array_equal(result.mask, expected)


@pytest.mark.parametrize("fn", [tissue_mask, tissue_mask_reference])
def test_square_touching_border_is_kept(fn):
    # Erosion pads with 1, so tissue at the image edge is not eaten.
    img = np.full((40, 40, 3), 255, np.uint8)
    img[:, :20] = PINK
    np.testing.assert_array_equal(fn(img).mask[:, :20], 1)
    assert fn(img).mask[:, 20:].sum() == 0


@pytest.mark.parametrize("fn", [tissue_mask, tissue_mask_reference])
def test_hole_is_filled(fn):
    img = square_image()
    img[26:38, 26:38] = 255  # 12x12: too wide for closing with radius 2
    expected = np.zeros((64, 64), np.uint8)
    expected[16:48, 16:48] = 1
    np.testing.assert_array_equal(fn(img).mask, expected)
    # Larger than max_hole_area: stays a hole.
    kept = fn(img, MaskParams(max_hole_area=143)).mask
    assert kept[26:38, 26:38].sum() == 0
    assert kept.sum() == 32 * 32 - 144
    np.testing.assert_array_equal(fn(img, MaskParams(max_hole_area=144)).mask, expected)


@pytest.mark.parametrize("fn", [tissue_mask, tissue_mask_reference])
def test_background_touching_border_is_not_a_hole(fn):
    img = np.full((40, 40, 3), 255, np.uint8)
    img[:, :] = PINK
    img[10:30, 0:15] = 255  # a bay open to the left border
    mask = fn(img).mask
    assert mask[10:30, 0:15].sum() == 0


@pytest.mark.parametrize("fn", [tissue_mask, tissue_mask_reference])
def test_speck_is_removed(fn):
    img = square_image()
    img[3:6, 3:6] = PINK  # 3x3 speck (same colour: Otsu would split two colours)
    expected = np.zeros((64, 64), np.uint8)
    expected[16:48, 16:48] = 1
    np.testing.assert_array_equal(fn(img).mask, expected)  # opening removes it
    # Without morphology, min_object_area alone decides.
    bare = dict(close_radius=0, open_radius=0)
    assert fn(img, MaskParams(**bare, min_object_area=10)).mask[3:6, 3:6].sum() == 0
    assert fn(img, MaskParams(**bare, min_object_area=9)).mask[3:6, 3:6].sum() == 9


@pytest.mark.parametrize("fn", [tissue_mask, tissue_mask_reference])
def test_diagonal_pixels_are_one_object(fn):
    # 8-connectivity: a diagonal line of 20 pixels is one component of area 20.
    img = np.full((30, 30, 3), 255, np.uint8)
    idx = np.arange(5, 25)
    img[idx, idx] = PURPLE
    params = dict(close_radius=0, open_radius=0)
    assert fn(img, MaskParams(**params, min_object_area=20)).mask.sum() == 20
    assert fn(img, MaskParams(**params, min_object_area=21)).mask.sum() == 0


@pytest.mark.parametrize("fn", [tissue_mask, tissue_mask_reference])
@pytest.mark.parametrize("ink", [GREEN_INK, BLUE_INK, BLACK_INK, (170, 10, 30)])
@pytest.mark.parametrize("width", [6, 12])  # ink opening drops strokes < 2 * open_radius + 1
def test_pen_stroke_is_ink(fn, ink, width):
    img = np.full((64, 64, 3), 255, np.uint8)
    img[8:56, 8:56] = PURPLE
    img[:, 30 : 30 + width] = ink  # a stroke across the whole image
    result = fn(img)
    np.testing.assert_array_equal(result.mask[:, 30 : 30 + width], 2)  # even where closing bridges tissue
    assert (result.mask[8:56, 8:30] == 1).all() and (result.mask[8:56, 30 + width : 56] == 1).all()
    assert (result.mask == 1).sum() == 48 * (48 - width)
    assert result.pen_fraction == pytest.approx(64 * width / 64**2)


def bluish_stroke_and_nuclei() -> np.ndarray:
    """Pink tissue with a 10 px band and 5 px blobs of BLUISH (a wide stroke vs nuclei)."""
    img = np.full((64, 64, 3), PINK, np.uint8)
    img[:, 40:50] = BLUISH
    for y in range(4, 60, 10):
        for x in range(4, 32, 10):
            img[y : y + 5, x : x + 5] = BLUISH
    return img


@pytest.mark.parametrize("fn", [tissue_mask, tissue_mask_reference])
def test_wide_bluish_region_is_ink_nuclei_are_not(fn):
    img = bluish_stroke_and_nuclei()
    assert not is_ink_reference(np.array(BLUISH, np.uint8)) and is_bluish_reference(np.array(BLUISH, np.uint8))
    mask = fn(img).mask
    assert (mask[:, 40:50] == 2).all() and (mask[:, :36] == 1).all() and (mask[:, 54:] == 1).all()
    assert (fn(img, MaskParams(ink_region_radius=0)).mask == 1).all()  # per pixel it is tissue
    assert (fn(img, MaskParams(ink_region_radius=5)).mask == 1).all()  # narrower than 11 px: not a region
    for params in PARAM_VARIANTS:
        assert_same(tissue_mask(img, params), tissue_mask_reference(img, params))


@pytest.mark.parametrize("fn", [tissue_mask, tissue_mask_reference])
def test_hole_touching_ink_is_not_filled(fn):
    img = square_image(colour=PURPLE)
    img[26:38, 26:38] = 255  # a hole of glass ...
    img[29:35, 20:26] = GREEN_INK  # ... with an ink blot at its rim
    mask = fn(img).mask
    assert (mask[27:37, 27:37] == 0).all() and (mask[29:35, 20:26] == 2).all()
    assert (mask[16:24, 16:48] == 1).all()


@pytest.mark.parametrize("fn", [tissue_mask, tissue_mask_reference])
def test_red_ink_on_glass_is_not_tissue(fn):
    img = np.full((64, 64, 3), 240, np.uint8)
    img[8:56, 8:56] = (170, 10, 30)
    mask = fn(img).mask
    assert (mask == 1).sum() == 0 and (mask[8:56, 8:56] == 2).all()


BONE = (186, 64, 85)  # osteosarcoma's decalcified bone (median of a 500 x 800 px field): a red marker's colour


@pytest.mark.parametrize("fn", [tissue_mask, tissue_mask_reference])
def test_bone_is_red_ink_unless_red_is_left_out(fn):
    """Dense eosinophilic tissue has red ink's colour: by default its field reads as ink; looked for
    without red it is tissue, while blue ink beside it is still found (the families are independent)."""
    rng = np.random.default_rng(0)
    img = np.full((96, 96, 3), 240, np.uint8)
    img[8:88, 8:60] = np.clip(np.array(BONE) + rng.normal(0, 6, (80, 52, 3)), 0, 255).astype(np.uint8)
    img[8:88, 70:86] = BLUE_INK
    default, no_red = fn(img).mask, fn(img, MaskParams(inks=("green", "black", "blue"))).mask
    assert (default[8:88, 8:60] == 2).mean() > 0.95
    assert (no_red[8:88, 8:60] == 1).mean() > 0.95 and (no_red[8:88, 8:60] == 2).sum() == 0
    assert (no_red[8:88, 70:86] == 2).all() and (default[8:88, 70:86] == 2).all()


@pytest.mark.parametrize("fn", [tissue_mask, tissue_mask_reference])
def test_otsu_two_levels(fn):
    # Two saturation levels: the threshold is the smallest t separating them.
    lo, hi = (200, 176, 190), (200, 105, 150)
    _, sat = pixel_classes_reference(np.array([[lo, hi]], np.uint8), 220, 50)
    img = np.empty((20, 20, 3), np.uint8)
    img[:, :10], img[:, 10:] = lo, hi
    params = MaskParams(min_saturation=0, max_saturation=255)
    assert fn(img, params).threshold == sat[0, 0] + 1
    # Clamped to max_saturation / min_saturation.
    assert fn(img, MaskParams(min_saturation=0, max_saturation=25)).threshold == 25
    assert fn(img, MaskParams(min_saturation=100, max_saturation=120)).threshold == 100


@pytest.mark.parametrize("fn", [tissue_mask, tissue_mask_reference])
def test_single_level_threshold_and_fixed_saturation(fn):
    img = square_image(colour=PURPLE)  # sat 159 everywhere on the candidates
    assert fn(img).threshold == 40  # clamped Otsu
    assert fn(img, MaskParams(min_saturation=0, max_saturation=255)).threshold == 159
    fixed = fn(img, MaskParams(saturation=200))
    assert fixed.threshold == 200 and fixed.mask.sum() == 0


# --- parameters and validation --------------------------------------------------


def test_params_defaults_and_dict():
    p = MaskParams()
    assert p.to_dict() == {
        "white": 220,
        "dark": 50,
        "saturation": None,
        "min_saturation": 20,
        "max_saturation": 40,
        "close_radius": 2,
        "open_radius": 2,
        "ink_speck_radius": 1,
        "ink_region_radius": 3,
        "max_hole_area": 0,
        "min_object_area": 16,
        "inks": ["green", "black", "red", "blue"],
    }
    assert MaskParams(inks=["blue", "green"]).inks == ("green", "blue")  # canonical order: equal params compare equal
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.white = 1  # type: ignore[misc]


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(white=300), "white"),
        (dict(saturation=-1), "saturation"),
        (dict(min_saturation=50, max_saturation=40), "max_saturation"),
        (dict(close_radius=-1), "close_radius"),
        (dict(ink_speck_radius=-1), "ink_speck_radius"),
        (dict(ink_region_radius=-1), "ink_region_radius"),
        (dict(min_object_area=2.5), "min_object_area"),
        (dict(inks=("red", "purple")), "unknown ink family purple; choose from green, black, red, blue"),
    ],
)
def test_bad_params(kwargs, match):
    with pytest.raises(ValueError, match=match):
        MaskParams(**kwargs)


@pytest.mark.parametrize("fn", [tissue_mask, tissue_mask_reference])
@pytest.mark.parametrize(
    "img, match",
    [
        (np.zeros((8, 8, 3), np.float32), "uint8"),
        (np.zeros((8, 8, 3), np.uint16), "uint8"),
        (np.zeros((8, 8), np.uint8), "shape"),
        (np.zeros((8, 8, 4), np.uint8), "shape"),
        (np.zeros((0, 8, 3), np.uint8), "empty"),
    ],
)
def test_bad_input(fn, img, match):
    with pytest.raises(ValueError, match=match):
        fn(img)
