"""Tile planning: which level-0 patch positions hold enough tissue.

Tiles lie on a level-0 grid (top-left x in range(0, W0 - tile0 + 1, stride0),
y likewise, row-major) and only tiles fully inside the slide are considered:
edge tiles are excluded, never padded. A tile's tissue fraction is measured on
the thumbnail mask (mh, mw) through a summed-area table, mapping each level-0
coordinate v to the mask with exact integer rounding (only mask value 1 is
tissue: 2 is ink, engine.mask)
m = (2*v*mw + W0) // (2*W0), clamped to [0, mw] (mh, H0 for y).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from engine import _native


@dataclass(frozen=True)
class PlanParams:
    patch_size: int = 512  # patch side at the read level, pixels
    stride: int | None = None  # None = patch_size (no overlap)
    min_tissue: float = 0.5  # keep tiles whose mask fraction >= this

    def __post_init__(self) -> None:
        if not _positive_int(self.patch_size):
            raise ValueError(f"patch_size must be a positive int, got {self.patch_size!r}")
        if self.stride is not None and not _positive_int(self.stride):
            raise ValueError(f"stride must be None or a positive int, got {self.stride!r}")
        if not 0.0 <= self.min_tissue <= 1.0:
            raise ValueError(f"min_tissue must be in [0, 1], got {self.min_tissue!r}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def tile_fractions(
    mask: np.ndarray, level0_size: tuple[int, int], boxes: np.ndarray
) -> np.ndarray:
    """Tissue (mask == 1) fraction inside each level-0 box (N, 4) as x, y, w, h -> float32 (N,)."""
    mask, (width0, height0), boxes = _validate(mask, level0_size, boxes)
    return _native.tile_fractions(mask, width0, height0, boxes)


def plan_tiles(
    mask: np.ndarray,
    level0_size: tuple[int, int],
    tile0: int,
    stride0: int | None = None,
    min_tissue: float = 0.5,
) -> tuple[np.ndarray, np.ndarray]:
    """Level-0 tiles with tissue -> (coords int64 (N, 2) as x, y; fractions float32 (N,))."""
    return _select(tile_fractions, mask, level0_size, tile0, stride0, min_tissue)


def _select(fractions_of, mask, level0_size, tile0, stride0, min_tissue):
    """The grid's tiles whose tissue fraction (by `fractions_of`) reaches `min_tissue`."""
    boxes = _grid(level0_size, tile0, stride0)
    fractions = fractions_of(mask, level0_size, boxes)
    keep = fractions >= min_tissue
    return boxes[keep, :2].copy(), fractions[keep]


# ----------------------------------------------------------------------------
# Plain numpy reference of the same algorithm (tests compare against it).


def tile_fractions_reference(
    mask: np.ndarray, level0_size: tuple[int, int], boxes: np.ndarray
) -> np.ndarray:
    mask, (width0, height0), boxes = _validate(mask, level0_size, boxes)
    mh, mw = mask.shape
    sat = np.zeros((mh + 1, mw + 1), np.int64)
    sat[1:, 1:] = (mask == 1).cumsum(0).cumsum(1)
    x, y, w, h = boxes.T

    def to_mask(v, m, level0):
        return np.clip((2 * v * m + level0) // (2 * level0), 0, m)

    x0, x1 = to_mask(x, mw, width0), to_mask(x + w, mw, width0)
    y0, y1 = to_mask(y, mh, height0), to_mask(y + h, mh, height0)
    total = sat[y1, x1] - sat[y0, x1] - sat[y1, x0] + sat[y0, x0]
    area = (x1 - x0) * (y1 - y0)
    fractions = np.zeros(len(boxes), np.float64)
    np.divide(total, area, out=fractions, where=area > 0)
    return fractions.astype(np.float32)


def plan_tiles_reference(
    mask: np.ndarray,
    level0_size: tuple[int, int],
    tile0: int,
    stride0: int | None = None,
    min_tissue: float = 0.5,
) -> tuple[np.ndarray, np.ndarray]:
    return _select(tile_fractions_reference, mask, level0_size, tile0, stride0, min_tissue)


# ----------------------------------------------------------------------------


def _grid(level0_size: tuple[int, int], tile0: int, stride0: int | None) -> np.ndarray:
    """All fully-inside tiles as boxes (N, 4) int64, row-major (y outer, x inner)."""
    width0, height0 = _size(level0_size)
    stride0 = tile0 if stride0 is None else stride0
    for name, v in (("tile0", tile0), ("stride0", stride0)):
        if not _positive_int(v):
            raise ValueError(f"{name} must be a positive int, got {v!r}")
    xs = np.arange(0, width0 - tile0 + 1, stride0, dtype=np.int64)
    ys = np.arange(0, height0 - tile0 + 1, stride0, dtype=np.int64)
    yy, xx = np.meshgrid(ys, xs, indexing="ij")
    boxes = np.empty((xx.size, 4), np.int64)
    boxes[:, 0], boxes[:, 1] = xx.ravel(), yy.ravel()
    boxes[:, 2:] = tile0
    return boxes


def _positive_int(v) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v >= 1


def _size(level0_size) -> tuple[int, int]:
    try:
        width0, height0 = (int(v) for v in level0_size)
    except (TypeError, ValueError):
        raise ValueError(f"level0_size must be (W0, H0), got {level0_size!r}") from None
    if width0 < 1 or height0 < 1:
        raise ValueError(f"level0_size must be positive, got {level0_size!r}")
    return width0, height0


def _validate(mask, level0_size, boxes):
    mask = np.asarray(mask)
    if mask.dtype == np.bool_:
        mask = mask.view(np.uint8)
    if mask.dtype != np.uint8:
        raise ValueError(f"mask must be uint8 or bool, got dtype {mask.dtype}")
    if mask.ndim != 2:
        raise ValueError(f"mask must have shape (H, W), got {mask.shape}")
    boxes = np.asarray(boxes)
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise ValueError(f"boxes must have shape (N, 4) as x, y, w, h, got {boxes.shape}")
    if not np.issubdtype(boxes.dtype, np.integer):
        raise ValueError(f"boxes must be integers, got dtype {boxes.dtype}")
    boxes = np.ascontiguousarray(boxes, dtype=np.int64)
    if (boxes < 0).any():
        raise ValueError("boxes must be non-negative (x, y, w, h >= 0)")
    return np.ascontiguousarray(mask), _size(level0_size), boxes
