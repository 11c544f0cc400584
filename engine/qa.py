"""The QA picture of a tiled slide: thumbnail, the mask's outlines (tissue, and apart from it what the
mask took for ink), the patches drawn on it in the colour of what became of them (kept, rejected by
the check for its first reason, unreadable), and a legend of the colours it uses."""
from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from engine.mask import INK, TISSUE
from engine.qc import REASONS

KEPT, FAILED, OUTLINE = (0, 90, 255), (255, 0, 0), (0, 200, 0)
INK_OUTLINE = (110, 0, 110)  # the mask's ink regions: tissue taken for ink shows as such, not as tissue
# Rejection colours in REASONS order (tissue: orange, as before reasons existed); cycled if more.
REJECTED = ((255, 160, 0), (255, 0, 255), (0, 230, 230), (255, 255, 0), (150, 60, 220), (140, 90, 40), (255, 150, 200))


def reason_colours() -> dict[str, tuple]:
    return {name: REJECTED[i % len(REJECTED)] for i, name in enumerate(REASONS)}


def first_reason(reasons: np.ndarray) -> np.ndarray:
    """Index in REASONS of the first reason set in each bitmask (-1 where none)."""
    reasons = np.asarray(reasons, np.uint8)
    first = np.full(len(reasons), -1)
    for i, bit in reversed(list(enumerate(REASONS.values()))):
        first[(reasons & bit) != 0] = i
    return first


def mask_outline(mask: np.ndarray) -> np.ndarray:
    """Mask pixels with a background 4-neighbour (the border of each tissue region)."""
    m = np.pad(mask.astype(bool), 1)
    inner = m[1:-1, 1:-1]
    interior = m[:-2, 1:-1] & m[2:, 1:-1] & m[1:-1, :-2] & m[1:-1, 2:]
    return inner & ~interior


def qa_picture(thumb: np.ndarray, mask: np.ndarray, downsample: float, tile0: int,
               kept, rejected=(), reasons=(), failed=(), max_side: int = 1024) -> Image.Image:
    """`downsample`: level-0 pixels per thumbnail pixel; coords are level-0 top-left corners;
    `reasons`: the REASONS bitmask of each rejected patch (its first reason gives its colour);
    `mask`: the tissue mask's labels (engine.mask: BACKGROUND, TISSUE, INK)."""
    img = thumb.copy()
    edges = [("tissue edge", mask_outline(mask == TISSUE), OUTLINE),
             ("ink edge", mask_outline(mask == INK), INK_OUTLINE)]
    for _, where, colour in edges:
        img[where] = colour
    side = max(img.shape[:2])
    scale = max_side / side if side > max_side else max(1.0, 600 / side)  # small thumbnails enlarged
    pic = Image.fromarray(img).resize((round(img.shape[1] * scale), round(img.shape[0] * scale)),
                                      Image.Resampling.NEAREST)
    rejected = np.asarray(rejected).reshape(-1, 2)
    first = first_reason(reasons) if len(rejected) else np.zeros(0, int)
    colours = reason_colours()
    groups = [("kept", np.asarray(kept).reshape(-1, 2), KEPT)]
    groups += [(name, rejected[first == i], colours[name]) for i, name in enumerate(REASONS)]
    groups += [("unreadable", np.asarray(failed).reshape(-1, 2), FAILED)]
    draw = ImageDraw.Draw(pic)
    k = scale / downsample
    for _, coords, colour in groups:
        for x, y in coords:
            draw.rectangle([x * k, y * k, (x + tile0) * k - 1, (y + tile0) * k - 1], outline=colour)
    return with_legend(pic, [(name, colour) for name, coords, colour in groups if len(coords)]
                       + [(name, colour) for name, where, colour in edges if where.any()])


def with_legend(pic: Image.Image, entries: list[tuple[str, tuple]]) -> Image.Image:
    """`pic` above a band naming each colour (a swatch and its name), wrapped to the picture's width."""
    if not entries:
        return pic
    font, row = ImageFont.load_default(), 20
    measure = ImageDraw.Draw(pic)
    places, x, y = [], 6, 6
    for name, colour in entries:
        width = 16 + round(measure.textlength(name, font=font)) + 14
        if x > 6 and x + width > pic.width:
            x, y = 6, y + row
        places.append((x, y, name, colour))
        x += width
    out = Image.new("RGB", (pic.width, pic.height + y + row), (255, 255, 255))
    out.paste(pic, (0, 0))
    draw = ImageDraw.Draw(out)
    for x, y, name, colour in places:
        y += pic.height
        draw.rectangle([x, y, x + 11, y + 11], outline=colour, width=3)
        draw.text((x + 16, y), name, fill=(0, 0, 0), font=font)
    return out
