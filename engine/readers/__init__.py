"""The slide readers behind engine.slide's interface, one module each, and the choice among them:
`open_slide` picks the fastest reader that can read a file's compression and layout and falls back to
the next, saying why.

  tiff       ``tifffile``: tile-exact CPU decode with a shared cache of decoded tiles
  cucim      ``cucim``: GPU decode
  dicom      ``wsidicom``: DICOM WSI, a series folder or a single file
  dicom_frames ``pydicom``: DICOM WSI without per-frame positions (older converters), frames in TILED_FULL order,
               8-bit JPEG frames decoded by the native batch path (engine.jpeg_tiles), others by pydicom
  openslide  ``openslide``: everything else OpenSlide opens (NDPI, MRXS, ...)
  image      ``pil``: a plain PNG/JPEG as a one-level slide

A new reader is a module with a Slide subclass (its `backend` name and `suffixes`) and an entry in
READERS; its place in `choose_backend`'s order if `auto` should pick it.
"""
from __future__ import annotations

import logging
from pathlib import Path

from engine import runtime
from engine.readers.cucim import CuCIMSlide, reason_not_for_cucim
from engine.readers.dicom import DicomSlide, dicom_files
from engine.readers.dicom_frames import DicomFramesSlide
from engine.readers.image import ImageSlide
from engine.readers.openslide import OpenSlideSlide
from engine.readers.tiff import TiffSlide
from engine.slide import Slide, SlideError, TruncatedSlideError

log = logging.getLogger(__name__)

READERS: dict[str, type[Slide]] = {
    r.backend: r for r in (TiffSlide, CuCIMSlide, DicomSlide, OpenSlideSlide, DicomFramesSlide, ImageSlide)}
BACKENDS = ("auto", *READERS)  # what --backend takes
SLIDE_SUFFIXES = frozenset().union(*(r.suffixes for r in READERS.values()))  # what engine.discover looks for
# After the first choice fails: a DICOM series OpenSlide, then pydicom (frames without positions); a plain image none.
FALLBACKS = {ImageSlide: (), DicomSlide: (OpenSlideSlide, DicomFramesSlide)}


def choose_backend(path: Path) -> tuple[type[Slide], str]:
    """(reader, reason): the fastest reader that can read this file's compression and layout."""
    path = Path(path)
    if path.suffix.lower() in ImageSlide.suffixes:
        return ImageSlide, "plain image"
    if dicom_files(path):
        return DicomSlide, "DICOM WSI (wsidicom reads more transfer syntaxes than OpenSlide)"
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            not_cucim = reason_not_for_cucim(tif)
            if tif.is_ndpi or tif.is_philips or tif.is_scn:
                return OpenSlideSlide, "a vendor layout that OpenSlide knows"
    except Exception as e:
        return OpenSlideSlide, f"tifffile does not read it ({type(e).__name__})"
    if not_cucim is None and runtime.cuda_available():
        return CuCIMSlide, "GPU decode"
    return TiffSlide, f"{not_cucim or 'no CUDA device'}: tile-exact CPU decode with a shared tile cache"


def open_slide(path, backend: str = "auto") -> Slide:
    """Open a slide with `backend`, or with the best one for the file; `auto` falls back to the
    next backend if the first cannot open it, logging why."""
    path = Path(path)
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if path.is_dir():
        if not dicom_files(path):
            raise SlideError(f"{path}: a folder, and not a DICOM series (no .dcm files)",
                             "point at a slide file or a folder of one DICOM series")
    elif not path.is_file():
        raise SlideError(f"{path}: no such file")
    elif path.stat().st_size == 0:
        raise SlideError(f"{path}: the file is empty; copy it again")
    if backend != "auto":
        return READERS[backend](path)
    first, reason = choose_backend(path)
    order = [first] + [r for r in FALLBACKS.get(first, (TiffSlide, OpenSlideSlide)) if r is not first]
    errors = []
    for reader in order:
        try:
            slide = reader(path)
        except TruncatedSlideError:
            raise
        except SlideError as e:
            errors.append(str(e).removeprefix(f"{path}: "))
            continue
        log.info("%s: backend %s (%s)", path.name, reader.backend,
                 reason if reader is first else f"fallback: {errors[-1]}")
        return slide
    raise SlideError(f"{path}: not a slide any backend reads ({'; '.join(errors)}); "
                     "check that the file is a complete WSI")
