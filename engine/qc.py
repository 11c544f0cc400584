"""The patch check's contract: its thresholds (CheckParams), the scores it gives each patch, the
reasons it rejects one, and those reasons recomputed from stored scores. Small and free of the
kernels (engine.check), so that the store and training read it without loading them.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

SCORES = ("tissue", "ink", "focus", "fold", "bubble", "clean")  # float32 per patch, stored by name
REASONS = {"tissue": 1, "ink": 2, "blur": 4, "fold": 8, "bubble": 16}  # bits of PatchQC.reasons


@dataclass(frozen=True)
class CheckParams:
    min_tissue: float = 0.1  # reject below this sampled tissue fraction
    step: int = 4  # sample every step-th row and column
    max_ink: float = 0.05  # reject above this ink fraction
    min_focus: float = 0.15  # reject below this focus ratio (blur)
    max_fold: float = 0.5  # reject above this fold fraction of the tissue
    max_bubble: float = 0.2  # reject above this grey (bubble / edge) fraction
    ink_radius: int = 2  # opening/closing of ink on the sub-grid (2: pale-stain false ink goes, strokes stay)
    ink_region_radius: int = 3  # bluish regions filling a (2r+1) square of the sub-grid are ink; 0 = off
    focus_step: int = 8  # focus on every focus_step-th row (cost)
    focus_detail: int = 40  # an edge: a grey-level (R+G+B) Laplacian at distance 2 this strong; focus 0 without 3
    fold_od: int = 2700  # OD sum (1000 per decade) above which tissue is fold
    grey_max: int = 200  # grey pixels darker than this (max channel) are bubble rims

    def __post_init__(self) -> None:
        for name in ("min_tissue", "max_ink", "max_fold", "max_bubble"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0.0 <= v <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {v!r}")
        if isinstance(self.min_focus, bool) or not isinstance(self.min_focus, (int, float)) or self.min_focus < 0:
            raise ValueError(f"min_focus must be a number >= 0, got {self.min_focus!r}")
        for name, lo, hi in (("step", 1, None), ("focus_step", 1, None), ("ink_radius", 0, 64),
                             ("ink_region_radius", 0, 64), ("focus_detail", 0, None), ("fold_od", 0, None),
                             ("grey_max", 0, 256)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < lo or (hi is not None and v > hi):
                bound = f"[{lo}, {hi}]" if hi is not None else f">= {lo}"
                raise ValueError(f"{name} must be an int in {bound}, got {v!r}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass
class PatchQC:
    scores: dict[str, np.ndarray]  # name (SCORES) -> float32 (N,)
    reasons: np.ndarray  # uint8 (N,): OR of the REASONS bits a patch fails; 0 = passes

    @property
    def passed(self) -> np.ndarray:
        return self.reasons == 0

    def take(self, rows) -> "PatchQC":
        """The scores and reasons of `rows` (indices or a boolean mask) only."""
        return PatchQC({name: s[rows] for name, s in self.scores.items()}, self.reasons[rows])


def reasons_of(scores: dict[str, np.ndarray], params: CheckParams) -> np.ndarray:
    """The REASONS bitmask of stored scores under `params` (training may tighten the thresholds)."""
    r = np.zeros(len(scores["tissue"]), np.uint8)
    r[scores["tissue"] < params.min_tissue] |= REASONS["tissue"]
    r[scores["ink"] > params.max_ink] |= REASONS["ink"]
    r[scores["focus"] < params.min_focus] |= REASONS["blur"]
    r[scores["fold"] > params.max_fold] |= REASONS["fold"]
    r[scores["bubble"] > params.max_bubble] |= REASONS["bubble"]
    return r
