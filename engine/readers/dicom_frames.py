"""The ``pydicom`` reader: DICOM whole-slide images that wsidicom and OpenSlide refuse, as older
converters write them: VL Whole Slide Microscopy instances with a total pixel matrix but no ImageType,
no DimensionOrganizationType and no per-frame positions. The standard says frames without positions
are TILED_FULL: row by row across the total pixel matrix. Each instance of the series is a level.
Microns per pixel come from the pixel spacing where given, else from ImagedVolumeWidth over
TotalPixelMatrixColumns (recorded as such).

pydicom reads the header; the frames are found once in the file (the extended or basic offset table,
else the fragments themselves) and a read takes only the frames it covers. 8-bit JPEG frames (baseline,
extended, lossless) decode in one native call per batch (engine.jpeg_tiles, as the TIFF reader's JPEG
tiles), lossy ones also DCT-scaled to 1/2, 1/4 or 1/8; without that library through Pillow, one at a
time. Every other transfer syntax decodes through pydicom's own decoders where one is installed
(uncompressed, RLE, JPEG 2000 with Pillow's OpenJPEG, ...). The log says which, once per file."""
from __future__ import annotations

import io
import logging
import math
import os
import threading
from pathlib import Path

import numpy as np

from engine.readers.dicom import DICOM_SUFFIX, dicom_files
from engine.readers.tile_cache import TileCache
from engine.readers.tile_grid import assemble, tiles_needed
from engine.slide import Mpp, Slide, SlideError, TruncatedSlideError, plausible_mpp, to_rgb

log = logging.getLogger(__name__)

WSI_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.77.1.6"
# ISO 10918-1 JPEG at 8 bits: libjpeg decodes all four (12-bit extended frames are refused at 8 bits stored).
JPEG_LOSSY = {"1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51"}  # baseline, extended
JPEG_LOSSLESS = {"1.2.840.10008.1.2.4.57", "1.2.840.10008.1.2.4.70"}  # process 14, and its first-order prediction
JPEG = JPEG_LOSSY | JPEG_LOSSLESS
NATIVE, PILLOW, PYDICOM = "native", "pillow", "pydicom"  # the three ways a level's frames decode
SCALES = (1, 2, 4, 8)


def _syntax_name(uid) -> str:
    return f"{uid.name} [{uid}]" if uid.name != str(uid) else str(uid)


class _Level:
    """One instance: where its frames lie in the file (TILED_FULL order), and how they decode."""

    def __init__(self, path: Path, native: bool):
        import pydicom

        with open(path, "rb") as f:
            ds = pydicom.dcmread(f, stop_before_pixels=True)  # `f` is left at the pixel data's tag
            self._check(ds, path)
            self.path, self.syntax = Path(path), ds.file_meta.TransferSyntaxUID
            self.decoder, why = self._choose_decoder(native)
            start, length = _pixel_data(f, self.syntax, path)
            self.frames = (_encapsulated_frames(f, start, int(ds.get("NumberOfFrames", 1)), ds, path)
                           if self.syntax.is_encapsulated else [])
        self.width, self.height = int(ds.TotalPixelMatrixColumns), int(ds.TotalPixelMatrixRows)
        self.tile_w, self.tile_h = int(ds.Columns), int(ds.Rows)
        self.across = math.ceil(self.width / self.tile_w)
        self.n_frames = int(ds.get("NumberOfFrames", 1))
        needed = self.across * math.ceil(self.height / self.tile_h)
        if self.n_frames < needed:
            raise SlideError(f"{path}: {self.n_frames} frames do not cover the {self.width}x{self.height} pixel matrix "
                             "in TILED_FULL order")
        if not self.syntax.is_encapsulated:
            frame = self.tile_w * self.tile_h * 3
            self.frames = [((start + k * frame, frame),) for k in range(min(self.n_frames, length // frame))]
        size = os.path.getsize(path)
        end = max((o + n for frame in self.frames[:needed] for o, n in frame), default=start)
        if end > size or len(self.frames) < needed and end + 8 > size:  # no room left for the delimiter either
            raise TruncatedSlideError(f"{path}: the file is cut short ({size} bytes, its {needed} frames need more); "
                                      "copy it again")
        if len(self.frames) < needed:
            raise SlideError(f"{path}: its pixel data holds {len(self.frames)} frames, not the {needed} that cover "
                             f"the {self.width}x{self.height} pixel matrix")
        self.mpp = _mpp(ds, self.width)
        self.scales = (tuple(s for s in SCALES if self.tile_w % s == 0 and self.tile_h % s == 0)
                       if self.decoder == NATIVE and str(self.syntax) in JPEG_LOSSY else (1,))
        self._opts = {"rows": self.tile_h, "columns": self.tile_w, "samples_per_pixel": 3, "bits_allocated": 8,
                      "bits_stored": 8, "pixel_representation": 0, "number_of_frames": 1,
                      "photometric_interpretation": str(ds.get("PhotometricInterpretation", "RGB")),
                      "planar_configuration": int(ds.get("PlanarConfiguration", 0)), "pixel_keyword": "PixelData"}
        log.info("%s: %d frames in %s, decoded by %s", self.path.name, self.n_frames, _syntax_name(self.syntax), why)

    @staticmethod
    def _check(ds, path) -> None:
        if ds.get("SOPClassUID") != WSI_SOP_CLASS:
            raise SlideError(f"{path}: not a VL Whole Slide Microscopy image (SOP class {ds.get('SOPClassUID')})")
        missing = [k for k in ("TotalPixelMatrixColumns", "TotalPixelMatrixRows", "Rows", "Columns") if k not in ds]
        if missing:
            raise SlideError(f"{path}: no {', '.join(missing)}")
        if int(ds.get("SamplesPerPixel", 1)) != 3:
            raise SlideError(f"{path}: {ds.get('SamplesPerPixel')} samples per pixel; only RGB is read")
        if int(ds.get("BitsAllocated", 8)) != 8 or int(ds.get("BitsStored", 8)) != 8:
            raise SlideError(f"{path}: {ds.get('BitsStored')}-bit samples; only 8-bit RGB is read")

    def _choose_decoder(self, native: bool) -> tuple[str, str]:
        """(NATIVE, PILLOW or PYDICOM, the words for the log); SlideError where nothing here decodes it."""
        syntax = str(self.syntax)
        if syntax in JPEG:
            from engine import jpeg_tiles

            if native and jpeg_tiles.available():
                return NATIVE, "the native batch JPEG path (libjpeg-turbo, a batch of frames per call)"
            return PILLOW, ("Pillow one at a time (" + ("native path off" if not native else
                                                         "the native batch JPEG path is not available") + ")")
        if self.syntax.is_deflated:
            raise SlideError(f"{self.path}: transfer syntax {_syntax_name(self.syntax)} (the whole dataset deflated) "
                             "is not read by the pydicom reader")
        from pydicom.pixels import get_decoder

        try:
            decoder = get_decoder(self.syntax)
        except NotImplementedError:
            raise SlideError(f"{self.path}: pydicom has no decoder for transfer syntax "
                             f"{_syntax_name(self.syntax)}") from None
        if not decoder.is_available:
            need = "; ".join(decoder.missing_dependencies) or "a plugin"
            raise SlideError(f"{self.path}: pydicom cannot decode transfer syntax {_syntax_name(self.syntax)} "
                             f"here (install one of: {need})")
        how = "uncompressed" if not self.syntax.is_encapsulated else ", ".join(decoder.available_plugins)
        return PYDICOM, f"pydicom one at a time ({how})"

    def frame_bytes(self, fd: int, index: int) -> bytes:
        """The stored bytes of frame `index` (its fragments joined)."""
        parts = [os.pread(fd, n, o) for o, n in self.frames[index]]
        if not parts:
            raise SlideError(f"{self.path}: frame {index} has no fragment in the pixel data (a wrong offset table)")
        if any(len(p) != n for p, (_, n) in zip(parts, self.frames[index])):
            raise SlideError(f"{self.path}: frame {index} is cut short; copy the file again")
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def decode(self, data: bytes) -> np.ndarray:
        """One frame (tile_h, tile_w, 3) by Pillow or pydicom (the native path decodes in batches)."""
        if self.decoder == PILLOW:
            from PIL import Image

            with Image.open(io.BytesIO(data)) as im:  # the JPEG's own markers say YCbCr or RGB, as libjpeg's
                tile = to_rgb(np.asarray(im.convert("RGB")))
        else:
            from pydicom.encaps import encapsulate
            from pydicom.pixels import get_decoder

            src = encapsulate([data]) if self.syntax.is_encapsulated else data
            tile, _ = get_decoder(self.syntax).as_array(src, **self._opts)  # YBR to RGB as pydicom does
        if tile.shape != (self.tile_h, self.tile_w, 3) or tile.dtype != np.uint8:
            raise ValueError(f"decodes to {tile.shape} {tile.dtype}, not the frame's {self.tile_h}x{self.tile_w}x3")
        return tile


def _pixel_data(f, syntax, path) -> tuple[int, int]:
    """(file offset of its value, its length) of the Pixel Data element whose tag `f` is at."""
    import struct

    at = f.tell()
    head = f.read(12)
    endian = "<" if syntax.is_little_endian else ">"
    if len(head) < 8 or struct.unpack(f"{endian}HH", head[:4]) != (0x7FE0, 0x0010):
        raise SlideError(f"{path}: no PixelData")
    if syntax.is_implicit_VR:
        return at + 8, struct.unpack(f"{endian}L", head[4:8])[0]
    return at + 12, struct.unpack(f"{endian}L", head[8:12])[0]  # OB/OW: 2 reserved bytes, a 4-byte length


def _encapsulated_frames(f, start: int, n_frames: int, ds, path) -> list[tuple[tuple[int, int], ...]]:
    """Each frame's fragments as (file offset, length): from the extended offset table, else the basic
    one, else one fragment a frame, else frames ending at a JPEG EOI (as pydicom's generate_frames)."""
    from pydicom.encaps import parse_basic_offsets, parse_fragments

    f.seek(start)
    try:
        basic = parse_basic_offsets(f)
    except Exception as e:
        raise SlideError(f"{path}: its encapsulated pixel data does not parse ({e})") from e
    first = f.tell()  # the item tag of the first fragment: the tables count from here
    if ds.get("ExtendedOffsetTable") is not None and ds.get("ExtendedOffsetTableLengths") is not None:
        offsets = np.frombuffer(ds.ExtendedOffsetTable, "<u8")
        lengths = np.frombuffer(ds.ExtendedOffsetTableLengths, "<u8")
        return [((first + int(o) + 8, int(n)),) for o, n in zip(offsets, lengths)]
    try:
        count, starts = parse_fragments(f)
    except Exception as e:
        raise SlideError(f"{path}: its encapsulated pixel data does not parse ({e})") from e
    if not count:
        return []
    f.seek(starts[-1] + 4)
    last = int.from_bytes(f.read(4).ljust(4, b"\0"), "little")
    fragments = [(s + 8, e - s - 8) for s, e in zip(starts, starts[1:])] + [(starts[-1] + 8, last)]
    if basic:
        frames: list[list[tuple[int, int]]] = [[] for _ in basic]
        k = 0
        for (s, n), tag in zip(fragments, starts):
            while k + 1 < len(basic) and tag - first >= basic[k + 1]:
                k += 1
            frames[k].append((s, n))
        return [tuple(fr) for fr in frames]
    if count == n_frames:
        return [(fr,) for fr in fragments]
    if n_frames == 1:
        return [tuple(fragments)]
    if count < n_frames:
        raise SlideError(f"{path}: {count} fragments hold fewer than its {n_frames} frames")
    frames, current = [], []
    for s, n in fragments:  # no offset table, several fragments a frame: a frame ends where a fragment ends at EOI
        current.append((s, n))
        f.seek(s + max(n - 10, 0))
        if b"\xff\xd9" in f.read(min(n, 10)):
            frames.append(tuple(current))
            current = []
    return frames


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
    order; where wsidicom and OpenSlide refuse a file for lack of per-frame positions. A read takes
    only the frames it covers, decodes each once per batch and keeps decoded frames in a bounded LRU
    cache; 8-bit JPEG frames decode in one native call per batch (`native=False`: Pillow, one at a
    time, the reference the tests compare with)."""

    backend = "pydicom"
    suffixes = frozenset({DICOM_SUFFIX})

    def __init__(self, path, native: bool = True, threads: int | None = None, cache_bytes: int | None = None):
        """`threads`: decode threads of a native call (None: one per core). `cache_bytes`: the decoded
        frame cache's cap; None: four rows of frames across level 0, at most 256 MiB (as the TIFF reader)."""
        files = dicom_files(path)
        if not files:
            raise SlideError(f"{path}: no DICOM file there")
        try:
            levels = [_Level(f, native) for f in files]
        except SlideError:
            raise
        except Exception as e:
            raise SlideError(f"{path}: pydicom cannot read it ({type(e).__name__}: {e})") from e
        self._levels = sorted(levels, key=lambda lv: -lv.width)
        base = self._levels[0]
        self._fds = [os.open(lv.path, os.O_RDONLY) for lv in self._levels]
        self._threads = threads or os.cpu_count() or 1
        self._decoding = threading.Lock()  # batches take turns: the next finds the frames they share cached
        self._cache = TileCache(min(256 << 20, 4 * base.across * base.tile_w * base.tile_h * 3)
                                if cache_bytes is None else cache_bytes)
        super().__init__(path, [(lv.width, lv.height) for lv in self._levels], base.mpp)

    def decode_scales(self, level: int) -> tuple[int, ...]:
        return self._levels[level].scales

    def decoder(self, level: int) -> str:
        """How the level's frames decode: 'native', 'pillow' or 'pydicom'."""
        return self._levels[level].decoder

    def _read(self, x, y, level, w, h):
        return self.read_regions([(x, y)], level, (w, h))[0]

    def read_regions(self, locations, level, size, scale: int = 1):
        """As Slide.read_regions; `scale` (one of `decode_scales(level)`) reads the level DCT-scaled
        to 1/scale, `size` counted at that scale."""
        self.check_scale(level, scale)
        lv = self._levels[level]
        w, h = (int(v) for v in size)
        ds = self.level_downsamples[level] * scale
        regions = [(math.floor(int(x) / ds), math.floor(int(y) / ds)) for x, y in locations]  # as OpenSlide
        tw, th = lv.tile_w // scale, lv.tile_h // scale
        lw, lh = -(-lv.width // scale), -(-lv.height // scale)
        needed = tiles_needed(regions, w, h, tw, th, lv.across, lw, lh)
        out = np.empty((len(regions), h, w, 3), np.uint8)
        with self._decoding:
            tiles, data = [], []
            for i in needed:
                tile = self._cache.get((level, scale, i))
                data.append(None if tile is not None else lv.frame_bytes(self._fds[level], i))
                tiles.append(tile)
            if lv.decoder == NATIVE:
                from engine import _native

                tiles = [t if t is not None else np.empty((th, tw, 3), np.uint8) for t in tiles]
                # No more threads than frames to decode: an idle OpenMP thread spins, and on a busy machine
                # (a 2-core machine shared with a training run) that made one-region reads slower than Pillow.
                threads = max(1, min(self._threads, sum(d is not None for d in data)))
                failed = _native.jpeg_decode_assemble(tiles, data, None, -1, scale, np.asarray(needed, np.int64),
                                                      lv.across, np.asarray(regions, np.int64).reshape(-1, 2),
                                                      lw, lh, out, threads)
            else:
                failed = []
                for k, (t, d) in enumerate(zip(tiles, data)):
                    if t is None:
                        try:
                            tiles[k] = lv.decode(d)
                        except Exception as e:
                            failed.append((k, f"{type(e).__name__}: {e}"))
                            break
                if not failed:
                    assemble(dict(zip(needed, tiles)), regions, out, tw, th, lv.across, lw, lh)
            bad = {k for k, _ in failed}
            self._cache.put(((level, scale, i), t) for k, (i, t, d) in enumerate(zip(needed, tiles, data))
                           if d is not None and t is not None and k not in bad)
        if failed:
            k, why = failed[0]
            raise SlideError(f"{self.path}: frame {needed[k]} of level {level} does not decode ({why})")
        return out

    def close(self):
        for fd in self._fds:
            os.close(fd)
        self._fds = []

