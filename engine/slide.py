"""A whole-slide image behind one small interface (`Slide`), which every reader in engine.readers
implements; `engine.readers.open_slide` picks the reader for a file.

All coordinates are level-0 (x, y) of the top-left corner; sizes are (width, height) at the level
read; pixels come back as RGB uint8 (h, w, 3), with areas outside the slide white.

The OpenSlide reader, and the tifffile reader for codecs other than JPEG, decode in the calling
thread (releasing the GIL): callers get parallel decode by reading batches from several threads. The
tifffile reader's JPEG levels decode a batch in one native call on all cores, one call at a time, so
that batches read from several threads never decode a shared tile twice.
"""
from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from engine.errors import UserError

log = logging.getLogger(__name__)

MPP_RANGE = (0.05, 20.0)  # µm/px; anything outside is a broken header, not a microscope


class SlideError(UserError):
    """A slide that cannot be opened or read; the message names the file and what to do."""


class TruncatedSlideError(SlideError):
    """The file ends before its own tiles do: no other reader can do better with it."""


@dataclass(frozen=True)
class Mpp:
    x: float
    y: float
    source: str  # where the value came from, recorded in the store


def plausible_mpp(x: float, y: float, source: str) -> Mpp | None:
    lo, hi = MPP_RANGE
    if lo <= x <= hi and lo <= y <= hi:
        return Mpp(float(x), float(y), source)
    log.warning("ignoring implausible MPP %.4g x %.4g from %s (outside %s-%s µm/px)", x, y, source, lo, hi)
    return None


class Slide(ABC):
    """What the tiler needs of a whole-slide image; subclasses implement `_read`."""

    backend: str = ""  # the reader's name, as --backend takes it
    suffixes: frozenset[str] = frozenset()  # the files it opens (engine.discover looks for all readers')

    def __init__(self, path: Path, level_dimensions, mpp: Mpp | None):
        self.path = Path(path)
        self.level_dimensions = tuple((int(w), int(h)) for w, h in level_dimensions)
        w0, h0 = self.level_dimensions[0]
        self.level_downsamples = tuple((w0 / w + h0 / h) / 2 for w, h in self.level_dimensions)
        self.mpp = mpp

    @property
    def dimensions(self) -> tuple[int, int]:
        return self.level_dimensions[0]

    @property
    def level_count(self) -> int:
        return len(self.level_dimensions)

    def best_level_for_downsample(self, downsample: float) -> int:
        """The most reduced level that is still at least as sharp as `downsample` asks."""
        fits = [(ds, level) for level, ds in enumerate(self.level_downsamples) if ds <= downsample * 1.01]
        return max(fits)[1] if fits else 0

    def read_region(self, location, level: int, size) -> np.ndarray:
        """RGB uint8 (h, w, 3) of `size` pixels at `level`, top-left at level-0 `location`."""
        x, y = (int(v) for v in location)
        w, h = (int(v) for v in size)
        if not 0 <= level < self.level_count:
            raise ValueError(f"{self.path.name}: level {level} does not exist (0..{self.level_count - 1})")
        if w <= 0 or h <= 0:
            raise ValueError(f"region size must be positive, got {w}x{h}")
        return self._read(x, y, level, w, h)

    def decode_scales(self, level: int) -> tuple[int, ...]:
        """The reductions `read_regions` can decode `level` at directly (JPEG's DCT scaling): 1 here."""
        return (1,)

    def check_scale(self, level: int, scale: int) -> None:
        """Refuse a decode scale the level does not offer (every read_regions calls this)."""
        if scale not in self.decode_scales(level):
            raise ValueError(f"{self.path.name}: the {self.backend} reader cannot decode level {level} at 1/{scale} "
                             f"(scales {self.decode_scales(level)})")

    def read_regions(self, locations, level: int, size, scale: int = 1) -> np.ndarray:
        """Many same-size regions as (N, h, w, 3); backends override this to batch their decode.
        `scale`: one of `decode_scales(level)`; `size` is counted at 1/scale of the level."""
        self.check_scale(level, scale)
        w, h = (int(v) for v in size)
        out = np.empty((len(locations), h, w, 3), np.uint8)
        for i, loc in enumerate(locations):
            out[i] = self.read_region(loc, level, size)
        return out

    @abstractmethod
    def _read(self, x: int, y: int, level: int, w: int, h: int) -> np.ndarray: ...

    def thumbnail(self, downsample: float, band_bytes: int = 64 << 20) -> np.ndarray:
        """The whole slide reduced `downsample` times (area average), read in bands of at most
        about `band_bytes` so that memory stays bounded whatever the slide size."""
        from PIL import Image

        level = self.best_level_for_downsample(downsample)
        lw, lh = self.level_dimensions[level]
        w0, h0 = self.dimensions
        tw, th = max(1, round(w0 / downsample)), max(1, round(h0 / downsample))
        fy = lh / th  # level rows per thumbnail row
        ds = self.level_downsamples[level]
        out = np.empty((th, tw, 3), np.uint8)
        band = max(1, int(band_bytes // (lw * 3 * (fy + 1))))
        for r0 in range(0, th, band):
            r1 = min(th, r0 + band)
            y0, y1 = r0 * fy, r1 * fy
            top, bottom = int(y0), min(lh, int(np.ceil(y1)))
            strip = self.read_region((0, round(top * ds)), level, (lw, bottom - top))
            img = Image.fromarray(strip).resize((tw, r1 - r0), Image.Resampling.BOX, box=(0, y0 - top, lw, y1 - top))
            out[r0:r1] = np.asarray(img)
        return out

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __repr__(self):
        w, h = self.dimensions
        return f"{type(self).__name__}({str(self.path)!r}, {w}x{h}, levels={self.level_count})"


def rgba_on_white(rgba: np.ndarray) -> np.ndarray:
    """Composite (non-premultiplied) RGBA over white: outside-slide areas are transparent."""
    rgb, a = rgba[..., :3].astype(np.uint16), rgba[..., 3:4].astype(np.uint16)
    if a.min() == 255:
        return np.ascontiguousarray(rgba[..., :3])
    return ((rgb * a + 255 * (255 - a) + 127) // 255).astype(np.uint8)


def to_rgb(a: np.ndarray) -> np.ndarray:
    if a.ndim == 2:
        a = a[..., None]
    if a.shape[-1] == 1:
        return np.repeat(a, 3, axis=-1)
    if a.shape[-1] == 4:
        return rgba_on_white(a)
    return a[..., :3]
