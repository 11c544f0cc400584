"""Ink by optical density, shared by the mask and the check (native copy in csrc/pixel.hpp).

A pixel's optical density o = (oR, oG, oB) comes from OD_LUT (1000 * -log10((v + 1) / 256), computed
once here and handed to the native kernels so both sides use the same integers); t = oR + oG + oB.
H&E mixtures keep the chromaticity o / t inside a cone: green absorbed most, blue moderately, red
between eosin's and haematoxylin's. Ink leaves it (percent of t):
  green/cyan  100*oG < 32*t                                          and t >= 600
  black       100*(max - min) < 17*t (neutral)                       and t > 900
  red         100*oR < 15*t and 100*oB > 27*t (blue absorbed like green) and t >= 850,
              or the wider 100*oR < 19*t and 100*oB > 24*t             and t >= 1100,
              or the widest 100*oR < 25*t and 100*oB > 22*t            and t >= 1800 (dark / orange reds)
  blue        100*oR > 36*t, 8*t < 100*oB < 20*t, 100*oG < 52*t (red above green) and t >= 700
The density floors matter as much as the cones: pale eosin (osteosarcoma) and pale haematoxylin
(lung) reach into the red and blue cones, but only below t ~ 1000, while most marker strokes are
denser.
Blue ink thinned over tissue takes haematoxylin's chromaticity, so no per-pixel cone holds it without
taking nuclei too. It is found by its extent instead: "bluish" pixels (red absorbed about as much as
green, 100*oR >= 33*t, 100*oG <= 45*t, t >= 400) are ink where they fill a whole square window
(an opening, engine.mask / engine.check): a marker stroke is wide and uniformly bluish, while nuclei
are small and lie among eosin-pink or white pixels.
Tuned on painted strokes (four shades per marker family, tests/support/ink.py) over the even-index
half of the 303 images of ../shared/data/he; held-out figures (odd half, tests/support/qc_real.py) are
in tests/engine/test_qc_real.py and the README. All integer: native and reference agree exactly.
Each family can be left out (MaskParams.inks, `engine.tile --inks`): dense eosinophilic tissue (bone,
osteoid, red-cell clusters) has a red marker's own colour, e.g. osteosarcoma's bone at RGB (186, 64, 85)
against a marker's (200, 40, 60), so a study of bone or haemorrhage without red ink tiles without "red".
"""
from __future__ import annotations

import numpy as np

INK_FAMILIES = ("green", "black", "red", "blue")  # bit k of an inks mask is INK_FAMILIES[k] (csrc/pixel.hpp)
OD_LUT = np.round(-np.log10((np.arange(256) + 1) / 256) * 1000).astype(np.int32)
OD_LUT.flags.writeable = False


def optical_density(rgb: np.ndarray) -> np.ndarray:
    """int32 (..., 3) optical density of uint8 RGB."""
    return OD_LUT[rgb]


def ink_bits(families) -> int:
    """The bit mask of ink families the native kernels take (bit k: INK_FAMILIES[k])."""
    unknown = sorted(set(families) - set(INK_FAMILIES))
    if unknown:
        raise ValueError(f"unknown ink famil{'ies' if len(unknown) > 1 else 'y'} {', '.join(unknown)}; "
                         f"choose from {', '.join(INK_FAMILIES)}")
    return sum(1 << k for k, name in enumerate(INK_FAMILIES) if name in families)


def is_ink_reference(rgb: np.ndarray, families=INK_FAMILIES) -> np.ndarray:
    """bool (...): the OD ink rule per pixel, for the ink `families` named."""
    o = optical_density(rgb)
    r, g, b = o[..., 0], o[..., 1], o[..., 2]
    t = r + g + b
    spread = o.max(-1) - o.min(-1)
    green = (100 * g < 32 * t) & (t >= 600)
    black = (100 * spread < 17 * t) & (t > 900)
    red = ((100 * r < 15 * t) & (100 * b > 27 * t) & (t >= 850)) | (
        (100 * r < 19 * t) & (100 * b > 24 * t) & (t >= 1100)) | (
        (100 * r < 25 * t) & (100 * b > 22 * t) & (t >= 1800))
    blue = (100 * r > 36 * t) & (100 * b > 8 * t) & (100 * b < 20 * t) & (100 * g < 52 * t) & (t >= 700)
    found = dict(zip(INK_FAMILIES, (green, black, red, blue)))
    return np.logical_or.reduce([found[f] for f in INK_FAMILIES if f in families] or [np.zeros_like(t, bool)])


def is_bluish_reference(rgb: np.ndarray) -> np.ndarray:
    """bool (...): red absorbed about as much as green (haematoxylin-like or blue ink); ink only as a region."""
    o = optical_density(rgb)
    t = o.sum(-1)
    return (100 * o[..., 0] >= 33 * t) & (100 * o[..., 1] <= 45 * t) & (t >= 400)
