"""Hash-based value noise, evaluated separably on a grid of global coordinates.

Each value is a pure function of its own coordinates, whatever window it is evaluated in. Only
elementwise IEEE arithmetic on per-pixel data (no BLAS, no transcendentals) keeps that exact.
"""

from __future__ import annotations

import numpy as np

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
