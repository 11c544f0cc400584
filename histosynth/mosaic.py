"""Large slides with real-looking content: a real slide's level 0, mirror-repeated."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import tifffile

from histosynth.tiff import _write_aperio


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
