"""Fast tissue check of decoded patches at full resolution.

Applies the per-pixel tissue rule of engine.mask (same threshold, white, dark
and pen margin) on the sub-grid of rows/cols 0, step, 2*step, ... of each patch,
so blank, white, black and ink patches are caught after decoding.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from engine import _native
from engine.mask import CANDIDATE, MaskParams, pixel_classes_reference


@dataclass(frozen=True)
class CheckParams:
    min_tissue: float = 0.1  # keep patches whose sampled tissue fraction >= this
    step: int = 4  # sample every step-th row and column

    def __post_init__(self) -> None:
        if not 0.0 <= self.min_tissue <= 1.0:
            raise ValueError(f"min_tissue must be in [0, 1], got {self.min_tissue!r}")
        if isinstance(self.step, bool) or not isinstance(self.step, int) or self.step < 1:
            raise ValueError(f"step must be a positive int, got {self.step!r}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def patch_tissue(
    patches: np.ndarray,
    threshold: int,
    white: int = 220,
    dark: int = 50,
    pen_margin: int = 30,
    step: int = 4,
) -> np.ndarray:
    """Sampled tissue fraction of each patch (N, P, P, 3) uint8 -> float32 (N,)."""
    patches = _validate(patches, step)
    return _native.patch_tissue(patches, int(threshold), int(white), int(dark), int(pen_margin), int(step))


# INTERFACE FOR ISSUE 14 (temporary body: only `tissue` is computed; the QC helper replaces it).
SCORES = ("tissue", "ink", "focus", "fold", "bubble", "clean")  # float32 per patch, stored by name
REASONS = {"tissue": 1, "ink": 2, "blur": 4, "fold": 8, "bubble": 16}  # bits of PatchQC.reasons


@dataclass
class PatchQC:
    scores: dict[str, np.ndarray]  # name (SCORES) -> float32 (N,)
    reasons: np.ndarray  # uint8 (N,): OR of the REASONS bits a patch fails; 0 = passes

    @property
    def passed(self) -> np.ndarray:
        return self.reasons == 0


def reasons_of(scores: dict[str, np.ndarray], params: "CheckParams") -> np.ndarray:
    """The REASONS bitmask of stored scores under `params` (training may tighten the thresholds)."""
    r = np.zeros(len(scores["tissue"]), np.uint8)
    r[scores["tissue"] < params.min_tissue] |= REASONS["tissue"]
    return r


def check_patches(
    patches: np.ndarray,
    threshold: int,
    mask_params: MaskParams | None = None,
    check_params: CheckParams | None = None,
) -> PatchQC:
    """Quality scores and rejection reasons of each patch, with the rule of the slide's mask
    (threshold is MaskResult.threshold of the slide; white/dark/pen_margin from its MaskParams)."""
    mp = mask_params or MaskParams()
    cp = check_params or CheckParams()
    tissue = patch_tissue(patches, threshold, mp.white, mp.dark, mp.pen_margin, cp.step)
    zeros = np.zeros(len(tissue), np.float32)
    scores = {"tissue": tissue, "ink": zeros, "focus": np.full(len(tissue), np.inf, np.float32), "fold": zeros,
              "bubble": zeros, "clean": tissue}
    return PatchQC(scores, reasons_of(scores, cp))


def patch_tissue_reference(
    patches: np.ndarray,
    threshold: int,
    white: int = 220,
    dark: int = 50,
    pen_margin: int = 30,
    step: int = 4,
) -> np.ndarray:
    """Plain numpy reference of patch_tissue; results are identical."""
    patches = _validate(patches, step)
    sampled = patches[:, ::step, ::step]
    cls, sat = pixel_classes_reference(sampled, white, dark, pen_margin)
    tissue = (cls == CANDIDATE) & (sat >= threshold)
    count = tissue.sum(axis=(1, 2))
    size = sampled.shape[1] * sampled.shape[2]
    fractions = count / size if size else np.zeros(len(patches))
    return fractions.astype(np.float32)


def _validate(patches: np.ndarray, step: int) -> np.ndarray:
    patches = np.asarray(patches)
    if patches.dtype != np.uint8:
        raise ValueError(f"patches must be uint8, got dtype {patches.dtype}")
    if patches.ndim != 4 or patches.shape[3] != 3:
        raise ValueError(f"patches must have shape (N, P, P, 3), got {patches.shape}")
    if isinstance(step, bool) or not isinstance(step, (int, np.integer)) or step < 1:
        raise ValueError(f"step must be a positive int, got {step!r}")
    return np.ascontiguousarray(patches)
