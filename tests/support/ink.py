"""Marker ink painted on real tissue: strokes alpha-blended in optical density, and the real images."""
from __future__ import annotations

from functools import lru_cache

import numpy as np

from tests.support.data import SHARED

# Full-density transmitted colour of common slide markers, a family of shades per colour (the first is the
# classic shade; then lighter, darker and hue-shifted ones). Each painted stroke draws one shade of its family.
# Blue markers pass more green than red (histolab's blue-pen boxes, e.g. r < 60, g < 120, b > 190), so the
# hue-shifted blue leans to cyan; a violet (60, 40, 140) would be haematoxylin's own colour, not a blue marker.
INKS = {
    "red": ((170, 10, 30), (200, 40, 60), (120, 5, 15), (190, 40, 20)),
    "green": ((20, 100, 40), (50, 140, 70), (10, 70, 25), (20, 110, 90)),
    "blue": ((20, 30, 130), (50, 80, 170), (10, 15, 90), (30, 60, 150)),
    "black": ((15, 15, 20), (45, 45, 50), (5, 5, 8), (35, 25, 40)),
}
HE = SHARED / "he"


def he_files() -> list:
    return sorted(p for p in HE.glob("*/*") if p.suffix.lower() in (".jpg", ".jpeg", ".tif", ".tiff", ".png"))


@lru_cache(maxsize=None)
def load_he(path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def _od(rgb):
    return -np.log10((rgb.astype(np.float64) + 1) / 256)


def stroke(shape, rng: np.random.Generator, width: float) -> np.ndarray:
    """bool (H, W): a thick straight stroke across the image."""
    h, w = shape
    yy, xx = np.mgrid[:h, :w]
    p0 = np.array([rng.uniform(0, h), 0.0]) if rng.random() < 0.5 else np.array([0.0, rng.uniform(0, w)])
    p1 = np.array([h - p0[0], w - p0[1]]) + rng.uniform(-0.2, 0.2, 2) * (h, w)
    d = p1 - p0
    t = np.clip(((yy - p0[0]) * d[0] + (xx - p0[1]) * d[1]) / (d @ d), 0, 1)
    return np.hypot(yy - p0[0] - t * d[0], xx - p0[1] - t * d[1]) <= width / 2


def paint(rgb: np.ndarray, where: np.ndarray, ink, alpha: float) -> np.ndarray:
    """`rgb` with `ink` (an RGB shade) blended in optical density at `alpha` (0 none, 1 full ink) where `where`."""
    od = _od(rgb)
    od[where] = (1 - alpha) * od[where] + alpha * _od(np.array(ink))
    return np.clip(np.round(256 * 10 ** (-od) - 1), 0, 255).astype(np.uint8)
