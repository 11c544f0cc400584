"""Which patches of a slide to read, how big, at which level, and which of them to keep.

Two plans share one interface (`geometry`, `coords`, `keep`), so that the tiler has one code path:

- `GridPlan`: a grid over the tissue mask at the target resolution; a patch is kept where the check
  at full resolution finds tissue (what `python -m engine.tile` does).
- `GivenPlan`: the patches a table lists (level-0 corners, a level and a read size); every patch
  that can be read is kept, so that the patches stay matched row for row to what the caller holds
  for them (the imported embeddings).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from engine.plan import PlanParams, plan_tiles
from engine.slide import Slide, SlideError


@dataclass(frozen=True)
class Geometry:
    """Where and how big to read, so that every patch covers the same physical area."""

    level: int
    read_size: int  # pixels read at `level` per patch (resized to patch_size if different)
    tile0: int  # patch side in level-0 pixels
    stride0: int
    downsample: float  # level-0 pixels per output pixel
    scale: int = 1  # the level is decoded at 1/scale (JPEG's DCT scaling), read_size counted there


def mpp_info(slide: Slide, assume_mpp: float | None) -> dict:
    """The slide's MPP and where it came from, recorded in the store; `assume_mpp` overrides it."""
    mpp = slide.mpp
    if assume_mpp is not None:
        mpp_x = mpp_y = assume_mpp
        source = "--assume-mpp"
    elif mpp is not None:
        mpp_x, mpp_y, source = mpp.x, mpp.y, mpp.source
    else:
        mpp_x = mpp_y = None
        source = "missing"
    return {"mpp_x": mpp_x, "mpp_y": mpp_y, "mpp_source": source}


@dataclass(frozen=True)
class GridPlan:
    """Patches on a grid over the slide's tissue mask, kept where they hold tissue."""

    params: PlanParams  # patch size and stride (output pixels), min tissue on the mask
    mpp: float | None = None  # target µm/px; None = level 0 as it is
    dct_scaling: bool = True  # decode JPEG levels at 1/2, 1/4 or 1/8 where the target allows it

    def geometry(self, slide: Slide, mpp: dict) -> Geometry:
        """`mpp`: `mpp_info` of the slide. Reads the most reduced level still as sharp as the target,
        decoded at the most reduced DCT scale that still is (never upsampling), then resizes."""
        size = self.params.patch_size
        stride = self.params.stride or size
        if self.mpp is None:
            return Geometry(0, size, size, stride, 1.0)
        if mpp["mpp_x"] is None:
            raise SlideError(f"{slide.path}: no usable MPP in its metadata, but --mpp {self.mpp} was asked",
                             "pass {assume_mpp} VALUE if you know the scan resolution")
        ds = self.mpp / ((mpp["mpp_x"] + mpp["mpp_y"]) / 2)
        level = slide.best_level_for_downsample(ds)
        lds = slide.level_downsamples[level]
        scales = slide.decode_scales(level) if self.dct_scaling else (1,)
        scale = max(s for s in scales if s == 1 or lds * s <= ds * 1.01)
        read = round(size * ds / (lds * scale))
        return Geometry(level, read, round(size * ds), round(stride * ds), ds, scale)

    def coords(self, slide: Slide, mask: np.ndarray, geom: Geometry) -> np.ndarray:
        """int64 (N, 2): level-0 top-left corners of the grid's patches with tissue on the mask."""
        coords, _ = plan_tiles(mask, slide.dimensions, geom.tile0, geom.stride0, self.params.min_tissue)
        return coords

    def keep(self, tissue: np.ndarray, readable: np.ndarray) -> np.ndarray:
        """Which patches of a batch are written: `tissue` says which passed the check."""
        return tissue & readable


@dataclass(frozen=True, eq=False)
class GivenPlan:
    """Exactly the patches given: `read_size` px at `level` from each level-0 corner in `xy` (N, 2),
    resized to `patch_size`; each kept if it can be read, whatever its tissue."""

    xy: np.ndarray
    level: int
    read_size: int
    patch_size: int

    def geometry(self, slide: Slide, mpp: dict) -> Geometry:
        if not 0 <= self.level < slide.level_count:
            raise SlideError(f"{slide.path}: has no pyramid level {self.level} (levels 0..{slide.level_count - 1})")
        tile0 = round(self.read_size * slide.level_downsamples[self.level])
        return Geometry(self.level, self.read_size, tile0, tile0, tile0 / self.patch_size)

    def coords(self, slide: Slide, mask: np.ndarray, geom: Geometry) -> np.ndarray:
        return np.asarray(self.xy, np.int64).reshape(-1, 2)

    def keep(self, tissue: np.ndarray, readable: np.ndarray) -> np.ndarray:
        return readable


PatchPlan = GridPlan | GivenPlan  # what engine.tile.tile_slide takes
