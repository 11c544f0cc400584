"""Damaged slides for the error paths: one undecodable tile, a truncated file."""

from __future__ import annotations

import os

import numpy as np
import tifffile


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
