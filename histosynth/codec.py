"""Tile codecs for the TIFF writers: how a tile is compressed, and the tags tifffile needs for it.

JPEG tiles are stored as libtiff and Aperio store them: shared JPEGTables plus abbreviated streams.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import imagecodecs
import numpy as np


def _jpeg_segments(stream: bytes) -> Iterator[tuple[int, bytes]]:
    """(marker, whole segment) pairs up to and including SOS + scan data."""
    i = 2
    while i < len(stream):
        marker = stream[i + 1]
        if marker == 0xDA:  # SOS: the rest is entropy-coded data and EOI
            yield marker, stream[i:]
            return
        n = struct.unpack(">H", stream[i + 2:i + 4])[0]
        yield marker, stream[i:i + 2 + n]
        i += 2 + n


def _split_jpeg(stream: bytes, aperio_ids: bool) -> tuple[bytes, bytes]:
    """Split a JPEG into (JPEGTables, abbreviated tile stream), as libtiff and
    Aperio store them; drop APPn markers. With aperio_ids, rename the RGB
    components 'R','G','B' -> 0,1,2 like Aperio, whose streams carry no hint
    of being RGB: readers must honour PhotometricInterpretation=RGB."""
    tables, body = [b"\xff\xd8"], [b"\xff\xd8"]
    for marker, seg in _jpeg_segments(stream):
        if marker in (0xDB, 0xC4):  # DQT, DHT
            tables.append(seg)
        elif 0xE0 <= marker <= 0xEF:  # APPn (JFIF, Adobe)
            continue
        else:
            if aperio_ids and marker == 0xC0:
                seg = bytearray(seg)
                for c in range(seg[9]):
                    seg[10 + 3 * c] = c
                seg = bytes(seg)
            elif aperio_ids and marker == 0xDA:
                seg = bytearray(seg)
                for c in range(seg[4]):
                    seg[5 + 2 * c] = c
                seg = bytes(seg)
            body.append(seg)
    tables.append(b"\xff\xd9")
    return b"".join(tables), b"".join(body)


@dataclass(frozen=True)
class _Codec:
    tag: int | str  # tifffile compression
    encode: Callable[[np.ndarray], bytes]
    kwargs: dict  # extra TiffWriter.write arguments (photometric, tables...)
    label: str  # for the Aperio description


def _codec(compression: str, quality: int, aperio: bool) -> _Codec:
    c = compression.lower()
    if c == "jpeg":
        if aperio:
            # Aperio: photometric RGB, 4:4:4 JPEG without colour transform
            args = dict(colorspace="rgb", outcolorspace="rgb")
            kw = dict(photometric="rgb", subsampling=(1, 1),
                      compressionargs={"outcolorspace": "rgb"})
        else:
            # libtiff/vips style: YCbCr 4:2:0
            args = dict(colorspace="rgb", outcolorspace="ycbcr", subsampling="420")
            kw = dict(photometric="rgb", subsampling=(2, 2))
        probe = imagecodecs.jpeg8_encode(np.zeros((16, 16, 3), np.uint8), level=quality, **args)
        tables, _ = _split_jpeg(probe, aperio)

        def enc(a: np.ndarray) -> bytes:
            t, body = _split_jpeg(imagecodecs.jpeg8_encode(a, level=quality, **args), aperio)
            if t != tables:  # cannot happen with fixed quality and no optimize
                raise RuntimeError("JPEG tables differ between tiles")
            return body

        return _Codec("jpeg", enc, dict(kw, jpegtables=tables), f"JPEG/RGB Q={quality}")
    if c == "jpeg2000":
        # APERIO_JP2000_RGB: raw J2K codestream, RGB (MCT inside the codestream)
        psnr = 30.0 + 0.2 * quality

        def enc(a: np.ndarray) -> bytes:
            return imagecodecs.jpeg2k_encode(a, level=psnr, codecformat="J2K")

        return _Codec(33005, enc, dict(photometric="rgb"), f"J2K/KDU Q={quality}")
    simple = {
        "lzw": (5, lambda a: imagecodecs.lzw_encode(a)),
        "deflate": (8, lambda a: imagecodecs.zlib_encode(a, level=6)),
        "zstd": (50000, lambda a: imagecodecs.zstd_encode(a, level=5)),
        "webp": (50001, lambda a: imagecodecs.webp_encode(a, level=quality, lossless=False)),
    }
    if c not in simple:
        raise ValueError(f"unsupported compression {compression!r}")
    tag, enc = simple[c]
    return _Codec(tag, enc, dict(photometric="rgb"), c.upper())
