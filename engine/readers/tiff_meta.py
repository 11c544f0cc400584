"""What the TIFF-family readers (tifffile, cuCIM) both read from a TIFF's tags: its pyramid levels
and its MPP."""
from __future__ import annotations

import re

from engine.slide import Mpp, plausible_mpp

TIFF_SUFFIXES = frozenset({".svs", ".tif", ".tiff"})


def tiff_levels(tif) -> list:
    """The pages that form the pyramid: level 0 plus tiled pages of the same aspect ratio and
    smaller size (Aperio's stripped thumbnail, the label and the macro image are not levels)."""
    base = tif.series[0].levels[0].keyframe
    h0, w0 = base.imagelength, base.imagewidth
    candidates = [p.keyframe for p in tif.series[0].levels[1:]]
    candidates += [p for p in tif.pages[1:] if getattr(p, "is_tiled", False)]
    levels, seen = [base], {(w0, h0)}
    for page in sorted(candidates, key=lambda p: -p.imagewidth):
        w, h = page.imagewidth, page.imagelength
        if (w, h) in seen or w >= w0 or page.samplesperpixel < 3 or not page.is_tiled:
            continue
        if abs(w / h - w0 / h0) > 0.02 * (w0 / h0) + 2 / h:
            continue
        levels.append(page)
        seen.add((w, h))
    return levels


def tiff_mpp(tif) -> Mpp | None:
    """MPP from an Aperio description, else from the resolution tags and their unit."""
    page = tif.pages[0]
    desc = page.description or ""
    m = re.search(r"\|\s*MPP\s*=\s*([0-9.eE+-]+)", desc)
    if m:
        v = float(m.group(1))
        return plausible_mpp(v, v, "aperio.MPP")
    tags = page.tags
    unit = tags.get("ResolutionUnit")
    unit = int(unit.value) if unit is not None else 2  # TIFF's default unit is the inch
    per_unit = {2: 25400.0, 3: 10000.0}.get(unit)  # µm per inch / per cm
    xr, yr = tags.get("XResolution"), tags.get("YResolution")
    if per_unit is None or xr is None or yr is None:
        return None
    (xn, xd), (yn, yd) = xr.value, yr.value
    if not (xn and xd and yn and yd):
        return None
    # A resolution of 1 or 72 per inch is a writer's placeholder, not a scan.
    if unit == 2 and xn / xd in (1.0, 72.0, 96.0, 300.0):
        return None
    return plausible_mpp(per_unit * xd / xn, per_unit * yd / yn, f"tiff.XResolution ({'inch' if unit == 2 else 'cm'})")
