"""Quality check of decoded patches at full resolution: the scores of engine.qc, computed natively.

Per patch, on the sub-grid of rows/cols 0, step, 2*step, ... with the pixel rule of engine.mask (the
slide's saturation threshold, white, dark and the optical-density ink rule of engine.ink):
  tissue  fraction of sampled pixels that are tissue (not ink)
  ink     fraction of sampled pixels that are ink, after an opening then a closing of radius
          ink_radius on the sub-grid (drops the lone stain pixels the rule takes for ink first, so
          the closing cannot join them into false strokes; then joins a stroke across its tissue);
          before the closing, bluish pixels that fill a square of radius ink_region_radius are added
          (thinned blue ink, which pixel by pixel looks like haematoxylin; engine.ink)
  fold    fraction of the tissue whose OD sum oR+oG+oB exceeds fold_od: folded, doubled or
          over-stained tissue
  bubble  fraction of sampled pixels that are grey (saturation below the threshold, not white,
          max channel < grey_max): bubble rims, refraction lines, slide edges, dust
  clean   fraction of sampled pixels that are tissue and not fold
and at full resolution on every focus_step-th row:
  focus   sum of squared 4-neighbour Laplacians of the red-channel OD at distance 2 over the same at
          distance 4: free of intensity and stain strength; distance 1 is left out because JPEG and
          rounding noise dominate it. Sharp he/ crops give >= 0.15, Gaussian blur of sigma 2 px below.
          0 where fewer than 3 of those centres are an edge (a grey-level Laplacian at distance 2,
          R+G+B, of at least focus_detail): a heavily blurred patch is noise at every scale, which
          keeps the ratio up, and nothing in it is in focus.
Native kernel csrc/check.cpp (OpenMP over patches, GIL released), its columns laid out by setup.py from
SCORES; patch_qc_reference is the numpy copy and agrees exactly.
"""

from __future__ import annotations

import numpy as np

from engine import _native
from engine.ink import OD_LUT, optical_density
from engine.mask import (
    CANDIDATE,
    DARK,
    PEN,
    MaskParams,
    closing_reference,
    ink_regions_reference,
    opening_reference,
    pixel_classes_reference,
)
from engine.qc import SCORES, CheckParams, PatchQC, reasons_of


def check_native_layout(native_scores) -> None:
    """Refuse a native build whose score columns (setup.py generates them from SCORES) are not SCORES."""
    if tuple(native_scores) != SCORES:
        raise ImportError(f"engine._native was built for the scores {tuple(native_scores)}, engine.qc has {SCORES}: "
                          "rebuild it (make install)")


check_native_layout(_native.PATCH_SCORES)


def patch_qc(
    patches: np.ndarray, threshold: int, mask_params: MaskParams | None = None, check_params: CheckParams | None = None
) -> dict[str, np.ndarray]:
    """SCORES of each patch (N, P, P, 3) uint8 -> name -> float32 (N,) (native kernel)."""
    mp, cp = mask_params or MaskParams(), check_params or CheckParams()
    patches = _validate(patches)
    s = _native.patch_qc(patches, OD_LUT, int(threshold), mp.white, mp.dark, cp.step, cp.ink_radius,
                         mp.ink_region_radius_of(cp.ink_region_radius), cp.focus_step, cp.focus_detail, cp.fold_od,
                         cp.grey_max, mp.ink_bits)
    return {name: np.ascontiguousarray(s[:, k]) for k, name in enumerate(SCORES)}


def check_patches(
    patches: np.ndarray,
    threshold: int,
    mask_params: MaskParams | None = None,
    check_params: CheckParams | None = None,
) -> PatchQC:
    """Quality scores and rejection reasons of each patch, with the rule of the slide's mask
    (threshold is MaskResult.threshold of the slide; white/dark from its MaskParams)."""
    cp = check_params or CheckParams()
    scores = patch_qc(patches, threshold, mask_params, cp)
    return PatchQC(scores, reasons_of(scores, cp))


# ----------------------------------------------------------------------------
# Plain numpy reference of the same scores (tests compare against it).


def patch_qc_reference(
    patches: np.ndarray, threshold: int, mask_params: MaskParams | None = None, check_params: CheckParams | None = None
) -> dict[str, np.ndarray]:
    mp, cp = mask_params or MaskParams(), check_params or CheckParams()
    patches = _validate(patches)
    out = {name: np.zeros(len(patches), np.float32) for name in SCORES}
    for i, patch in enumerate(patches):
        m = patch_maps_reference(patch, threshold, mp, cp)
        n, nt, nf = m["ink"].size, int(m["tissue"].sum()), int(m["fold"].sum())
        if n:
            out["tissue"][i], out["ink"][i] = nt / n, int(m["ink"].sum()) / n
            out["bubble"][i], out["clean"][i] = int(m["bubble"].sum()) / n, (nt - nf) / n
        out["fold"][i] = nf / nt if nt else 0.0
        out["focus"][i] = focus_reference(patch, cp.focus_step, cp.focus_detail)
    return out


def patch_maps_reference(patch: np.ndarray, threshold: int, mp: MaskParams, cp: CheckParams) -> dict[str, np.ndarray]:
    """bool maps on the sub-grid of one patch (P, P, 3): tissue, ink, fold, bubble."""
    sampled = patch[:: cp.step, :: cp.step]
    cls, sat = pixel_classes_reference(sampled, mp.white, mp.dark, mp.inks)
    ink = (opening_reference((cls == PEN) | (cls == DARK), cp.ink_radius)
           | ink_regions_reference(sampled, mp.ink_region_radius_of(cp.ink_region_radius)))
    ink = closing_reference(ink, cp.ink_radius) == 1
    tissue = (cls == CANDIDATE) & (sat >= threshold) & ~ink
    fold = tissue & (optical_density(sampled).sum(-1) > cp.fold_od)
    bubble = (cls == CANDIDATE) & (sat < threshold) & (sampled.max(-1) < cp.grey_max)
    return {"tissue": tissue, "ink": ink, "fold": fold, "bubble": bubble}


def focus_reference(patch: np.ndarray, step: int, detail: int) -> float:
    """Laplacian energy of the red-channel OD at distance 2 over distance 4, rows 4, 4 + step, ...;
    0 with fewer than 3 edges (a grey-level Laplacian at distance 2 of at least `detail`)."""
    h, w = patch.shape[:2]
    if h < 9 or w < 9:
        return 1.0
    ys = np.arange(4, h - 4, step)

    def laplacians(v):
        c = v[ys, 4:-4]
        return (4 * c - v[ys, 2:-6] - v[ys, 6:-2] - v[ys - 2, 4:-4] - v[ys + 2, 4:-4],
                4 * c - v[ys, :-8] - v[ys, 8:] - v[ys - 4, 4:-4] - v[ys + 4, 4:-4])

    fine, coarse = laplacians(OD_LUT[patch[..., 0]].astype(np.int64))
    if np.count_nonzero(np.abs(laplacians(patch.astype(np.int64).sum(-1))[0]) >= detail) < 3:
        return 0.0
    e1, e2 = int((fine * fine).sum()), int((coarse * coarse).sum())
    return 1.0 if e2 == 0 else e1 / e2


def _validate(patches: np.ndarray) -> np.ndarray:
    patches = np.asarray(patches)
    if patches.dtype != np.uint8:
        raise ValueError(f"patches must be uint8, got dtype {patches.dtype}")
    if patches.ndim != 4 or patches.shape[3] != 3:
        raise ValueError(f"patches must have shape (N, P, P, 3), got {patches.shape}")
    return np.ascontiguousarray(patches)
