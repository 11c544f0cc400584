"""Ink, blur and clean-tissue rates of the mask and the check on the real H&E of ../shared/data/he,
measured once per session (tests/engine/test_qc_real.py asserts the issue's numbers on them)."""
from __future__ import annotations

from functools import lru_cache

import numpy as np
from PIL import Image
from scipy import ndimage

from engine.check import patch_maps_reference, patch_qc
from engine.qc import CheckParams
from engine.mask import INK, TISSUE, MaskParams, tissue_mask
from tests.support.ink import INKS, he_files, load_he, paint, stroke

CROP = 256  # central crop of each image: the check's patch
THUMB = 4  # the mask sees each image downsized this much


def _blur(rgb: np.ndarray, sigma: float) -> np.ndarray:
    out = np.stack([ndimage.gaussian_filter(rgb[..., k].astype(np.float64), sigma) for k in range(3)], -1)
    return out.round().astype(np.uint8)


def half(parity: int) -> list:
    """Every other real image: parity 0 (even index) is what the ink rule may be tuned on, 1 (odd) is held out."""
    return he_files()[parity::2]


@lru_cache(maxsize=None)
def measure(parity: int = 1) -> dict:
    """Per image and ink family: pixel counts of the mask and check, and the focus of sharp and blurred crops,
    on one half of the images (default: the held-out odd half)."""
    rng = np.random.default_rng(14 + parity)
    mp, cp = MaskParams(), CheckParams()
    rows = []
    for path in half(parity):
        img = load_he(path)
        h, w = img.shape[:2]
        thumb = np.asarray(Image.fromarray(img).reduce(THUMB))
        clean_mask = tissue_mask(thumb, mp)
        crop = np.ascontiguousarray(img[h // 2 - CROP // 2 : h // 2 + CROP // 2,
                                        w // 2 - CROP // 2 : w // 2 + CROP // 2])
        clean = patch_maps_reference(crop, clean_mask.threshold, mp, cp)
        row = dict(tissue=path.parent.name, mask_tissue=int((clean_mask.mask != 0).sum()),
                   mask_lost=int((clean_mask.mask == INK).sum()),
                   check_tissue=int((clean["tissue"] | clean["ink"]).sum()), check_lost=int(clean["ink"].sum()))
        for ink, shades in INKS.items():
            shade = shades[rng.integers(len(shades))]
            alpha = rng.uniform(0.3, 1.0)
            where = stroke(thumb.shape[:2], rng, rng.uniform(6, 20))
            m = tissue_mask(paint(thumb, where, shade, alpha), mp).mask
            row[f"mask_{ink}"] = (int(where.sum()), int((m[where] != TISSUE).sum()))
            where = stroke(crop.shape[:2], rng, rng.uniform(24, 80))
            maps = patch_maps_reference(paint(crop, where, shade, alpha), clean_mask.threshold, mp, cp)
            sub = where[:: cp.step, :: cp.step]
            row[f"check_{ink}"] = (int(sub.sum()), int((~maps["tissue"][sub]).sum()))
        scores = patch_qc(np.stack([crop, _blur(crop, 2.0)]), clean_mask.threshold, mp, cp)
        row["focus_sharp"], row["focus_blur"] = float(scores["focus"][0]), float(scores["focus"][1])
        row["ink_clean"] = float(scores["ink"][0])
        rows.append(row)
    return _summary(rows, cp)


def _summary(rows: list[dict], cp: CheckParams) -> dict:
    out = {"n": len(rows), "tissues": sorted({r["tissue"] for r in rows})}
    for where in ("mask", "check"):
        for ink in INKS:
            total = sum(r[f"{where}_{ink}"][0] for r in rows)
            out[f"{where}_{ink}_rejected"] = sum(r[f"{where}_{ink}"][1] for r in rows) / total
        out[f"{where}_clean_lost"] = sum(r[f"{where}_lost"] for r in rows) / sum(r[f"{where}_tissue"] for r in rows)
    sharp = np.array([r["focus_sharp"] for r in rows])
    blur = np.array([r["focus_blur"] for r in rows])
    out["blur_flagged"] = float((blur < cp.min_focus).mean())
    out["sharp_false_flags"] = float((sharp < cp.min_focus).mean())
    out["clean_crops_ink_rejected"] = float((np.array([r["ink_clean"] for r in rows]) > cp.max_ink).mean())
    return out
