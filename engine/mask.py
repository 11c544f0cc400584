"""Mask of a low-resolution slide thumbnail: 0 background, 1 tissue, 2 ink.

Per-pixel rule (shared with engine.check, native copy in csrc/pixel.hpp), for
RGB uint8 with mx/mn the max/min channel and
sat = 0 if mx == 0 else 255 * (mx - mn) // mx:
  white  mn >= white                                  -> background
  dark   mx < dark                                    -> ink (black)
  pen    the optical-density ink rule of engine.ink   -> ink
  else   tissue iff sat >= threshold.

Pipeline: Otsu threshold on the saturation of non-white/dark/pen pixels
(clamped), raw tissue and raw ink, each closed then opened with a square
element (dilation pads with 0, erosion with 1 so the border does not eat
tissue); ink is opened with ink_speck_radius first, so that the closing cannot
join scattered stain pixels the rule takes for ink into blobs, and bluish pixels
(engine.ink.is_bluish_reference) are added where an opening of radius
ink_region_radius keeps them, its window wholly inside the image (wide uniform
blue: thinned blue ink); ink overrides tissue, fill 4-connected background holes
enclosed by tissue alone (a region touching the border or ink is not a hole),
drop 8-connected tissue specks. Everything is integer so the native kernel and
the numpy reference agree exactly. Only 1 is tissue (engine.plan counts mask == 1).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from engine import _native
from engine.ink import INK_FAMILIES, OD_LUT, ink_bits, is_bluish_reference, is_ink_reference

# Pixel classes, in the order the rule tests them (csrc/pixel.hpp).
WHITE, DARK, PEN, CANDIDATE = 0, 1, 2, 3
# Mask values.
BACKGROUND, TISSUE, INK = 0, 1, 2


@dataclass(frozen=True)
class MaskParams:
    white: int = 220  # min channel >= white: background glass
    dark: int = 50  # max channel < dark: black ink / black background
    saturation: int | None = None  # fixed threshold; None = Otsu
    min_saturation: int = 20  # Otsu result is clamped to [min, max]
    max_saturation: int = 40  # Otsu alone splits pale eosin from haematoxylin and drops the pale tissue
    close_radius: int = 2  # square side 2r+1; 0 skips
    open_radius: int = 2
    ink_speck_radius: int = 1  # ink opened with this first: lone false-ink pixels go before the closing
    ink_region_radius: int = 3  # bluish regions that fill a (2r+1) square are ink; 0 = off
    max_hole_area: int = 0  # largest hole filled (mask pixels); 0 = no limit
    min_object_area: int = 16  # smaller tissue components are dropped
    inks: tuple[str, ...] = INK_FAMILIES  # marker families looked for (engine.ink); the check uses the same

    def __post_init__(self) -> None:
        for name in ("white", "dark"):
            _check_int(name, getattr(self, name), 0, 256)
        if self.saturation is not None:
            _check_int("saturation", self.saturation, 0, 255)
        _check_int("min_saturation", self.min_saturation, 0, 255)
        _check_int("max_saturation", self.max_saturation, self.min_saturation, 255)
        for name in ("close_radius", "open_radius", "ink_speck_radius", "ink_region_radius", "max_hole_area",
                     "min_object_area"):
            _check_int(name, getattr(self, name), 0, None)
        bits = ink_bits(self.inks)  # raises on an unknown name
        object.__setattr__(self, "inks", tuple(f for k, f in enumerate(INK_FAMILIES) if bits >> k & 1))

    @property
    def ink_bits(self) -> int:
        return ink_bits(self.inks)

    def ink_region_radius_of(self, radius: int) -> int:
        """The bluish-region rule is the blue family's: off (0) where blue ink is not looked for."""
        return radius if "blue" in self.inks else 0

    def to_dict(self) -> dict:
        return {**dataclasses.asdict(self), "inks": list(self.inks)}


@dataclass(frozen=True)
class MaskResult:
    mask: np.ndarray  # uint8 (H, W): BACKGROUND 0, TISSUE 1, INK 2
    threshold: int  # saturation threshold actually used
    pen_fraction: float  # fraction of all pixels the pixel rule calls ink (dark or pen), before cleanup


def tissue_mask(rgb: np.ndarray, params: MaskParams | None = None) -> MaskResult:
    """Mask (0 background, 1 tissue, 2 ink) of an RGB thumbnail (H, W, 3) uint8 (native kernel)."""
    params = params or MaskParams()
    rgb = _validate_rgb(rgb)
    mask, threshold, pen = _native.tissue_mask(
        rgb,
        OD_LUT,
        params.white,
        params.dark,
        -1 if params.saturation is None else params.saturation,
        params.min_saturation,
        params.max_saturation,
        params.close_radius,
        params.open_radius,
        params.ink_speck_radius,
        params.ink_region_radius_of(params.ink_region_radius),
        params.max_hole_area,
        params.min_object_area,
        params.ink_bits,
    )
    return MaskResult(mask, int(threshold), pen / (rgb.shape[0] * rgb.shape[1]))


# ----------------------------------------------------------------------------
# Plain numpy/scipy reference of the same algorithm (tests compare against it).


def pixel_classes_reference(rgb: np.ndarray, white: int, dark: int,
                            inks=INK_FAMILIES) -> tuple[np.ndarray, np.ndarray]:
    """Per-pixel class (WHITE/DARK/PEN/CANDIDATE) and saturation, both (H, W); PEN for the ink families `inks`."""
    r, g, b = (rgb[..., k].astype(np.int32) for k in range(3))
    mx = np.maximum(np.maximum(r, g), b)
    mn = np.minimum(np.minimum(r, g), b)
    sat = np.where(mx == 0, 0, (255 * (mx - mn)) // np.maximum(mx, 1))
    cls = np.full(r.shape, CANDIDATE, np.uint8)
    # Assign in reverse rule order so the earlier rule wins.
    cls[is_ink_reference(rgb, inks)] = PEN
    cls[mx < dark] = DARK
    cls[mn >= white] = WHITE
    return cls, sat


def otsu_reference(hist: np.ndarray) -> int | None:
    """Otsu threshold t (class 1 = values >= t) of a 256-bin histogram; None if empty.

    Maximises (n1*s0 - n0*s1)^2 / (n0*n1), which is proportional to the
    between-class variance; ties go to the smallest t.
    """
    hist = hist.astype(np.int64)
    total = int(hist.sum())
    if total == 0:
        return None
    occupied = np.flatnonzero(hist)
    if len(occupied) == 1:
        return int(occupied[0])
    t = np.arange(1, 256)
    n0 = np.cumsum(hist)[:-1]  # pixels with value < t
    s0 = np.cumsum(hist * np.arange(256))[:-1]
    n1, s1 = total - n0, int(hist @ np.arange(256)) - s0
    a = (n1 * s0 - n0 * s1).astype(np.float64)
    valid = (n0 > 0) & (n1 > 0)
    score = a[valid] * a[valid] / (n0[valid].astype(np.float64) * n1[valid].astype(np.float64))
    return int(t[valid][np.argmax(score)])  # argmax: first maximum


def _box(mask: np.ndarray, r: int, dilate: bool, pad: int | None = None) -> np.ndarray:
    """Square (2r+1) dilation (pad 0) or erosion (pad 1, unless `pad` says) of a 0/1 mask."""
    if r == 0:
        return mask
    padded = np.pad(mask, r, constant_values=(0 if dilate else 1) if pad is None else pad)
    windows = np.lib.stride_tricks.sliding_window_view(padded, (2 * r + 1, 2 * r + 1))
    out = windows.max(axis=(2, 3)) if dilate else windows.min(axis=(2, 3))
    return out.astype(np.uint8)


def opening_reference(mask: np.ndarray, r: int) -> np.ndarray:
    """Opening of a 0/1 mask with a square element (lone pixels go) -> uint8."""
    return _box(_box(mask.astype(np.uint8), r, False), r, True)


def closing_reference(mask: np.ndarray, r: int) -> np.ndarray:
    """Closing of a 0/1 mask with a square element (gaps are joined) -> uint8."""
    return _box(_box(mask.astype(np.uint8), r, True), r, False)


def ink_regions_reference(rgb: np.ndarray, radius: int) -> np.ndarray:
    """uint8 0/1: bluish pixels that fill a (2 radius + 1) square inside the image (thinned blue ink: the
    erosion pads with 0, so a nucleus cut by the border is not taken for a wide region); none if radius is 0."""
    if radius == 0:
        return np.zeros(rgb.shape[:2], np.uint8)
    return _box(_box(is_bluish_reference(rgb).astype(np.uint8), radius, False, pad=0), radius, True)


def tissue_mask_reference(rgb: np.ndarray, params: MaskParams | None = None) -> MaskResult:
    """Readable reference of tissue_mask; results are identical."""
    from scipy import ndimage  # here, not at import: the tiler runs the native mask and never needs scipy (0.13-0.4 s)

    params = params or MaskParams()
    rgb = _validate_rgb(rgb)
    cls, sat = pixel_classes_reference(rgb, params.white, params.dark, params.inks)
    if params.saturation is not None:
        threshold = params.saturation
    else:
        t = otsu_reference(np.bincount(sat[cls == CANDIDATE], minlength=256))
        threshold = (
            params.min_saturation
            if t is None
            else min(max(t, params.min_saturation), params.max_saturation)
        )
    mask = opening_reference(closing_reference((cls == CANDIDATE) & (sat >= threshold), params.close_radius),
                             params.open_radius)
    ink = opening_reference((cls == PEN) | (cls == DARK), params.ink_speck_radius)
    ink |= ink_regions_reference(rgb, params.ink_region_radius_of(params.ink_region_radius))
    ink = opening_reference(closing_reference(ink, params.close_radius), params.open_radius)
    mask[ink == 1] = INK

    # Holes: 4-connected background components touching neither the border nor ink.
    cross = ndimage.generate_binary_structure(2, 1)
    labels, _ = ndimage.label(mask == BACKGROUND, structure=cross)
    area = np.bincount(labels.ravel())
    enclosed = np.ones(len(area), bool)
    enclosed[0] = False  # label 0 is tissue or ink, not a hole
    border = np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]])
    enclosed[border] = False
    enclosed[labels[ndimage.binary_dilation(mask == INK, cross)]] = False
    if params.max_hole_area > 0:
        enclosed &= area <= params.max_hole_area
    mask[enclosed[labels]] = 1

    # Specks: 8-connected tissue components smaller than min_object_area.
    labels, _ = ndimage.label(mask == TISSUE, structure=np.ones((3, 3), bool))
    area = np.bincount(labels.ravel())
    small = area < params.min_object_area
    small[0] = False
    mask[small[labels]] = 0

    pen_fraction = int(np.count_nonzero((cls == PEN) | (cls == DARK))) / cls.size
    return MaskResult(mask, int(threshold), pen_fraction)


# ----------------------------------------------------------------------------


def _validate_rgb(rgb: np.ndarray) -> np.ndarray:
    rgb = np.asarray(rgb)
    if rgb.dtype != np.uint8:
        raise ValueError(f"rgb must be uint8, got dtype {rgb.dtype}")
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"rgb must have shape (H, W, 3), got {rgb.shape}")
    if rgb.shape[0] == 0 or rgb.shape[1] == 0:
        raise ValueError(f"rgb must not be empty, got shape {rgb.shape}")
    return np.ascontiguousarray(rgb)


def _check_int(name: str, value, lo: int, hi: int | None) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{name} must be an int, got {value!r}")
    if value < lo or (hi is not None and value > hi):
        bound = f"[{lo}, {hi}]" if hi is not None else f">= {lo}"
        raise ValueError(f"{name} must be in {bound}, got {value}")
