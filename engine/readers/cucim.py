"""The ``cucim`` reader: cuCIM, decoding on the GPU when CUDA is there. It cannot read JPEG 2000, zstd
or webp tiles, and sees only level 0 of SubIFD pyramids (`reason_not_for_cucim`)."""
from __future__ import annotations

import math
import os

import numpy as np

from engine import runtime
from engine.readers.tiff_meta import TIFF_SUFFIXES, tiff_levels, tiff_mpp
from engine.slide import Slide, SlideError

# TIFF compressions cuCIM decodes: none, LZW, JPEG (old and new), deflate (two codes).
CUCIM_COMPRESSIONS = {1, 5, 7, 8, 32946}


def reason_not_for_cucim(tif) -> str | None:
    """Why cuCIM cannot read this TIFF, or None where it can."""
    levels = tiff_levels(tif)
    for page in levels:
        if int(page.compression) not in CUCIM_COMPRESSIONS:
            return f"its {page.compression.name} tiles are outside what cuCIM decodes on the GPU"
    if tif.pages[0].subifds:
        return "its pyramid lives in SubIFDs, of which cuCIM sees only level 0"
    if not levels[0].is_tiled:
        return "it is not tiled"
    return None


class CuCIMSlide(Slide):
    backend = "cucim"
    suffixes = TIFF_SUFFIXES

    def __init__(self, path, device: str | None = None, workers: int | None = None):
        import tifffile
        from cucim import CuImage

        try:
            self._img = CuImage(str(path))
            with tifffile.TiffFile(path) as tif:
                mpp = tiff_mpp(tif)
        except Exception as e:
            raise SlideError(f"{path}: cuCIM cannot open it ({e})") from e
        self.device = device or ("cuda" if runtime.cuda_available() else "cpu")
        self._workers = workers or os.cpu_count() or 1
        res = self._img.resolutions
        super().__init__(path, res["level_dimensions"], mpp)
        self.level_downsamples = tuple(float(d) for d in res["level_downsamples"])

    def _host(self, region) -> np.ndarray:
        if self.device == "cuda":
            import cupy

            return cupy.asnumpy(cupy.asarray(region))
        return np.asarray(region)

    def _read(self, x, y, level, w, h):
        return self.read_regions([(x, y)], level, (w, h))[0]

    def read_regions(self, locations, level, size, scale: int = 1):
        self.check_scale(level, scale)
        w, h = (int(v) for v in size)
        locs = [(int(x), int(y)) for x, y in locations]
        try:
            if len(locs) == 1:
                batch = self._host(self._img.read_region(locs[0], (w, h), level, device=self.device))[None]
            else:
                out = self._img.read_region(
                    locs, (w, h), level, num_workers=self._workers, batch_size=len(locs), device=self.device
                )
                batch = np.concatenate([self._host(b).reshape(-1, h, w, 3) for b in out])
        except Exception as e:
            raise SlideError(f"{self.path}: cuCIM failed reading {len(locs)} region(s) at level {level} ({e})") from e
        batch = np.ascontiguousarray(batch[..., :3])
        # cuCIM fills outside the slide with black; the other readers (and the tiler) use white.
        lw, lh = self.level_dimensions[level]
        ds = self.level_downsamples[level]
        for k, (x, y) in enumerate(locs):
            lx, ly = math.floor(x / ds), math.floor(y / ds)
            batch[k, : max(0, -ly)] = 255
            batch[k, max(0, lh - ly) :] = 255
            batch[k, :, : max(0, -lx)] = 255
            batch[k, :, max(0, lw - lx) :] = 255
        return batch

    def close(self):
        self._img.close()
