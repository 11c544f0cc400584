"""The ``pydicom`` reader: DICOM whole-slide images that wsidicom and OpenSlide refuse, as older
converters write them: VL Whole Slide Microscopy instances with a total pixel matrix but no ImageType,
no DimensionOrganizationType and no per-frame positions. The standard says frames without positions
are TILED_FULL: row by row across the total pixel matrix. Each instance of the series is a level.
Microns per pixel come from the pixel spacing where given, else from ImagedVolumeWidth over
TotalPixelMatrixColumns (recorded as such)."""
from __future__ import annotations

import io
import math
import threading
from pathlib import Path

import numpy as np

from engine.readers.dicom import DICOM_SUFFIX, dicom_files
from engine.slide import Mpp, Slide, SlideError, plausible_mpp, to_rgb

WSI_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.77.1.6"
UNCOMPRESSED = {"1.2.840.10008.1.2", "1.2.840.10008.1.2.1"}  # implicit and explicit VR little endian
JPEG = {"1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51", "1.2.840.10008.1.2.4.70"}  # baseline, extended, lossless


class _Level:
    """One instance: its frames in TILED_FULL order, read on demand (the file's offsets kept)."""

    def __init__(self, path: Path):
        import pydicom

        ds = pydicom.dcmread(path, defer_size="64 KB")
        if ds.get("SOPClassUID") != WSI_SOP_CLASS:
            raise SlideError(f"{path}: not a VL Whole Slide Microscopy image (SOP class {ds.get('SOPClassUID')})")
        missing = [k for k in ("TotalPixelMatrixColumns", "TotalPixelMatrixRows", "Rows", "Columns") if k not in ds]
        if missing:
            raise SlideError(f"{path}: no {', '.join(missing)}")
        if int(ds.get("SamplesPerPixel", 1)) != 3:
            raise SlideError(f"{path}: {ds.get('SamplesPerPixel')} samples per pixel; only RGB is read")
        self.syntax = str(ds.file_meta.TransferSyntaxUID)
        if self.syntax not in UNCOMPRESSED | JPEG:
            raise SlideError(f"{path}: transfer syntax {self.syntax} is not read by the pydicom reader")
        self.width, self.height = int(ds.TotalPixelMatrixColumns), int(ds.TotalPixelMatrixRows)
        self.tile_w, self.tile_h = int(ds.Columns), int(ds.Rows)
        self.across = math.ceil(self.width / self.tile_w)
        self.n_frames = int(ds.get("NumberOfFrames", 1))
        if self.n_frames < self.across * math.ceil(self.height / self.tile_h):
            raise SlideError(f"{path}: {self.n_frames} frames do not cover the {self.width}x{self.height} pixel matrix "
                             "in TILED_FULL order")
        self.mpp = _mpp(ds, self.width)
        self._ds, self._lock, self._frames = ds, threading.Lock(), None

    def frame(self, i: int) -> np.ndarray:
        """RGB uint8 (tile_h, tile_w, 3) of frame i."""
        with self._lock:  # pydicom's deferred read seeks the file
            if self._frames is None:
                self._frames = self._split(self._ds.PixelData)
            data = self._frames[i]
        if self.syntax in UNCOMPRESSED:
            return np.frombuffer(data, np.uint8).reshape(self.tile_h, self.tile_w, 3)
        from PIL import Image

        with Image.open(io.BytesIO(data)) as im:  # YBR JPEG frames come back as RGB
            return to_rgb(np.asarray(im.convert("RGB")))

    def _split(self, pixel_data: bytes) -> list[bytes]:
        if self.syntax in UNCOMPRESSED:
            size = self.tile_w * self.tile_h * 3
            return [pixel_data[k * size : (k + 1) * size] for k in range(self.n_frames)]
        from pydicom.encaps import generate_frames

        return list(generate_frames(pixel_data, number_of_frames=self.n_frames))


def _mpp(ds, width: int) -> Mpp | None:
    """From the pixel spacing (mm) where the file gives one, else ImagedVolumeWidth (mm) over the columns."""
    for group in ds.get("SharedFunctionalGroupsSequence") or ():
        for measures in group.get("PixelMeasuresSequence") or ():
            if "PixelSpacing" in measures:
                dy, dx = (float(v) * 1000 for v in measures.PixelSpacing)
                return plausible_mpp(dx, dy, "dicom.PixelSpacing")
    if "PixelSpacing" in ds:
        dy, dx = (float(v) * 1000 for v in ds.PixelSpacing)
        return plausible_mpp(dx, dy, "dicom.PixelSpacing")
    if ds.get("ImagedVolumeWidth") and ds.get("ImagedVolumeHeight"):
        x = float(ds.ImagedVolumeWidth) * 1000 / width
        y = float(ds.ImagedVolumeHeight) * 1000 / int(ds.TotalPixelMatrixRows)
        return plausible_mpp(x, y, "dicom.ImagedVolumeWidth/TotalPixelMatrixColumns")
    return None


class DicomFramesSlide(Slide):
    """pydicom: the frames of a single-file DICOM WSI (or of each instance of a series) in TILED_FULL
    order; where wsidicom and OpenSlide refuse a file for lack of per-frame positions."""

    backend = "pydicom"
    suffixes = frozenset({DICOM_SUFFIX})

    def __init__(self, path):
        files = dicom_files(path)
        if not files:
            raise SlideError(f"{path}: no DICOM file there")
        try:
            levels = [_Level(f) for f in files]
        except SlideError:
            raise
        except Exception as e:
            raise SlideError(f"{path}: pydicom cannot read it ({type(e).__name__}: {e})") from e
        self._levels = sorted(levels, key=lambda lv: -lv.width)
        base = self._levels[0]
        super().__init__(path, [(lv.width, lv.height) for lv in self._levels], base.mpp)

    def _read(self, x, y, level, w, h):
        lv = self._levels[level]
        ds = self.level_downsamples[level]
        lx, ly = math.floor(x / ds), math.floor(y / ds)  # as OpenSlide: floor, also left of 0
        out = np.full((h, w, 3), 255, np.uint8)  # outside the slide is white
        x0, y0, x1, y1 = max(lx, 0), max(ly, 0), min(lx + w, lv.width), min(ly + h, lv.height)
        for ty in range(y0 // lv.tile_h, (y1 - 1) // lv.tile_h + 1 if y1 > y0 else 0):
            for tx in range(x0 // lv.tile_w, (x1 - 1) // lv.tile_w + 1 if x1 > x0 else 0):
                try:
                    tile = lv.frame(ty * lv.across + tx)
                except Exception as e:
                    raise SlideError(f"{self.path}: frame {ty * lv.across + tx} of level {level} does not decode "
                                     f"({type(e).__name__}: {e})") from e
                fx, fy = tx * lv.tile_w, ty * lv.tile_h
                ax, ay = max(x0, fx), max(y0, fy)
                bx, by = min(x1, fx + lv.tile_w), min(y1, fy + lv.tile_h)
                out[ay - ly : by - ly, ax - lx : bx - lx] = tile[ay - fy : by - fy, ax - fx : bx - fx]
        return out
