"""Synthetic thumbnails and colours for the mask, plan and check tests."""
from __future__ import annotations

import numpy as np

from tests.support.data import SHARED

SLIDE = SHARED / "slides" / "CMU-1-Small-Region.svs"

GLASS = (240, 238, 242)
PINK = (230, 150, 200)  # eosin
PURPLE = (110, 60, 160)  # haematoxylin
GREEN_INK = (70, 150, 90)
BLUE_INK = (50, 70, 180)
BLACK_INK = (20, 20, 30)


def synthetic_thumbnail(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Glass with noise, pink/purple blobs (some with holes), specks and ink strokes."""
    img = np.empty((h, w, 3), np.int32)
    img[:] = GLASS
    img += rng.integers(-15, 16, (h, w, 3))
    yy, xx = np.mgrid[:h, :w]

    def ellipse(cy, cx, ry, rx):
        return ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1

    for _ in range(rng.integers(1, 6)):
        cy, cx = rng.uniform(0, h), rng.uniform(0, w)
        ry, rx = rng.uniform(2, h / 3 + 2), rng.uniform(2, w / 3 + 2)
        blob = ellipse(cy, cx, ry, rx)
        colour = np.array(PINK if rng.random() < 0.5 else PURPLE)
        img[blob] = colour + rng.integers(-30, 31, (int(blob.sum()), 3))
        if rng.random() < 0.6:  # a hole of glass inside the blob
            hole = ellipse(cy, cx, ry * rng.uniform(0.1, 0.5), rx * rng.uniform(0.1, 0.5))
            img[hole] = GLASS
    for _ in range(rng.integers(0, 8)):  # specks of tissue and dust
        y, x, s = rng.integers(0, h), rng.integers(0, w), rng.integers(1, 5)
        img[y : y + s, x : x + s] = PURPLE if rng.random() < 0.5 else BLACK_INK
    for _ in range(rng.integers(0, 3)):  # thick ink strokes along random segments
        p0, p1 = rng.uniform(0, 1, 2) * (h, w), rng.uniform(0, 1, 2) * (h, w)
        d = p1 - p0
        t = np.clip(((yy - p0[0]) * d[0] + (xx - p0[1]) * d[1]) / max(d @ d, 1e-9), 0, 1)
        dist = np.hypot(yy - p0[0] - t * d[0], xx - p0[1] - t * d[1])
        ink = (GREEN_INK, BLUE_INK, BLACK_INK)[rng.integers(0, 3)]
        img[dist <= rng.uniform(0.5, 4)] = ink
    noise = rng.random((h, w)) < 0.01  # salt and pepper
    img[noise] = rng.integers(0, 256, (int(noise.sum()), 3))
    return np.clip(img, 0, 255).astype(np.uint8)
