"""The ``wsidicom`` reader: DICOM whole-slide images, a folder holding one series (an instance per
pyramid level, as Imaging Data Commons serves them) or a single file. It reads more of the DICOM files
we made than OpenSlide (JPEG-LS frames too), so it comes first, with OpenSlide as its fallback."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from engine.slide import Slide, SlideError, plausible_mpp, to_rgb

DICOM_SUFFIX = ".dcm"


def is_dicom_file(path: Path) -> bool:
    """Whether the file carries DICOM's 'DICM' mark after its 128-byte preamble."""
    try:
        with open(path, "rb") as f:
            f.seek(128)
            return f.read(4) == b"DICM"
    except OSError:
        return False


def dicom_files(path: Path) -> list[Path]:
    """The DICOM instances of a slide: the .dcm files of a folder (one series, one slide), or the
    file itself; empty where `path` is no DICOM slide."""
    path = Path(path)
    if path.is_dir():
        return sorted(p for p in path.iterdir() if p.suffix.lower() == DICOM_SUFFIX and p.is_file()
                      and not p.name.startswith("."))
    return [path] if path.is_file() and is_dicom_file(path) else []


class DicomSlide(Slide):
    """wsidicom: a DICOM WSI series (a folder of instances) or a single-file DICOM WSI; MPP from the
    base level's pixel spacing."""

    backend = "wsidicom"
    suffixes = frozenset({DICOM_SUFFIX})

    def __init__(self, path):
        import wsidicom

        files = dicom_files(path)
        if not files:
            raise SlideError(f"{path}: no DICOM file there")
        try:
            self._wsi = wsidicom.WsiDicom.open(files)
            levels = list(self._wsi.levels)
            mpp = levels[0].mpp
        except Exception as e:
            raise SlideError(f"{path}: wsidicom cannot open it ({type(e).__name__}: {e})") from e
        # wsidicom names levels by log2 of their downsample. Its reads are thread-safe (a lock per
        # file around the seek and read, locked frame caches), so threads decode in parallel.
        self._levels = [lv.level for lv in levels]
        super().__init__(path, [(lv.size.width, lv.size.height) for lv in levels],
                         plausible_mpp(float(mpp.width), float(mpp.height), "dicom.PixelSpacing"))

    def _read(self, x, y, level, w, h):
        ds = self.level_downsamples[level]
        lx, ly = math.floor(x / ds), math.floor(y / ds)  # as OpenSlide: floor, also left of 0
        lw, lh = self.level_dimensions[level]
        out = np.full((h, w, 3), 255, np.uint8)  # outside the slide is white; wsidicom refuses it
        x0, y0, x1, y1 = max(lx, 0), max(ly, 0), min(lx + w, lw), min(ly + h, lh)
        if x1 <= x0 or y1 <= y0:
            return out
        try:
            region = self._wsi.read_region((x0, y0), self._levels[level], (x1 - x0, y1 - y0), as_array=True)
        except Exception as e:
            raise SlideError(f"{self.path}: wsidicom failed reading {w}x{h} at ({x}, {y}) level {level} ({e})") from e
        out[y0 - ly : y1 - ly, x0 - lx : x1 - lx] = to_rgb(np.asarray(region))
        return out

    def close(self):
        self._wsi.close()
