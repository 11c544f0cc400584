"""Realistic synthetic whole-slide images for the demo, tests and benchmarks.

Content is a pure function of global level-0 pixel coordinates (hash-based
value noise evaluated separably), so any window can be re-rendered exactly,
huge slides are written tile by tile with bounded memory, and a pixel never
depends on which window it was rendered in. Only elementwise IEEE arithmetic
is used on per-pixel data (no BLAS, no transcendentals) to keep that exact.

Writers produce files the real readers accept:
  * write_svs        Aperio SVS (OpenSlide vendor "aperio", cuCIM, tifffile)
  * write_tiled_tiff CAMELYON16-style pyramidal TIFF (OpenSlide "generic-tiff")
  * write_plain_image, corrupt_tile, truncate, mosaic_svs, demo_slides
"""

from __future__ import annotations

import argparse
import functools
import math
import os
import struct
import sys
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import imagecodecs
import numpy as np
import tifffile

__all__ = [
    "SynthSpec",
    "render_region",
    "write_svs",
    "write_tiled_tiff",
    "write_plain_image",
    "corrupt_tile",
    "truncate",
    "mosaic_svs",
    "demo_slides",
]


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
# noise primitives

_U32 = np.uint32
_F = np.float32


def _key(*parts: int) -> int:
    """Mix integers into one 32-bit key (pure Python, platform independent)."""
    h = 0x811C9DC5
    for p in parts:
        h = ((h ^ (int(p) & 0xFFFFFFFF)) * 0x01000193) & 0xFFFFFFFF
        h ^= h >> 13
    return h


def _hash(ix: np.ndarray, iy: np.ndarray, key: int) -> np.ndarray:
    """32-bit integer hash of broadcast lattice coordinates."""
    h = ix.astype(_U32) * _U32(0x8DA6B343)
    h = h ^ (iy.astype(_U32) * _U32(0xD8163841))
    h ^= _U32(key)
    h ^= h >> _U32(15)
    h *= _U32(0x2C1B3C6D)
    h ^= h >> _U32(12)
    h *= _U32(0x297A2D39)
    h ^= h >> _U32(15)
    return h


def _unit(h: np.ndarray) -> np.ndarray:
    """uint32 hash -> float32 in [0, 1)."""
    return (h >> _U32(8)).astype(np.float32) * np.float32(1.0 / (1 << 24))


def _axis(c: np.ndarray, scale: float) -> tuple[np.ndarray, np.ndarray]:
    g = c / scale
    i = np.floor(g).astype(np.int64)
    f = g - i
    return i, (f * f * (3.0 - 2.0 * f)).astype(np.float32)


def _vnoise(xs: np.ndarray, ys: np.ndarray, sx: float, sy: float, key: int) -> np.ndarray:
    """Smooth value noise in [0, 1) on the grid ys x xs (ascending coordinates).

    Interpolates along x per lattice row first (a small array), then along y;
    every output value depends only on its own global coordinates.
    """
    ix, wx = _axis(xs, sx)
    iy, wy = _axis(ys, sy)
    lx = np.arange(ix[0], ix[-1] + 2)
    ly = np.arange(iy[0], iy[-1] + 2)
    g = _unit(_hash(lx[None, :], ly[:, None], key))
    return _bilerp(g, ix - ix[0], wx, iy - iy[0], wy)


def _bilerp(grid: np.ndarray, kx, wx, ky, wy) -> np.ndarray:
    """Interpolate `grid` (..., ny, nx) at cells (ky, kx) with weights (wy, wx): along x on the
    small grid first, then whole-row gathers (fast) along y. np.take keeps C order; fancy
    indexing may not."""
    a = np.take(grid, kx, axis=-1)
    r = np.take(grid, kx + 1, axis=-1)
    r -= a
    r *= wx
    r += a
    a = np.take(r, ky, axis=-2)
    out = np.take(r, ky + 1, axis=-2)
    out -= a
    out *= wy[:, None]
    out += a
    return out


def _fbm(xs, ys, scale: float, octaves: int, key: int) -> np.ndarray:
    """Fractal sum of value noise, normalised to [0, 1)."""
    total = None
    amp = 1.0
    for o in range(octaves):
        v = _vnoise(xs, ys, scale, scale, _key(key, o))
        if total is None:
            total = v
        else:
            v *= _F(amp)
            total += v
        amp *= 0.5
        scale *= 0.5
    total *= _F(1.0 / sum(0.5**o for o in range(octaves)))
    return total


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


def _raise_malloc_thresholds() -> None:
    """glibc returns freed blocks above its mmap threshold to the OS, so each
    MB-sized numpy temporary is page-faulted in afresh (half the render time,
    and it serialises threads). Freeing one large block makes glibc raise the
    mmap/trim thresholds itself (its documented dynamic behaviour, which any
    process freeing a big array triggers anyway); do that once."""
    global _MALLOC_RAISED
    if not _MALLOC_RAISED:
        _MALLOC_RAISED = True
        np.empty(24 << 20, np.uint8)  # allocated and freed at once, never touched


_MALLOC_RAISED = False


def _render(spec: SynthSpec, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    """Render the pixels at level-0 coordinates ys x xs (ascending, integral
    float64), uint8 (len(ys), len(xs), 3).

    Works in row bands of ~256k pixels so temporaries stay a few MB."""
    _raise_malloc_thresholds()
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


def _render_level(spec: SynthSpec, ds: int, x: int, y: int, w: int, h: int) -> np.ndarray:
    """Window (x, y, w, h) of the pyramid level with downsample ds: the
    rounded area mean of the level-0 render (exact expectation for tests)."""
    return _reduced(functools.partial(_render, spec), ds, x, y, w, h)


# --------------------------------------------------------------------------
# pixel sources and tiles

Source = Callable[[np.ndarray, np.ndarray], np.ndarray]  # (xs, ys) -> (h, w, 3)

_BG_U8 = np.array([241, 240, 238], np.uint8)


def _window(src: Source, x: int, y: int, w: int, h: int) -> np.ndarray:
    return src(np.arange(x, x + w, dtype=np.float64), np.arange(y, y + h, dtype=np.float64))


def _block_mean(a: np.ndarray, ds: int) -> np.ndarray:
    """Rounded mean over ds x ds blocks (exact integer arithmetic). Strided
    adds: ~10x faster than a reshape(...).sum(axis=(1, 3))."""
    h, w = a.shape[0] // ds, a.shape[1] // ds
    a = a[:h * ds, :w * ds]
    acc = np.uint16 if ds * ds * 255 < 65536 else np.uint32
    rows = a[0::ds].astype(acc)
    for i in range(1, ds):
        rows += a[i::ds]
    s = rows[:, 0::ds].copy()
    for i in range(1, ds):
        s += rows[:, i::ds]
    n = ds * ds
    s += n // 2
    s //= n
    return s.astype(np.uint8)


def _reduced(src: Source, ds: int, x: int, y: int, w: int, h: int) -> np.ndarray:
    """Level-ds window: area mean of level 0, rendered in bands of bounded size."""
    if ds == 1:
        return _window(src, x, y, w, h)
    out = np.empty((h, w, 3), np.uint8)
    rows = max(1, (1 << 20) // (w * ds * ds))
    for r in range(0, h, rows):
        rh = min(rows, h - r)
        out[r:r + rh] = _block_mean(_window(src, x * ds, (y + r) * ds, w * ds, rh * ds), ds)
    return out


def _pad(a: np.ndarray, tile: int) -> np.ndarray:
    """Edge tiles are stored full size; pad with background colour."""
    if a.shape[:2] == (tile, tile):
        return a
    t = np.empty((tile, tile, 3), np.uint8)
    t[...] = _BG_U8
    t[:a.shape[0], :a.shape[1]] = a
    return t


def _thumbnail(src: Source, width: int, height: int, kept: dict[int, np.ndarray],
               long_side: int = 1024) -> np.ndarray:
    """Preview image, long side ~1/4 of the slide's and <= long_side: a block
    mean of the largest in-memory pyramid level when one is big enough (free),
    else 2x2 point samples per pixel (cheap; not an exact pyramid level)."""
    long_side = max(1, min(long_side, max(width, height) // 4))
    for ds in sorted(kept):
        a = kept[ds]
        k = math.ceil(max(a.shape[:2]) / long_side)
        if max(a.shape[:2]) // k >= long_side // 2:
            return _block_mean(a, k)
    d = max(1, math.ceil(max(width, height) / long_side))
    tw, th = max(1, width // d), max(1, height // d)
    k = min(d, 2)
    xs = np.floor((np.arange(tw * k) + 0.5) * (d / k))
    ys = np.floor((np.arange(th * k) + 0.5) * (d / k))
    return _block_mean(src(xs, ys), k)


def _workers() -> int:
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:
        n = os.cpu_count() or 1
    return max(1, min(n, 16))


def _ordered_map(pool: ThreadPoolExecutor, fn, items: Iterable, ahead: int) -> Iterator:
    """pool.map with bounded look-ahead so memory stays bounded."""
    q: deque = deque()
    for it in items:
        q.append(pool.submit(fn, it))
        if len(q) >= ahead:
            yield q.popleft().result()
    while q:
        yield q.popleft().result()


# --------------------------------------------------------------------------
# tile codecs

def _jpeg_segments(stream: bytes) -> Iterator[tuple[int, bytes]]:
    """(marker, whole segment) pairs up to and including SOS + scan data."""
    i = 2
    while i < len(stream):
        marker = stream[i + 1]
        if marker == 0xDA:  # SOS: the rest is entropy-coded data and EOI
            yield marker, stream[i:]
            return
        n = struct.unpack(">H", stream[i + 2:i + 4])[0]
        yield marker, stream[i:i + 2 + n]
        i += 2 + n


def _split_jpeg(stream: bytes, aperio_ids: bool) -> tuple[bytes, bytes]:
    """Split a JPEG into (JPEGTables, abbreviated tile stream), as libtiff and
    Aperio store them; drop APPn markers. With aperio_ids, rename the RGB
    components 'R','G','B' -> 0,1,2 like Aperio, whose streams carry no hint
    of being RGB: readers must honour PhotometricInterpretation=RGB."""
    tables, body = [b"\xff\xd8"], [b"\xff\xd8"]
    for marker, seg in _jpeg_segments(stream):
        if marker in (0xDB, 0xC4):  # DQT, DHT
            tables.append(seg)
        elif 0xE0 <= marker <= 0xEF:  # APPn (JFIF, Adobe)
            continue
        else:
            if aperio_ids and marker == 0xC0:
                seg = bytearray(seg)
                for c in range(seg[9]):
                    seg[10 + 3 * c] = c
                seg = bytes(seg)
            elif aperio_ids and marker == 0xDA:
                seg = bytearray(seg)
                for c in range(seg[4]):
                    seg[5 + 2 * c] = c
                seg = bytes(seg)
            body.append(seg)
    tables.append(b"\xff\xd9")
    return b"".join(tables), b"".join(body)


@dataclass(frozen=True)
class _Codec:
    tag: int | str  # tifffile compression
    encode: Callable[[np.ndarray], bytes]
    kwargs: dict  # extra TiffWriter.write arguments (photometric, tables...)
    label: str  # for the Aperio description


def _codec(compression: str, quality: int, aperio: bool) -> _Codec:
    c = compression.lower()
    if c == "jpeg":
        if aperio:
            # Aperio: photometric RGB, 4:4:4 JPEG without colour transform
            args = dict(colorspace="rgb", outcolorspace="rgb")
            kw = dict(photometric="rgb", subsampling=(1, 1),
                      compressionargs={"outcolorspace": "rgb"})
        else:
            # libtiff/vips style: YCbCr 4:2:0
            args = dict(colorspace="rgb", outcolorspace="ycbcr", subsampling="420")
            kw = dict(photometric="rgb", subsampling=(2, 2))
        probe = imagecodecs.jpeg8_encode(np.zeros((16, 16, 3), np.uint8), level=quality, **args)
        tables, _ = _split_jpeg(probe, aperio)

        def enc(a: np.ndarray) -> bytes:
            t, body = _split_jpeg(imagecodecs.jpeg8_encode(a, level=quality, **args), aperio)
            if t != tables:  # cannot happen with fixed quality and no optimize
                raise RuntimeError("JPEG tables differ between tiles")
            return body

        return _Codec("jpeg", enc, dict(kw, jpegtables=tables), f"JPEG/RGB Q={quality}")
    if c == "jpeg2000":
        # APERIO_JP2000_RGB: raw J2K codestream, RGB (MCT inside the codestream)
        psnr = 30.0 + 0.2 * quality

        def enc(a: np.ndarray) -> bytes:
            return imagecodecs.jpeg2k_encode(a, level=psnr, codecformat="J2K")

        return _Codec(33005, enc, dict(photometric="rgb"), f"J2K/KDU Q={quality}")
    simple = {
        "lzw": (5, lambda a: imagecodecs.lzw_encode(a)),
        "deflate": (8, lambda a: imagecodecs.zlib_encode(a, level=6)),
        "zstd": (50000, lambda a: imagecodecs.zstd_encode(a, level=5)),
        "webp": (50001, lambda a: imagecodecs.webp_encode(a, level=quality, lossless=False)),
    }
    if c not in simple:
        raise ValueError(f"unsupported compression {compression!r}")
    tag, enc = simple[c]
    return _Codec(tag, enc, dict(photometric="rgb"), c.upper())


def _level_dims(width: int, height: int, levels: Iterable[int]) -> list[tuple[int, int, int]]:
    """(downsample, w, h) per level; floor like Aperio; drops empty levels."""
    out: list[tuple[int, int, int]] = []
    for ds in levels:
        ds = int(ds)
        if ds < 1 or (out and ds <= out[-1][0]):
            raise ValueError(f"levels must be increasing downsamples >= 1: {levels}")
        if not out and ds != 1:
            raise ValueError("the first level must have downsample 1")
        w, h = width // ds, height // ds
        if w >= 1 and h >= 1:
            out.append((ds, w, h))
    return out


# lower levels that fit this budget are filled from the level-0 pass instead
# of re-rendering the whole of level 0 once per level
_KEEP_BUDGET = 256 << 20


def _write_pyramid(path: Path, src: Source, width: int, height: int, tile: int, levels,
                   codec: _Codec, level_kw: Callable[[int, int, int, int], dict],
                   after_first: Callable[[tifffile.TiffWriter, dict], None] | None = None,
                   lossy: bool = True) -> Path:
    """Write one tiled IFD per level, tiles rendered and encoded in threads.

    Level 0 is rendered once; each level in `kept` is the exact block mean of
    those rendered pixels, accumulated in memory; any other level is rendered
    tile-wise from its level-0 window (bounded memory, one more pass)."""
    if tile % 16:
        raise ValueError("tile must be a multiple of 16")
    dims = _level_dims(width, height, levels)
    kept: dict[int, np.ndarray] = {}
    budget = _KEEP_BUDGET
    for ds, lw, lh in sorted(dims[1:], key=lambda d: d[1] * d[2]):
        if tile % ds == 0 and lw * lh * 3 <= budget:  # blocks never straddle tiles
            kept[ds] = np.empty((lh, lw, 3), np.uint8)
            budget -= lw * lh * 3
    raw = sum(w * h * 3 for _, w, h in dims)
    bigtiff = raw / (4 if lossy else 1) > 3.5 * 2**30
    workers = _workers()
    # a job renders a strip of `per` tiles (~256k px): far fewer numpy calls
    # per pixel, which is what lets the threads overlap (GIL)
    per = max(1, _BAND_PIXELS // (tile * tile))
    _raise_malloc_thresholds()
    with ThreadPoolExecutor(workers) as pool, tifffile.TiffWriter(path, bigtiff=bigtiff) as tif:
        for i, (ds, lw, lh) in enumerate(dims):
            def job(t, ds=ds, lw=lw, lh=lh):
                ty, tx = t
                x, y = tx * tile, ty * tile
                w, h = min(per * tile, lw - x), min(tile, lh - y)
                parts = ()
                if ds == 1:
                    a = _window(src, x, y, w, h)
                    parts = [(k, x // k, y // k, _block_mean(a, k)) for k in kept]
                elif ds in kept:
                    a = kept[ds][y:y + h, x:x + w]
                else:
                    a = _reduced(src, ds, x, y, w, h)
                return [codec.encode(_pad(a[:, j:j + tile], tile)) for j in range(0, w, tile)], parts

            def tiles(job=job, lw=lw, lh=lh):
                grid = ((ty, tx) for ty in range(-(-lh // tile))
                        for tx in range(0, -(-lw // tile), per))
                for data, parts in _ordered_map(pool, job, grid, 2 * workers + 2):
                    for k, kx, ky, r in parts:
                        kept[k][ky:ky + r.shape[0], kx:kx + r.shape[1]] = r
                    yield from data

            tif.write(tiles(), shape=(lh, lw, 3), dtype=np.uint8, tile=(tile, tile),
                      compression=codec.tag, metadata=None, **codec.kwargs,
                      **level_kw(i, ds, lw, lh))
            if i == 0 and after_first is not None:
                after_first(tif, kept)
            kept.pop(ds, None)  # written: free it
    return path


_RESOLUTION_TAGS = frozenset({282, 283, 296})  # XResolution, YResolution, ResolutionUnit


def _drop_tags(path: Path, codes=_RESOLUTION_TAGS) -> None:
    """Remove tags from every IFD in place. tifffile always writes
    resolution tags (1/1, unit NONE); Aperio files and slides without a
    known pixel size carry none, so strip them. The shortened IFD fits where
    the old one was; the orphaned value bytes are harmless."""
    with open(path, "r+b") as f:
        head = f.read(16)
        bo = "<" if head[:2] == b"II" else ">"
        if struct.unpack(bo + "H", head[2:4])[0] == 43:  # BigTIFF
            cnt, entry, ptr, off = "Q", 20, "Q", struct.unpack(bo + "Q", head[8:16])[0]
        else:
            cnt, entry, ptr, off = "H", 12, "I", struct.unpack(bo + "I", head[4:8])[0]
        ncnt, nptr = struct.calcsize(cnt), struct.calcsize(ptr)
        while off:
            f.seek(off)
            n = struct.unpack(bo + cnt, f.read(ncnt))[0]
            raw = f.read(n * entry)
            nxt = f.read(nptr)
            keep = [raw[i:i + entry] for i in range(0, len(raw), entry)
                    if struct.unpack(bo + "H", raw[i:i + 2])[0] not in codes]
            f.seek(off)
            f.write(struct.pack(bo + cnt, len(keep)) + b"".join(keep) + nxt)
            off = struct.unpack(bo + ptr, nxt)[0]


# --------------------------------------------------------------------------
# writers

def _mpp_str(mpp: float) -> str:
    s = f"{mpp:.4f}"  # Aperio writes 4 decimals; keep more if they matter
    return s if float(s) == mpp else repr(float(mpp))


def _write_aperio(path, src: Source, width: int, height: int, tile: int, levels,
                  compression: str, quality: int, mpp: float | None, app_mag) -> Path:
    codec = _codec(compression, quality, aperio=True)
    lib = "Aperio Image Library v12.0.15 \r\n"
    meta = f"|AppMag = {app_mag}" + (f"|MPP = {_mpp_str(mpp)}" if mpp is not None else "")
    head = f"{lib}{width}x{height} [0,0 {width}x{height}] ({tile}x{tile})"

    def level_kw(i, ds, lw, lh):
        scale = "" if i == 0 else f" -> {lw}x{lh}"
        return dict(description=f"{head}{scale} {codec.label}{meta}")

    def thumbnail(tif, kept):
        # Aperio's 2nd IFD: a stripped (not tiled) JPEG thumbnail
        thumb = _thumbnail(src, width, height, kept)
        th, tw = thumb.shape[:2]
        tif.write(thumb, photometric="rgb", compression="jpeg", rowsperstrip=16,
                  compressionargs={"level": 90, "outcolorspace": "rgb"}, subsampling=(1, 1),
                  metadata=None, description=f"{lib}{width}x{height} -> {tw}x{th} - {meta}")

    path = _write_pyramid(Path(path), src, width, height, tile, levels, codec, level_kw, thumbnail)
    _drop_tags(path)  # like Aperio: pixel size only in the description
    return path


def write_svs(path, spec: SynthSpec, tile: int = 240, levels=(1, 4, 16),
              compression: str = "jpeg") -> Path:
    """Aperio-style SVS: tiled level 0, stripped thumbnail as 2nd IFD, reduced
    levels as further tiled IFDs; compression "jpeg" or "jpeg2000" (33005)."""
    if compression.lower() not in ("jpeg", "jpeg2000"):
        raise ValueError(f"SVS compression must be jpeg or jpeg2000, not {compression!r}")
    return _write_aperio(path, functools.partial(_render, spec), spec.width, spec.height,
                         tile, levels, compression, spec.jpeg_quality, spec.mpp, spec.app_mag)


def write_tiled_tiff(path, spec: SynthSpec, tile: int = 512, levels=(1, 2, 4, 8, 16, 32),
                     compression: str = "jpeg") -> Path:
    """CAMELYON16-style generic pyramidal TIFF: one tiled IFD per level in the
    main chain (lower ones marked reduced), resolution in pixels per cm;
    compression in jpeg, lzw, deflate, zstd, webp."""
    if compression.lower() not in ("jpeg", "lzw", "deflate", "zstd", "webp"):
        raise ValueError(f"unsupported compression {compression!r}")
    codec = _codec(compression, spec.jpeg_quality, aperio=False)

    def level_kw(i, ds, lw, lh):
        kw = dict(subfiletype=1 if i else 0)
        if spec.mpp is not None:
            ppcm = 1e4 / (spec.mpp * ds)
            kw.update(resolution=(ppcm, ppcm), resolutionunit="CENTIMETER")
        return kw

    path = _write_pyramid(Path(path), functools.partial(_render, spec), spec.width, spec.height,
                          tile, levels, codec, level_kw,
                          lossy=compression.lower() in ("jpeg", "webp"))
    if spec.mpp is None:
        _drop_tags(path)
    return path


def write_plain_image(path, spec: SynthSpec) -> Path:
    """Whole image, not tiled: TIFF (strips), or PNG/JPEG by suffix."""
    path = Path(path)
    if spec.width * spec.height > 64 * 2**20:
        raise ValueError("write_plain_image is for small images only")
    img = render_region(spec, 0, 0, spec.width, spec.height)
    suffix = path.suffix.lower()
    if suffix == ".png":
        path.write_bytes(imagecodecs.png_encode(img))
    elif suffix in (".jpg", ".jpeg"):
        path.write_bytes(imagecodecs.jpeg8_encode(img, level=spec.jpeg_quality))
    else:
        kw = {}
        if spec.mpp is not None:
            kw = dict(resolution=(1e4 / spec.mpp, 1e4 / spec.mpp), resolutionunit="CENTIMETER")
        tifffile.imwrite(path, img, photometric="rgb", rowsperstrip=64, metadata=None, **kw)
        if spec.mpp is None:
            _drop_tags(path)
    return path


# --------------------------------------------------------------------------
# damage

def _level_page(tif: tifffile.TiffFile, level: int):
    return tif.series[0].levels[level].keyframe


def corrupt_tile(path, level: int = 0, index: int | None = None) -> int:
    """Overwrite one tile's bytes (a tissue tile when index is None) with
    garbage of the same length: the file still opens, decoding that tile fails.
    Returns the tile index (row-major)."""
    with tifffile.TiffFile(path) as tif:
        page = _level_page(tif, level)
        offsets, counts = page.dataoffsets, page.databytecounts
        if index is None:
            index = _tissue_tile(tif, page)
        offset, count = int(offsets[index]), int(counts[index])
    rng = np.random.default_rng(index)
    junk = bytearray(rng.integers(0, 256, count, dtype=np.uint8).tobytes())
    # an invalid first marker/header for every codec (JPEG SOI, zlib CMF,
    # zstd/webp magic, J2K SOC) so decoders fail instead of guessing
    junk[:4] = bytes(min(4, count))
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(junk)
    return index


def _tissue_tile(tif: tifffile.TiffFile, page) -> int:
    """Index of the most saturated (tissue-richest) tile, on a sparse grid."""
    n = len(page.dataoffsets)
    step = max(1, n // 400)
    best, best_i = -1.0, 0
    fh = tif.filehandle
    tables = page.jpegtables
    for i in range(0, n, step):
        fh.seek(page.dataoffsets[i])
        data = fh.read(page.databytecounts[i])
        a = page.decode(data, i, jpegtables=tables)[0]
        a = a.reshape(a.shape[-3:]).astype(np.int16)
        sat = float(((a.max(-1) - a.min(-1)) > 40).mean())
        if sat > best:
            best, best_i = sat, i
    return best_i


def truncate(path, fraction: float = 0.5) -> int:
    """Cut the file to `fraction` of its size; returns the new size."""
    size = os.path.getsize(path)
    new = int(size * fraction)
    with open(path, "r+b") as f:
        f.truncate(new)
    return new


# --------------------------------------------------------------------------
# mosaic of a real slide

def _mirror(i: np.ndarray, n: int) -> np.ndarray:
    i = np.mod(i, 2 * n)
    return np.where(i < n, i, 2 * n - 1 - i)


def mosaic_svs(path, source_svs, width: int, height: int, tile: int = 240,
               quality: int = 80) -> Path:
    """Large SVS whose level-0 pixels mirror-repeat the level 0 of a real
    slide (real-looking content for benchmarks); levels (1, 4, 16)."""
    with tifffile.TiffFile(source_svs) as tif:
        base = tif.series[0].levels[0].asarray()
        desc = tif.pages.first.description or ""
    base = base.reshape(base.shape[-3:])[..., :3]
    props = dict(kv.split(" = ", 1) for kv in desc.split("|")[1:] if " = " in kv)
    mpp = float(props["MPP"]) if "MPP" in props else None
    app_mag = props.get("AppMag", "20")
    bh, bw = base.shape[:2]

    def src(xs, ys):
        return base[np.ix_(_mirror(ys.astype(np.int64), bh), _mirror(xs.astype(np.int64), bw))]

    return _write_aperio(path, src, width, height, tile, (1, 4, 16), "jpeg", quality, mpp, app_mag)


# --------------------------------------------------------------------------
# demo and command line

def demo_slides(out_dir) -> list[Path]:
    """The built-in example: an Aperio SVS with a pen stroke and a
    CAMELYON16-style pyramidal TIFF."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    return [
        write_svs(out / "demo_aperio.svs", SynthSpec(width=6000, height=4000, seed=1, pen=True)),
        write_tiled_tiff(out / "demo_camelyon.tif", SynthSpec(width=4096, height=4096, seed=2)),
    ]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m histosynth", description=__doc__.splitlines()[0])
    ap.add_argument("out_dir")
    ap.add_argument("--kind", choices=("svs", "tiff"), default="svs")
    ap.add_argument("--width", type=int, default=SynthSpec.width)
    ap.add_argument("--height", type=int, default=SynthSpec.height)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-mpp", action="store_true")
    ap.add_argument("--pen", action="store_true")
    ap.add_argument("--no-tissue", action="store_true")
    ap.add_argument("--quality", type=int, default=SynthSpec.jpeg_quality)
    ap.add_argument("--compression", default="jpeg")
    ap.add_argument("--demo", action="store_true", help="write the built-in example slides instead")
    a = ap.parse_args(argv)
    if a.demo:
        for p in demo_slides(a.out_dir):
            print(p)
        return 0
    spec = SynthSpec(width=a.width, height=a.height, seed=a.seed, tissue=not a.no_tissue,
                     pen=a.pen, mpp=None if a.no_mpp else SynthSpec.mpp, jpeg_quality=a.quality)
    out = Path(a.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    name = f"synth_{a.width}x{a.height}_s{a.seed}_{a.compression}"
    if a.kind == "svs":
        p = write_svs(out / f"{name}.svs", spec, compression=a.compression)
    else:
        p = write_tiled_tiff(out / f"{name}.tif", spec, compression=a.compression)
    print(p)
    return 0


if __name__ == "__main__":
    sys.exit(main())
