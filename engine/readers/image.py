"""The ``pil`` reader: a plain PNG/JPEG image as a single-level slide."""
from __future__ import annotations

import numpy as np

from engine.slide import Slide, SlideError, to_rgb


class ImageSlide(Slide):
    """A plain PNG/JPEG as a one-level slide (held in memory: such images are small)."""

    backend = "pil"
    suffixes = frozenset({".png", ".jpg", ".jpeg"})

    def __init__(self, path):
        from PIL import Image

        try:
            with Image.open(path) as img:
                self._rgb = to_rgb(np.asarray(img.convert("RGBA" if "A" in img.mode else "RGB")))
        except Exception as e:
            raise SlideError(f"{path}: not an image PIL reads ({e})") from e
        h, w = self._rgb.shape[:2]
        super().__init__(path, [(w, h)], None)

    def _read(self, x, y, level, w, h):
        out = np.full((h, w, 3), 255, np.uint8)
        H, W = self._rgb.shape[:2]
        x0, y0, x1, y1 = max(x, 0), max(y, 0), min(x + w, W), min(y + h, H)
        if x1 > x0 and y1 > y0:
            out[y0 - y : y1 - y, x0 - x : x1 - x] = self._rgb[y0:y1, x0:x1]
        return out
