"""The native batch decode of JPEG-tiled TIFF levels (csrc/jpeg.cpp): which levels it reads, and the
libjpeg-turbo it uses, the one imagecodecs' wheel installs (the jpeg8 ABI), loaded at run time.

The tifffile + imagecodecs decode of one tile at a time stays the reference (`TiffSlide(native=False)`),
which tests compare with pixel for pixel; it also reads whatever this module declines.
"""
from __future__ import annotations

import functools
import importlib.util
import logging
import os
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

ENV_LIBRARY = "HISTOGEN_LIBJPEG"  # a libjpeg-turbo (jpeg8 ABI) to use instead of imagecodecs' copy
JCS_RGB = 2  # libjpeg's J_COLOR_SPACE for RGB: no YCbCr conversion
SCALES = (1, 2, 4, 8)  # libjpeg-turbo's DCT scaling: 1/2, 1/4 and 1/8 cost a fraction of a full decode


@dataclass(frozen=True)
class JpegLevel:
    """How the native decoder reads one pyramid level's tiles."""

    tables: bytes | None  # the TIFF's JPEGTables: the tiles are abbreviated streams without them
    colorspace: int  # J_COLOR_SPACE of the tile data, -1 = what the JPEG header implies
    scales: tuple[int, ...]  # the decode scales whose tiles stay whole numbers of pixels


def jpeg_level(page) -> JpegLevel | None:
    """The native decoder's settings for a tifffile page, or None where it leaves the page to tifffile:
    only 8-bit, 3-sample, interleaved, tiled JPEG in RGB or YCbCr. The colour space follows tifffile's
    own rule (`jpeg_decode_colorspace`): RGB tiles without a JFIF marker (Aperio's) are RGB, not YCbCr."""
    if (int(page.compression) != 7 or not page.is_tiled or page.bitspersample != 8 or page.samplesperpixel != 3
            or int(page.planarconfig) != 1 or page.extrasamples):
        return None
    photometric = int(page.photometric)
    if photometric == 2:
        colorspace = -1 if page.is_jfif else JCS_RGB
    elif photometric == 6:
        colorspace = -1
    else:
        return None
    scales = tuple(s for s in SCALES if page.tilewidth % s == 0 and page.tilelength % s == 0)
    return JpegLevel(page.jpegtables, colorspace, scales)


def library_path() -> Path | None:
    """imagecodecs' libjpeg-turbo (libjpeg-HASH.so.8.x beside its package), or $HISTOGEN_LIBJPEG."""
    if os.environ.get(ENV_LIBRARY):
        return Path(os.environ[ENV_LIBRARY])
    spec = importlib.util.find_spec("imagecodecs")
    if spec is None or not spec.submodule_search_locations:
        return None
    package = Path(next(iter(spec.submodule_search_locations)))
    found = (sorted(package.parent.glob("imagecodecs.libs/libjpeg-*.so.8*"))
             + sorted(package.glob(".dylibs/libjpeg.8*.dylib")))
    return found[0] if found else None


@functools.cache
def available() -> bool:
    """Whether the native decoder is ready (loads the library on the first call); where it is not,
    says why once, and JPEG tiles decode through tifffile."""
    from engine import _native

    path = library_path()
    if path is None:
        log.info("no libjpeg-turbo of imagecodecs found (set %s to one): JPEG tiles decode one at a time through "
                 "tifffile", ENV_LIBRARY)
        return False
    try:
        _native.jpeg_load(str(path))
    except RuntimeError as e:
        log.warning("%s: %s; JPEG tiles decode one at a time through tifffile", path, e)
        return False
    return True
