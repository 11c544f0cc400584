"""The ``openslide`` reader: OpenSlide, for everything else it opens (NDPI, MRXS, DICOM, ...)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from engine.readers.dicom import DICOM_SUFFIX, dicom_files
from engine.readers.tiff_meta import TIFF_SUFFIXES
from engine.slide import Slide, SlideError, plausible_mpp, rgba_on_white


class OpenSlideSlide(Slide):
    backend = "openslide"
    suffixes = TIFF_SUFFIXES | {".ndpi", ".mrxs", ".scn", ".bif", ".vms", ".vmu", ".svslide", DICOM_SUFFIX}

    def __init__(self, path):
        try:
            self._osr = self._open(path)
        except Exception as e:
            raise SlideError(f"{path}: OpenSlide cannot open it ({e})") from e
        props = self._osr.properties
        mpp = None
        if "openslide.mpp-x" in props and "openslide.mpp-y" in props:
            mpp = plausible_mpp(float(props["openslide.mpp-x"]), float(props["openslide.mpp-y"]), "openslide.mpp")
        super().__init__(path, self._osr.level_dimensions, mpp)
        self.level_downsamples = tuple(self._osr.level_downsamples)

    @staticmethod
    def _open(path):
        import openslide

        path = Path(path)
        if path.is_dir():  # a DICOM series: OpenSlide finds the other instances beside the one named
            files = dicom_files(path)
            if not files:
                raise SlideError(f"{path}: a folder without .dcm files")
            path = files[0]
        return openslide.OpenSlide(str(path))

    def _read(self, x, y, level, w, h):
        try:
            img = self._osr.read_region((x, y), level, (w, h))
        except Exception as e:
            # An OpenSlide handle that failed once fails every later read: start a fresh one so
            # that one corrupt tile costs only the patches over it.
            self._osr = self._open(self.path)
            raise SlideError(f"{self.path}: OpenSlide failed reading {w}x{h} at ({x}, {y}) level {level} ({e})") from e
        return rgba_on_white(np.asarray(img))

    def close(self):
        self._osr.close()
