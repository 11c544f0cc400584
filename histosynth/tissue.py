"""H&E-like slide content: tissue islands with stroma fibres, nuclei and lumens, optionally a
marker pen stroke, rendered as a pure function of global level-0 pixel coordinates.

So any window can be re-rendered exactly, huge slides are written tile by tile with bounded
memory, and a pixel never depends on which window it was rendered in.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np

from engine.runtime import reuse_freed_memory
from histosynth.noise import _F, _U32, _bilerp, _fbm, _hash, _key, _unit, _vnoise


@dataclass(frozen=True)
class SynthSpec:
    """What to render: level-0 size, seed, content switches and metadata.
    Hashable, so derived per-slide constants are cached per spec."""

    width: int = 4096
    height: int = 3072
    seed: int = 0
    tissue: bool = True
    pen: bool = False
    mpp: float | None = 0.25  # None: write no resolution metadata at all
    app_mag: int = 40
    jpeg_quality: int = 80


# --------------------------------------------------------------------------
# slide layout (per spec constants)

_TISSUE_FRACTION = 0.40
_MASK_SOFT = 0.005  # width of the tissue edge ramp, in field units
_HOLE_THR = 0.70
_NUC_CELLS = ((11, 0), (17, 5))  # (cell size, offset) of two nucleus grids
_COARSE = 8  # spacing of the grid on which the low-frequency fields live
_FRAY = 0.012  # fibre noise added to the tissue field: frayed, organic edges


@dataclass(frozen=True)
class _Layout:
    mask_scale: float
    mask_octaves: int
    threshold: float
    pen: tuple | None  # (x0, x1, yc, amplitude, thickness, rgb)


def _edge_penalty(c: np.ndarray, size: int) -> np.ndarray:
    """Pushes the tissue field down near the slide border (keeps a margin)."""
    margin = max(size * 0.10, 1.0)
    d = np.minimum(c, size - 1 - c) / margin
    p = np.clip(1.0 - d, 0.0, 1.0)
    return (p * p * 0.8).astype(np.float32)


def _mask_field(spec: SynthSpec, xs, ys, scale: float, octaves: int) -> np.ndarray:
    """Tissue field: large-scale fbm minus a border penalty."""
    f = _fbm(xs, ys, scale, octaves, _key(spec.seed, 1))
    f -= np.maximum(_edge_penalty(xs, spec.width)[None, :], _edge_penalty(ys, spec.height)[:, None])
    return f


@functools.lru_cache(maxsize=64)
def _layout(spec: SynthSpec) -> _Layout:
    scale = max(spec.width, spec.height) / 2.2  # a few large islands
    octaves = max(1, int(math.log2(scale / (2 * _COARSE))) + 1)  # down to ~16 px
    # threshold at a quantile so coverage is ~40% whatever the seed
    n = 256
    xs = np.floor((np.arange(n) + 0.5) * (spec.width / n))
    ys = np.floor((np.arange(n) + 0.5) * (spec.height / n))
    f = _mask_field(spec, xs, ys, scale, octaves)
    thr = float(np.quantile(f, 1.0 - _TISSUE_FRACTION))
    pen = None
    if spec.pen:
        inside = f > thr
        row = int(np.argmax(inside.sum(axis=1)))
        cols = np.flatnonzero(inside[row])
        x0 = float(xs[cols[0]]) if len(cols) else spec.width * 0.2
        x1 = float(xs[cols[-1]]) if len(cols) else spec.width * 0.8
        # cross part of the tissue: start before it, stop ~2/3 of the way in
        x0 = max(spec.width * 0.04, x0 - 0.1 * (x1 - x0))
        x1 = x0 + 0.7 * (x1 - x0)
        rgb = (40.0, 150.0, 80.0) if _key(spec.seed, 7) & 1 else (40.0, 70.0, 190.0)
        thick = max(6.0, 0.018 * min(spec.width, spec.height))
        pen = (x0, x1, float(ys[row]), 0.06 * spec.height, thick, rgb)
    return _Layout(scale, octaves, thr, pen)


# --------------------------------------------------------------------------
# rendering (planar float32 (3, h, w) internally: much faster than (h, w, 3))

def _rgb(*v: float) -> np.ndarray:
    return np.array(v, np.float32)[:, None, None]


_BG = _rgb(241, 240, 238)
_PINK_LIGHT = _rgb(246, 196, 224)
_PINK_DARK = _rgb(214, 108, 176)
_NUC_DARK = _rgb(78, 40, 132)
_NUC_LIGHT = _rgb(140, 92, 188)
_LUMEN = _rgb(238, 234, 240)


def _grain(xs, ys, key: int) -> np.ndarray:
    """Per-pixel white noise in [-1, 1)."""
    h = _hash(xs.astype(np.int64)[None, :], ys.astype(np.int64)[:, None], key)
    g = _unit(h)
    g *= _F(2.0)
    g -= _F(1.0)
    return g


def _lerp(a: np.ndarray, b: np.ndarray, t: np.ndarray) -> np.ndarray:
    """a + (b - a) * t, with t (h, w) broadcast over the planar channels."""
    d = (b - a) * t
    d += a
    return d


def _coarse_fields(spec: SynthSpec, lay: _Layout, xs, ys) -> np.ndarray | None:
    """The low-frequency fields (tissue, eosin, lumen, fibre orientation),
    evaluated exactly on a global grid of spacing _COARSE and interpolated
    bilinearly: ~5x cheaper than per pixel and still a pure function of the
    pixel's own coordinates. None when the window is surely background."""
    c = float(_COARSE)
    gx = np.floor(xs / c)
    gy = np.floor(ys / c)
    gxs = np.arange(gx[0], gx[-1] + 2) * c
    gys = np.arange(gy[0], gy[-1] + 2) * c
    m = _mask_field(spec, gxs, gys, lay.mask_scale, lay.mask_octaves)
    # interpolated values are convex combinations of grid values, and the
    # fibre fray moves the edge by at most _FRAY / 2: an exact test
    if float(m.max()) + _FRAY / 2 + 1e-6 <= lay.threshold:
        return None
    s = spec.seed
    grid = np.stack([
        m,
        _fbm(gxs, gys, 90.0, 3, _key(s, 10)),
        _fbm(gxs, gys, 260.0, 3, _key(s, 14)),
        _vnoise(gxs, gys, 300.0, 300.0, _key(s, 13)),
    ])
    kx = (gx - gx[0]).astype(np.intp)
    ky = (gy - gy[0]).astype(np.intp)
    wx = ((xs - gx * c) / c).astype(np.float32)
    wy = ((ys - gy * c) / c).astype(np.float32)
    return _bilerp(grid, kx, wx, ky, wy)


def _nuclei(spec: SynthSpec, xs, ys) -> np.ndarray:
    """Nucleus opacity in [0, 1]: jittered ellipses, one per grid cell, whose
    presence follows a low-frequency density field (dense in places)."""
    xi = xs.astype(np.int64)
    yi = ys.astype(np.int64)
    out = None
    for gi, (cell, off) in enumerate(_NUC_CELLS):
        key = _key(spec.seed, 20, gi)
        cx = (xi + off) // cell
        cy = (yi + off) // cell
        ux = np.arange(cx[0], cx[-1] + 1)
        uy = np.arange(cy[0], cy[-1] + 1)
        # per-cell parameters on the small cell grid
        h1 = _hash(ux[None, :], uy[:, None], key)
        h2 = _hash(ux[None, :], uy[:, None], key ^ 0x5BD1E995)
        dens = _fbm((ux + 0.5) * cell, (uy + 0.5) * cell, 420.0, 3, _key(spec.seed, 21))
        p = np.clip((dens - _F(0.38)) * _F(2.6), 0.04, 0.97)
        alive = _unit(h1) < p
        rmax = _F(cell * 0.5 - 1.0)
        rx = (_F(0.45) + _F(0.55) * _unit(h2)) * rmax
        ry = rx * (_F(0.6) + _F(0.4) * _unit(h2 * _U32(0x9E3779B1)))
        jx = (_unit(h1 * _U32(0x85EBCA77)) - _F(0.5)) * (_F(cell - 1) - 2 * rx)
        jy = (_unit(h1 * _U32(0xC2B2AE3D)) - _F(0.5)) * (_F(cell - 1) - 2 * ry)
        irx2 = np.where(alive, _F(1.0) / (rx * rx), _F(1e6)).astype(np.float32)
        iry2 = np.where(alive, _F(1.0) / (ry * ry), _F(1e6)).astype(np.float32)
        # squared elliptic distance to the cell's centre, separably: the x term
        # depends on (cell row, column), the y term on (row, cell column)
        kx, ky = cx - cx[0], cy - cy[0]
        lx = ((xi + off) - cx * cell).astype(np.float32) - _F((cell - 1) / 2)
        ly = ((yi + off) - cy * cell).astype(np.float32) - _F((cell - 1) / 2)
        tx = lx[None, :] - np.take(jx, kx, axis=1)
        tx *= tx
        tx *= np.take(irx2, kx, axis=1)  # (ncy, w)
        ty = ly[:, None] - np.take(jy, ky, axis=0)
        ty *= ty
        ty *= np.take(iry2, ky, axis=0)  # (h, ncx)
        d2 = np.take(tx, ky, axis=0)
        d2 += np.take(ty, kx, axis=1)
        o = _F(1.0) - d2
        o *= _F(2.5)
        np.clip(o, 0.0, 1.0, out=o)
        out = o if out is None else np.maximum(out, o, out=out)
    return out


_BAND_PIXELS = 1 << 18


def _render(spec: SynthSpec, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    """Render the pixels at level-0 coordinates ys x xs (ascending, integral
    float64), uint8 (len(ys), len(xs), 3).

    Works in row bands of ~256k pixels so temporaries stay a few MB."""
    reuse_freed_memory()  # else each MB-sized temporary is page-faulted afresh: half the time
    rows = max(1, _BAND_PIXELS // max(1, len(xs)))
    if len(ys) <= rows:
        return _render_band(spec, xs, ys)
    out = np.empty((len(ys), len(xs), 3), np.uint8)
    for i in range(0, len(ys), rows):
        out[i:i + rows] = _render_band(spec, xs, ys[i:i + rows])
    return out


def _render_band(spec: SynthSpec, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    grain = _grain(xs, ys, _key(spec.seed, 2))
    g16 = grain * _F(1.6)
    out = _BG + g16
    if spec.tissue:
        lay = _layout(spec)
        fields = _coarse_fields(spec, lay, xs, ys)
        if fields is not None:
            tissue, alpha = _tissue(spec, lay, xs, ys, fields, grain, g16)
            if alpha is not None:
                out = _lerp(out, tissue, alpha)
        if lay.pen is not None:
            _pen(spec, lay.pen, xs, ys, out)
    out += _F(0.5)
    np.clip(out, 0.0, 255.0, out=out)
    return out.transpose(1, 2, 0).astype(np.uint8, order="C")


def _tissue(spec: SynthSpec, lay: _Layout, xs, ys, fields, grain, g16):
    """(tissue colour, opacity) of a window, or (None, None) if no tissue."""
    m, e, h, orient = fields
    s = spec.seed
    # fibres whose orientation alternates patchily; they also fray the edge
    fh = _vnoise(xs, ys, 26.0, 3.0, _key(s, 11))
    fv = _vnoise(xs, ys, 3.0, 26.0, _key(s, 12))
    fib = _lerp(fv, fh, orient)
    fib -= _F(0.5)
    alpha = fib * _F(_FRAY)
    alpha += m
    alpha -= _F(lay.threshold)
    alpha *= _F(1.0 / _MASK_SOFT)
    np.clip(alpha, 0.0, 1.0, out=alpha)
    if not alpha.any():
        return None, None
    # stroma: eosin intensity from the mid-frequency field plus fibres
    t = e * _F(1.1)
    t -= _F(0.2)
    t += fib * _F(0.7)
    t += grain * _F(0.06)
    np.clip(t, 0.0, 1.0, out=t)
    col = _lerp(_PINK_LIGHT, _PINK_DARK, t)
    # nuclei, chromatin texture from the grain and eosin field
    n = _nuclei(spec, xs, ys)
    chrom = grain * _F(0.3)
    chrom += _F(0.35)
    chrom += e * _F(0.3)
    np.clip(chrom, 0.0, 1.0, out=chrom)
    col = _lerp(col, _lerp(_NUC_DARK, _NUC_LIGHT, chrom), n)
    # lumens: white holes with a slightly darker rim
    rim = np.abs(h - _F(_HOLE_THR - 0.02))
    rim *= _F(-40.0)
    rim += _F(1.0)
    np.clip(rim, 0.0, 1.0, out=rim)
    rim *= _F(-0.12)
    rim += _F(1.0)
    col *= rim
    hole = h - _F(_HOLE_THR)
    hole *= _F(50.0)
    np.clip(hole, 0.0, 1.0, out=hole)
    return _lerp(col, _LUMEN + g16, hole), alpha


def _pen(spec: SynthSpec, pen: tuple, xs, ys, out: np.ndarray) -> None:
    """Multiply-blend a marker stroke into out (in place); ink over tissue
    gets darker, as real marker does."""
    x0, x1, yc, amp, thick, rgb = pen
    if xs[-1] < x0 or xs[0] > x1:
        return
    y0 = np.zeros(1)
    wob = _vnoise(xs, y0, spec.height * 0.25, 1.0, _key(spec.seed, 30))[0]
    centre = _F(yc) + (wob - _F(0.5)) * _F(2 * amp)
    tw = _vnoise(xs, y0, 40.0, 1.0, _key(spec.seed, 31))[0]
    half = _F(thick / 2) * (_F(0.85) + _F(0.3) * tw)
    # rounded-ish ends: taper the half width to zero at both ends
    end = np.clip(np.minimum(xs - x0, x1 - xs) / (thick / 2), 0.0, 1.0).astype(np.float32)
    half = np.where(end > 0, half * np.sqrt(end), _F(-2.0))
    if float(ys[-1]) < float((centre - half).min()) - 2 or float(ys[0]) > float((centre + half).max()) + 2:
        return
    d = np.abs(ys.astype(np.float32)[:, None] - centre[None, :]) - half[None, :]
    ink = _F(0.5) - d * _F(0.5)
    np.clip(ink, 0.0, 0.92, out=ink)
    if not ink.any():
        return
    tint = np.asarray(rgb, np.float32)[:, None, None] / _F(255.0)
    out[...] = _lerp(out, out * tint, ink)


def render_region(spec: SynthSpec, x: int, y: int, w: int, h: int) -> np.ndarray:
    """Deterministic H&E-like RGB content (uint8, shape (h, w, 3)) of the
    level-0 window at (x, y); windows may extend past the slide bounds."""
    xs = np.arange(x, x + w, dtype=np.float64)
    ys = np.arange(y, y + h, dtype=np.float64)
    return _render(spec, xs, ys)
