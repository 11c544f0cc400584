"""The QA picture of a tiled slide: thumbnail, tissue-mask outline and the patches drawn on it."""
from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

KEPT, REJECTED, FAILED, OUTLINE = (0, 90, 255), (255, 160, 0), (255, 0, 0), (0, 200, 0)


def mask_outline(mask: np.ndarray) -> np.ndarray:
    """Mask pixels with a background 4-neighbour (the border of each tissue region)."""
    m = np.pad(mask.astype(bool), 1)
    inner = m[1:-1, 1:-1]
    interior = m[:-2, 1:-1] & m[2:, 1:-1] & m[1:-1, :-2] & m[1:-1, 2:]
    return inner & ~interior


def qa_picture(thumb: np.ndarray, mask: np.ndarray, downsample: float, tile0: int,
               kept, rejected=(), failed=(), max_side: int = 1024) -> Image.Image:
    """`downsample`: level-0 pixels per thumbnail pixel; coords are level-0 top-left corners."""
    img = thumb.copy()
    img[mask_outline(mask)] = OUTLINE
    side = max(img.shape[:2])
    scale = max_side / side if side > max_side else max(1.0, 600 / side)  # small thumbnails enlarged
    pic = Image.fromarray(img).resize((round(img.shape[1] * scale), round(img.shape[0] * scale)), Image.Resampling.NEAREST)
    draw = ImageDraw.Draw(pic)
    k = scale / downsample
    for coords, colour in ((kept, KEPT), (rejected, REJECTED), (failed, FAILED)):
        for x, y in np.asarray(coords).reshape(-1, 2):
            draw.rectangle([x * k, y * k, (x + tile0) * k - 1, (y + tile0) * k - 1], outline=colour)
    return pic
