"""Regions read at 1/scale against the whole level read at 1/scale in one piece: the readers' assembly."""
from __future__ import annotations

import numpy as np

PAD = 64  # white margin around the whole level, so that regions off its edges have something to match


def scaled_whole(slide, size: tuple[int, int], scale: int) -> np.ndarray:
    """Level 0 of `slide` (`size` its level-0 width and height) read at 1/scale in one region,
    inside a white margin of PAD px."""
    w, h = -(-size[0] // scale), -(-size[1] // scale)
    whole = np.full((h + 2 * PAD, w + 2 * PAD, 3), 255, np.uint8)
    whole[PAD : PAD + h, PAD : PAD + w] = slide.read_regions([(0, 0)], 0, (w, h), scale=scale)[0]
    return whole


def assert_regions_are_crops(slide, whole: np.ndarray, size: tuple[int, int], scale: int, n: int) -> None:
    """`n` random 57 x 40 regions of `slide` at 1/scale, off the edges too, equal their crops of
    `whole` (scaled_whole), white outside."""
    rng = np.random.default_rng(scale)
    xs, ys = rng.integers(-PAD * scale, size[0], n), rng.integers(-PAD * scale, size[1], n)
    got = slide.read_regions(list(zip(xs.tolist(), ys.tolist())), 0, (57, 40), scale=scale)
    for k, (x, y) in enumerate(zip(xs, ys)):
        cx, cy = int(x // scale) + PAD, int(y // scale) + PAD
        want = np.full((40, 57, 3), 255, np.uint8)
        crop = whole[cy : cy + 40, cx : cx + 57]
        want[: crop.shape[0], : crop.shape[1]] = crop
        np.testing.assert_array_equal(got[k], want)
