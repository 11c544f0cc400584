"""engine.check: sampled per-patch tissue fraction, native vs reference."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from engine.check import CheckParams, check_patches, patch_tissue, patch_tissue_reference
from engine.mask import MaskParams
from tests.support.thumbnails import BLACK_INK, BLUE_INK, GREEN_INK, PINK, PURPLE, SLIDE, synthetic_thumbnail

RULES = [  # threshold, white, dark, pen_margin
    (20, 220, 50, 30),
    (90, 220, 50, 30),
    (0, 256, 0, 0),
    (45, 200, 80, 12),
]


def patches_of(rng, n, p):
    """Mixed batch: structured synthetic tiles and uniform noise."""
    out = [synthetic_thumbnail(rng, p, p) for _ in range(n - 1)]
    out.append(rng.integers(0, 256, (p, p, 3), dtype=np.uint8))
    return np.stack(out)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("step", [1, 3, 4, 7])
def test_native_matches_reference(seed, step):
    rng = np.random.default_rng(seed)
    patches = patches_of(rng, 6, int(rng.integers(16, 80)))
    for rule in RULES:
        native = patch_tissue(patches, *rule, step=step)
        assert native.dtype == np.float32 and native.shape == (6,)
        np.testing.assert_allclose(native, patch_tissue_reference(patches, *rule, step=step), rtol=0, atol=1e-6)


@pytest.mark.parametrize("shape", [(1, 1), (1, 13), (13, 1), (7, 13)])
def test_odd_patch_sizes(shape):
    rng = np.random.default_rng(5)
    patches = rng.integers(0, 256, (3, *shape, 3), dtype=np.uint8)
    for step in (1, 2, 5, 20):
        np.testing.assert_allclose(
            patch_tissue(patches, 30, step=step), patch_tissue_reference(patches, 30, step=step), rtol=0, atol=1e-6
        )


def solid(colour, p=32):
    return np.broadcast_to(np.array(colour, np.uint8), (1, p, p, 3)).copy()


@pytest.mark.parametrize("fn", [patch_tissue, patch_tissue_reference])
def test_known_answers(fn):
    assert fn(solid((255, 255, 255)), 20)[0] == 0.0
    assert fn(solid((0, 0, 0)), 20)[0] == 0.0
    assert fn(solid(BLACK_INK), 20)[0] == 0.0
    assert fn(solid(GREEN_INK), 20)[0] == 0.0
    assert fn(solid(BLUE_INK), 20)[0] == 0.0
    assert fn(solid(PURPLE), 20)[0] == 1.0
    assert fn(solid(PINK), 20)[0] == 1.0
    assert fn(solid(PINK), 89)[0] == 0.0  # pink saturation is 88
    # Left half tissue: sampled columns 0, 4 of 0, 4, 8, 12.
    half = solid((255, 255, 255), 16)
    half[:, :, :8] = PURPLE
    assert fn(half, 20, step=4)[0] == 0.5
    # Only the sampled sub-grid counts: tissue off the grid is invisible.
    grid = solid((255, 255, 255), 16)
    grid[:, 1::4, 1::4] = PURPLE
    assert fn(grid, 20, step=4)[0] == 0.0 and fn(grid, 20, step=1)[0] == 1 / 16


def test_empty_batch():
    out = patch_tissue(np.zeros((0, 8, 8, 3), np.uint8), 20)
    assert out.shape == (0,) and out.dtype == np.float32


def test_check_patches_uses_mask_params():
    patches = np.concatenate([solid((255, 255, 255)), solid(PINK), solid((205, 205, 210))])
    qc = check_patches(patches, 20)
    np.testing.assert_array_equal(qc.scores["tissue"], [0, 1, 0])  # light grey: low saturation
    np.testing.assert_array_equal(qc.passed, [False, True, False])
    # A lower white level turns the light pink into background.
    qc = check_patches(patches, 20, MaskParams(white=140))
    np.testing.assert_array_equal(qc.passed, [False, False, False])
    qc = check_patches(patches, 0, MaskParams(), CheckParams(min_tissue=0.0, step=2))
    np.testing.assert_array_equal(qc.passed, True)
    np.testing.assert_array_equal(qc.scores["tissue"], [0, 1, 1])


def test_real_slide_patches():
    if not SLIDE.exists():
        pytest.skip(f"real slide not available: {SLIDE} (../shared/data is absent)")
    openslide = pytest.importorskip("openslide")
    with openslide.OpenSlide(str(SLIDE)) as slide:
        w, h = slide.dimensions
        corners = [(0, 0), (w // 2 - 128, h // 2 - 128), (w // 2, h - 600), (w - 256, h - 256)]
        patches = np.stack([np.asarray(slide.read_region(c, 0, (256, 256)).convert("RGB")) for c in corners])
    for step in (1, 4):
        native = patch_tissue(patches, 40, step=step)
        np.testing.assert_allclose(native, patch_tissue_reference(patches, 40, step=step), rtol=0, atol=1e-6)
    assert native[0] < 0.05  # glass corner
    assert native[1] > 0.5  # centre of the tissue strip


def test_params():
    p = CheckParams()
    assert p.to_dict() == {"min_tissue": 0.1, "step": 4}
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.step = 2  # type: ignore[misc]
    with pytest.raises(ValueError, match="step"):
        CheckParams(step=0)
    with pytest.raises(ValueError, match="min_tissue"):
        CheckParams(min_tissue=-0.1)


@pytest.mark.parametrize("fn", [patch_tissue, patch_tissue_reference])
@pytest.mark.parametrize(
    "patches, step, match",
    [
        (np.zeros((2, 8, 8, 3), np.float32), 4, "uint8"),
        (np.zeros((8, 8, 3), np.uint8), 4, "shape"),
        (np.zeros((2, 8, 8, 4), np.uint8), 4, "shape"),
        (np.zeros((2, 8, 8, 3), np.uint8), 0, "step"),
    ],
)
def test_bad_input(fn, patches, step, match):
    with pytest.raises(ValueError, match=match):
        fn(patches, 20, step=step)


def test_empty_batch_gives_empty_fractions():
    empty = np.zeros((0, 16, 16, 3), np.uint8)
    for fn in (patch_tissue, patch_tissue_reference):
        out = fn(empty, 30)
        assert out.dtype == np.float32 and out.shape == (0,)
