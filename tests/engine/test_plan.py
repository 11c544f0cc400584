"""engine.plan: grid, mask-coordinate mapping and tissue fractions."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from engine.mask import tissue_mask
from engine.plan import (
    PlanParams,
    plan_tiles,
    plan_tiles_reference,
    tile_fractions,
    tile_fractions_reference,
)
from tests.support.thumbnails import SLIDE, synthetic_thumbnail


def brute_force(mask, level0_size, tile0, stride0, min_tissue):
    """Straight loops over the grid, straight from the definition."""
    (w0, h0), (mh, mw) = level0_size, mask.shape

    def to_mask(v, m, size):
        return min(max((2 * v * m + size) // (2 * size), 0), m)

    coords, fractions = [], []
    for y in range(0, h0 - tile0 + 1, stride0):
        for x in range(0, w0 - tile0 + 1, stride0):
            x0, x1 = to_mask(x, mw, w0), to_mask(x + tile0, mw, w0)
            y0, y1 = to_mask(y, mh, h0), to_mask(y + tile0, mh, h0)
            area = (x1 - x0) * (y1 - y0)
            f = np.float32(int((mask[y0:y1, x0:x1] == 1).sum()) / area if area else 0.0)
            if f >= min_tissue:
                coords.append((x, y))
                fractions.append(f)
    return np.array(coords, np.int64).reshape(-1, 2), np.array(fractions, np.float32)


def assert_plans_equal(a, b):
    (ca, fa), (cb, fb) = a, b
    assert ca.dtype == cb.dtype == np.int64 and ca.shape[1:] == (2,)
    assert fa.dtype == fb.dtype == np.float32
    np.testing.assert_array_equal(ca, cb)
    np.testing.assert_allclose(fa, fb, rtol=0, atol=1e-6)


CASES = [  # level0_size, tile0, stride0, min_tissue
    ((1000, 800), 64, None, 0.5),
    ((1001, 799), 50, 37, 0.25),  # overlap, sizes not multiples of the mask
    ((4097, 3001), 256, 128, 0.0),
    ((333, 777), 13, 13, 1.0),
    ((640, 480), 7, 3, 0.1),  # tiles smaller than a mask pixel
]


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("case", CASES)
def test_native_matches_reference_and_brute_force(seed, case):
    rng = np.random.default_rng(seed)
    level0_size, tile0, stride0, min_tissue = case
    if seed % 2:
        mask = tissue_mask(synthetic_thumbnail(rng, int(rng.integers(20, 90)), int(rng.integers(20, 90)))).mask
    else:
        mask = (rng.random((int(rng.integers(1, 60)), int(rng.integers(1, 60)))) < 0.5).astype(np.uint8)
    native = plan_tiles(mask, level0_size, tile0, stride0, min_tissue)
    assert_plans_equal(native, plan_tiles_reference(mask, level0_size, tile0, stride0, min_tissue))
    assert_plans_equal(native, brute_force(mask, level0_size, tile0, stride0 or tile0, min_tissue))


@pytest.mark.parametrize("shape", [(1, 1), (1, 9), (9, 1), (7, 13)])
def test_odd_mask_sizes(shape):
    mask = (np.random.default_rng(3).random(shape) < 0.6).astype(np.uint8)
    for tile0, stride0 in [(10, 10), (30, 7), (3, 5)]:
        native = plan_tiles(mask, (91, 67), tile0, stride0, 0.3)
        assert_plans_equal(native, brute_force(mask, (91, 67), tile0, stride0, 0.3))
        assert_plans_equal(native, plan_tiles_reference(mask, (91, 67), tile0, stride0, 0.3))


def test_tile_fractions_random_boxes():
    rng = np.random.default_rng(11)
    mask = (rng.random((41, 57)) < 0.3).astype(np.uint8)
    boxes = np.column_stack(
        [rng.integers(0, 1200, 500), rng.integers(0, 900, 500), rng.integers(0, 400, 500), rng.integers(0, 400, 500)]
    )
    native = tile_fractions(mask, (1140, 820), boxes)
    assert native.dtype == np.float32 and native.shape == (500,)
    np.testing.assert_allclose(native, tile_fractions_reference(mask, (1140, 820), boxes), rtol=0, atol=1e-6)
    # Zero-area and fully outside boxes measure 0.
    edge = np.array([[10, 10, 0, 50], [5000, 5000, 100, 100]], np.int64)
    np.testing.assert_array_equal(tile_fractions(mask, (1140, 820), edge), [0, 0])


def test_square_known_answer():
    # Mask square [16, 48) on a 64x64 mask of a 1024x1024 slide: 16 level-0 px per mask px.
    mask = np.zeros((64, 64), np.uint8)
    mask[16:48, 16:48] = 1
    coords, fractions = plan_tiles(mask, (1024, 1024), 128, None, 0.0)
    assert len(coords) == 64
    inside = (coords >= 256).all(1) & (coords + 128 <= 768).all(1)
    outside = (coords + 128 <= 256).any(1) | (coords >= 768).any(1)
    assert inside.sum() == 16 and outside.sum() == 48 and (inside | outside).all()
    np.testing.assert_array_equal(fractions[inside], 1.0)
    np.testing.assert_array_equal(fractions[outside], 0.0)
    kept, kept_fractions = plan_tiles(mask, (1024, 1024), 128, None, 0.5)
    np.testing.assert_array_equal(kept, coords[inside])
    np.testing.assert_array_equal(kept_fractions, 1.0)
    # Half-overlapping tiles straddle the square edge: exactly 0.5 tissue.
    f = tile_fractions(mask, (1024, 1024), np.array([[192, 256, 128, 128], [704, 704, 128, 128]]))
    np.testing.assert_array_equal(f, [0.5, 0.25])


def test_grid_order_and_edges():
    mask = np.ones((10, 10), np.uint8)
    coords, fractions = plan_tiles(mask, (1000, 700), 300, None, 0.0)
    # Row-major: y outer, x inner; 900 + 300 > 1000 so no x = 900 tile; no padded edge tiles.
    expected = [(x, y) for y in (0, 300) for x in (0, 300, 600)]
    np.testing.assert_array_equal(coords, expected)
    np.testing.assert_array_equal(fractions, 1.0)
    assert ((coords + 300) <= (1000, 700)).all()


def test_overlap_stride():
    mask = np.ones((20, 20), np.uint8)
    coords, _ = plan_tiles(mask, (1000, 1000), 300, 150, 0.5)
    axis = list(range(0, 701, 150))  # 0..700: 5 positions
    assert len(coords) == len(axis) ** 2
    np.testing.assert_array_equal(np.unique(coords[:, 0]), axis)
    assert ((coords + 300) <= 1000).all()


def test_tile_larger_than_slide_is_empty():
    coords, fractions = plan_tiles(np.ones((4, 4), np.uint8), (100, 100), 101)
    assert coords.shape == (0, 2) and coords.dtype == np.int64
    assert fractions.shape == (0,) and fractions.dtype == np.float32


def test_bool_mask_accepted():
    mask = np.random.default_rng(0).random((30, 40)) < 0.5
    assert_plans_equal(
        plan_tiles(mask, (400, 300), 20, 20, 0.5), plan_tiles(mask.astype(np.uint8), (400, 300), 20, 20, 0.5)
    )


def test_real_slide_plan():
    if not SLIDE.exists():
        pytest.skip(f"real slide not available: {SLIDE} (../shared/data is absent)")
    openslide = pytest.importorskip("openslide")
    with openslide.OpenSlide(str(SLIDE)) as slide:
        thumb = np.asarray(slide.get_thumbnail((256, 256)).convert("RGB"))
        size = slide.dimensions
    mask = tissue_mask(thumb).mask
    for tile0, stride0 in [(256, 256), (224, 112), (512, 256)]:
        native = plan_tiles(mask, size, tile0, stride0, 0.5)
        assert_plans_equal(native, brute_force(mask, size, tile0, stride0, 0.5))
        assert_plans_equal(native, plan_tiles_reference(mask, size, tile0, stride0, 0.5))
        assert len(native[0]) > 0


def test_params():
    p = PlanParams()
    assert p.to_dict() == {"patch_size": 512, "stride": None, "min_tissue": 0.5}
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.patch_size = 1  # type: ignore[misc]
    for kwargs, match in [
        (dict(patch_size=0), "patch_size"),
        (dict(stride=0), "stride"),
        (dict(min_tissue=1.5), "min_tissue"),
    ]:
        with pytest.raises(ValueError, match=match):
            PlanParams(**kwargs)


@pytest.mark.parametrize("fn", [plan_tiles, plan_tiles_reference])
@pytest.mark.parametrize(
    "mask, size, tile0, stride0, match",
    [
        (np.ones((4, 4), np.float32), (100, 100), 10, 10, "uint8"),
        (np.ones((4, 4, 1), np.uint8), (100, 100), 10, 10, "shape"),
        (np.ones((4, 4), np.uint8), (100,), 10, 10, "level0_size"),
        (np.ones((4, 4), np.uint8), (0, 100), 10, 10, "level0_size"),
        (np.ones((4, 4), np.uint8), (100, 100), 0, 10, "tile0"),
        (np.ones((4, 4), np.uint8), (100, 100), 10, -5, "stride0"),
        (np.ones((4, 4), np.uint8), (100, 100), 10.0, 10, "tile0"),
    ],
)
def test_bad_input(fn, mask, size, tile0, stride0, match):
    with pytest.raises(ValueError, match=match):
        fn(mask, size, tile0, stride0)


@pytest.mark.parametrize("fn", [tile_fractions, tile_fractions_reference])
@pytest.mark.parametrize(
    "boxes, match",
    [
        (np.zeros((3, 3), np.int64), "shape"),
        (np.zeros((3, 4), np.float64), "integers"),
        (np.array([[-1, 0, 5, 5]]), "non-negative"),
    ],
)
def test_bad_boxes(fn, boxes, match):
    with pytest.raises(ValueError, match=match):
        fn(np.ones((4, 4), np.uint8), (100, 100), boxes)
