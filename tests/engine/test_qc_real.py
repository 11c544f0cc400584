"""The issue's quality-control numbers on the real H&E of ../shared/data/he (303 images, six tissues),
measured once per session by tests/support/qc_real.py (central 256 px crops, thumbnails 4x down) on the
held-out odd-index half (151 images); the even half is what the ink rule may be tuned on."""
from __future__ import annotations

import pytest

from tests.support.data import SHARED
from tests.support.ink import INKS

pytestmark = pytest.mark.skipif(not (SHARED / "he").is_dir(), reason=f"real H&E images {SHARED / 'he'} are absent")


@pytest.fixture(scope="module")
def rates() -> dict:
    from tests.support.qc_real import measure

    out = measure(1)  # held out
    assert out["n"] == 151 and len(out["tissues"]) == 6
    return out


def test_blur_is_flagged(rates):
    assert rates["blur_flagged"] >= 0.95  # Gaussian sigma 2 px
    assert rates["sharp_false_flags"] <= 0.02


def test_clean_tissue_is_kept(rates):
    assert rates["check_clean_lost"] <= 0.02


# Held-out (odd half, 151 images; each stroke draws one of four shades of its family, tests/support/ink.py INKS):
# mask red 93.5 / green 98.1 / blue 81.8 / black 97.4 %, clean tissue lost 1.2 %; check red 95.2 / green
# 98.1 / blue 81.4 / black 97.4 %, clean tissue lost 0.3 %, 1.3 % of clean crops rejected for ink.
# (Tuning half, even index: mask red 90.3 / green 97.0 / blue 81.2 / black 93.6 %, lost 2.2 %; check red 91.9 /
# green 97.6 / blue 83.3 / black 95.2 %, lost 1.1 %, clean crops 2.0 %.) Light and violet blues sit on
# haematoxylin's chromaticity at the same density (a per-pixel cone gaining 7 % of blue costs 2 % more clean
# pixels), and pale reds on eosin's; the goal is 95 % per family.
MISSED = {
    ("mask", "red"): "held-out mask red 93.5 % (goal 95 %)",
    ("mask", "blue"): "held-out mask blue 81.8 % (goal 95 %)",
    ("check", "blue"): "held-out check blue 81.4 % (goal 95 %)",
}


@pytest.mark.parametrize(
    "where,ink",
    [pytest.param(w, k, marks=[pytest.mark.xfail(strict=True, reason=MISSED[w, k])] if (w, k) in MISSED else [])
     for w in ("mask", "check") for k in INKS],
)
def test_ink_is_rejected(rates, where, ink):
    assert rates[f"{where}_{ink}_rejected"] >= 0.95


def test_clean_tissue_kept_by_the_mask_and_clean_crops_pass(rates):
    assert rates["mask_clean_lost"] <= 0.02 and rates["clean_crops_ink_rejected"] <= 0.02
