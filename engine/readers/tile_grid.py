"""A level cut into a grid of tiles (or frames): which tiles a region covers, and the region put
together from them. The Python reference of the native `jpeg_decode_assemble`, shared by the readers."""
from __future__ import annotations

import numpy as np


def tiles_covering(x: int, y: int, w: int, h: int, tw: int, th: int, across: int, lw: int, lh: int) -> list:
    """(index, left, top) of each tile of a tw x th grid, `across` per row, over a lw x lh level, that
    the region (x, y, w, h) overlaps, in level pixels."""
    c0, c1 = max(0, x // tw), min(-(-lw // tw), -(-(x + w) // tw))
    r0, r1 = max(0, y // th), min(-(-lh // th), -(-(y + h) // th))
    return [(r * across + c, c * tw, r * th) for r in range(r0, r1) for c in range(c0, c1)]


def tiles_needed(regions, w: int, h: int, tw: int, th: int, across: int, lw: int, lh: int) -> list[int]:
    """The index of every tile that some w x h region (top-left (x, y) in `regions`) overlaps, ascending,
    each once: a batch of regions decodes each tile it shares once."""
    return sorted({i for x, y in regions for i, _, _ in tiles_covering(x, y, w, h, tw, th, across, lw, lh)})


def assemble(tiles: dict, regions, out: np.ndarray, tw: int, th: int, across: int, lw: int, lh: int) -> None:
    """Copy each region (top-left (x, y) in `regions`) into out[k] (n, h, w, 3) from the decoded `tiles`
    (index -> array); white outside the level (and over a tile's padding beyond it)."""
    h, w = out.shape[1:3]
    for patch, (x, y) in zip(out, regions):
        if x < 0 or y < 0 or x + w > lw or y + h > lh:
            patch[:] = 255
        for index, tx, ty in tiles_covering(x, y, w, h, tw, th, across, lw, lh):
            tile = tiles[index]
            ax0, ay0 = max(x, tx), max(y, ty)
            ax1, ay1 = min(x + w, tx + tile.shape[1], lw), min(y + h, ty + tile.shape[0], lh)
            if ax1 > ax0 and ay1 > ay0:
                patch[ay0 - y : ay1 - y, ax0 - x : ax1 - x] = tile[ay0 - ty : ay1 - ty, ax0 - tx : ax1 - tx]
