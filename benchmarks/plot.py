"""Line plots as PNG with Pillow alone (the project has no plotting dependency): panels side by side,
each with log or linear axes, a legend and an optional dashed reference line."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image, ImageDraw

COLOURS = [(31, 119, 180), (214, 39, 40), (44, 160, 44), (148, 103, 189), (255, 127, 14), (23, 190, 207),
           (127, 127, 127)]
W, H, M = 520, 380, 60  # panel size and margin, pixels


@dataclass
class Panel:
    title: str
    x: list[float]
    series: dict[str, list[float]]  # name -> y per x (None: no point)
    xlabel: str = ""
    logx: bool = True
    logy: bool = False
    reference: float | None = None  # a dashed horizontal line (a floor)
    ticks: list[float] = field(default_factory=list)  # y ticks; empty: five even ones


def _scale(v: float, lo: float, hi: float, log: bool) -> float:
    f = (lambda u: math.log10(u)) if log else (lambda u: u)
    return (f(v) - f(lo)) / ((f(hi) - f(lo)) or 1)


def _draw(d: ImageDraw.ImageDraw, p: Panel, ox: int) -> None:
    ys = [y for s in p.series.values() for y in s if y is not None] + ([p.reference] if p.reference is not None else [])
    lo, hi = min(ys), max(ys)
    if p.logy:
        lo, hi = lo / 1.2, hi * 1.2
    else:
        pad = 0.05 * ((hi - lo) or 1)
        lo, hi = lo - pad, hi + pad
    x0, x1 = min(p.x), max(p.x)
    px = lambda x: ox + M + _scale(x, x0, x1, p.logx) * (W - 2 * M)  # noqa: E731
    py = lambda y: H - M - _scale(y, lo, hi, p.logy) * (H - 2 * M)  # noqa: E731
    d.rectangle([ox + M, M, ox + W - M, H - M], outline=(0, 0, 0))
    d.text((ox + M, M - 20), p.title, fill=(0, 0, 0))
    d.text((ox + W // 2 - 40, H - 22), p.xlabel, fill=(0, 0, 0))
    for x in p.x:
        d.line([px(x), H - M, px(x), H - M + 4], fill=(0, 0, 0))
        d.text((px(x) - 14, H - M + 6), f"{x / 1000:.0f}k" if x >= 1000 else f"{x:g}", fill=(0, 0, 0))
    even = [lo * (hi / lo) ** (i / 4) for i in range(5)] if p.logy else [lo + (hi - lo) * i / 4 for i in range(5)]
    ticks = p.ticks or even
    for t in ticks:
        if lo <= t <= hi:
            d.line([ox + M - 4, py(t), ox + M, py(t)], fill=(0, 0, 0))
            d.text((ox + 4, py(t) - 6), f"{t:.3g}", fill=(0, 0, 0))
    if p.reference is not None:
        y = py(p.reference)
        for x in range(ox + M, ox + W - M, 8):
            d.line([x, y, x + 4, y], fill=(90, 90, 90))
    for i, (name, s) in enumerate(p.series.items()):
        c = COLOURS[i % len(COLOURS)]
        pts = [(px(x), py(y)) for x, y in zip(p.x, s) if y is not None]
        if len(pts) > 1:
            d.line(pts, fill=c, width=2)
        for x, y in pts:
            d.ellipse([x - 3, y - 3, x + 3, y + 3], fill=c)
        d.text((ox + W - M - 150, M + 6 + 14 * i), name, fill=c)


def panels(items: list[Panel], path: Path) -> None:
    img = Image.new("RGB", (W * len(items), H), (255, 255, 255))
    d = ImageDraw.Draw(img)
    for i, p in enumerate(items):
        _draw(d, p, i * W)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)
