"""The issue's quality-control numbers on the real H&E of ../shared/data/he (303 images, six tissues),
measured once per session by tests/support/qc_real.py (central 256 px crops, thumbnails 4x down) on the
held-out odd-index half (151 images); the even half is what the ink rule may be tuned on. And the
kernels against their references on painted tissue: synthetic always, real where it is there."""
from __future__ import annotations

import pytest

from tests.support.ink import HE, INKS

needs_he = pytest.mark.skipif(not HE.is_dir(), reason=f"real H&E images {HE} are absent")


@pytest.fixture(scope="module")
def rates() -> dict:
    from tests.support.qc_real import measure

    out = measure(1)  # held out
    assert out["n"] == 151 and len(out["tissues"]) == 6
    return out


@needs_he
def test_blur_is_flagged(rates):
    assert rates["blur_flagged"] >= 0.95  # Gaussian sigma 2 px
    assert rates["sharp_false_flags"] <= 0.02


@needs_he
def test_clean_tissue_is_kept(rates):
    assert rates["check_clean_lost"] <= 0.02


# Held-out (odd half, 151 images; each stroke draws one of four shades of its family, tests/support/ink.py INKS):
# mask red 93.5 / green 99.3 / blue 96.6 / black 97.5 %, clean tissue lost 1.5 %; check red 95.2 / green
# 98.7 / blue 95.9 / black 97.5 %, clean tissue lost 0.5 %, 2.0 % (3 of 151) of clean crops rejected for ink.
# (Tuning half, even index: mask red 90.3 / green 99.3 / blue 97.0 / black 94.6 %, lost 2.3 %; check red 91.9 /
# green 98.9 / blue 96.9 / black 95.9 %, lost 1.3 %, clean crops 2.6 %.) Blue reaches the goal through the
# bluish-region rule (engine.ink; without it 94.6 % in both) and a blue painter shade that is a marker's
# blue, not haematoxylin's violet (with the old violet shade: 82.7 / 81.8 %). Pale red strokes sit on eosin's
# chromaticity at the same density, and eosin regions are as wide as strokes, so no region rule separates them.
MISSED = {
    ("mask", "red"): "held-out mask red 93.5 % (goal 95 %)",
}


@needs_he
@pytest.mark.parametrize(
    "where,ink",
    [pytest.param(w, k, marks=[pytest.mark.xfail(strict=True, reason=MISSED[w, k])] if (w, k) in MISSED else [])
     for w in ("mask", "check") for k in INKS],
)
def test_ink_is_rejected(rates, where, ink):
    assert rates[f"{where}_{ink}_rejected"] >= 0.95


def synthetic_tissue() -> list:
    """Three 512 px windows of histosynth's H&E-like tissue (31-84 % of their pixels tissue)."""
    import histosynth as synth

    return [synth.render_region(synth.SynthSpec(width=2048, height=1536, seed=s), 768, 512, 512, 512)
            for s in (1, 3, 5)]


def real_tissue() -> list:
    """512 px of one held-out image of each of three tissues."""
    from tests.support.ink import load_he
    from tests.support.qc_real import half

    return [load_he(path)[:512, :512] for path in half(1)[::50]]


@pytest.mark.parametrize("tissue", [synthetic_tissue, pytest.param(real_tissue, marks=needs_he)],
                         ids=["synthetic", "real"])
def test_native_matches_reference_on_painted_tissue(tissue):
    """The kernels agree with the references where the ink rules bite: blue and red strokes over tissue."""
    import numpy as np
    from PIL import Image

    from engine.check import patch_qc, patch_qc_reference
    from engine.mask import tissue_mask, tissue_mask_reference
    from tests.support.ink import paint, stroke
    from tests.support.qc_real import THUMB

    rng = np.random.default_rng(3)
    inked = []
    for img in tissue():
        for shade, alpha in ((INKS["blue"][1], 0.4), (INKS["red"][1], 0.5), (INKS["blue"][3], 0.8)):
            thumb = np.asarray(Image.fromarray(img).reduce(THUMB))
            painted = paint(thumb, stroke(thumb.shape[:2], rng, 12), shade, alpha)
            native, ref = tissue_mask(painted), tissue_mask_reference(painted)
            assert native.threshold == ref.threshold
            np.testing.assert_array_equal(native.mask, ref.mask)
            patches = np.stack([paint(img[:256, :256], stroke((256, 256), rng, 48), shade, alpha), img[256:, 256:]])
            n, r = patch_qc(patches, native.threshold), patch_qc_reference(patches, native.threshold)
            for name in n:
                np.testing.assert_array_equal(n[name], r[name], err_msg=name)
            inked += [(native.mask == 2).mean() > 0.05, n["ink"][0] > 0.05]
    assert np.mean(inked) > 0.8  # the comparisons cover ink, not only tissue


@needs_he
def test_clean_tissue_kept_by_the_mask_and_clean_crops_pass(rates):
    assert rates["mask_clean_lost"] <= 0.02 and rates["clean_crops_ink_rejected"] <= 0.02
