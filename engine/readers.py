"""The slide readers behind engine.slide's interface, and `open_slide`, which picks the fastest one
that can read a file's compression and layout and falls back to the next, saying why:

- ``tifffile``: tifffile + imagecodecs, reading only the tiles a request covers and keeping decoded
  tiles in a bounded LRU cache, so neighbouring patches that share source tiles decode them once.
  Reads tiled and stripped TIFF/SVS in every codec imagecodecs has (JPEG, JPEG 2000, LZW, deflate,
  zstd, webp); on a CPU this is the fastest reader we measured (benchmarks/RESULTS.md).
- ``cucim``: cuCIM, decoding on the GPU when CUDA is there. It cannot read JPEG 2000, zstd or webp
  tiles, and sees only level 0 of SubIFD pyramids.
- ``wsidicom``: DICOM whole-slide images, a folder holding one series (an instance per pyramid
  level, as Imaging Data Commons serves them) or a single file. It reads more of the DICOM files we
  made than OpenSlide (JPEG-LS frames too), so it comes first, with OpenSlide as its fallback.
- ``openslide``: OpenSlide, for everything else it opens (NDPI, MRXS, DICOM, ...).
- ``pil``: a plain PNG/JPEG image as a single-level slide.
"""
from __future__ import annotations

import logging
import math
import os
import re
import threading
from collections import OrderedDict
from pathlib import Path

import numpy as np

from engine import runtime
from engine.slide import Mpp, Slide, SlideError, TruncatedSlideError, plausible_mpp, rgba_on_white, to_rgb

log = logging.getLogger(__name__)
# tifffile logs damaged files at ERROR level itself; here they reach the user once, as a SlideError.
logging.getLogger("tifffile").setLevel(logging.CRITICAL)
# TIFF compressions cuCIM decodes: none, LZW, JPEG (old and new), deflate (two codes).
READERS = ("auto", "tifffile", "cucim", "wsidicom", "openslide", "pil")
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg"}
CUCIM_COMPRESSIONS = {1, 5, 7, 8, 32946}
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
        return sorted(p for p in path.iterdir() if p.suffix.lower() == DICOM_SUFFIX and p.is_file() and not p.name.startswith("."))
    return [path] if path.is_file() and is_dicom_file(path) else []


# ---------------------------------------------------------------------------------------------
# TIFF metadata shared by the tifffile and cuCIM readers


def tiff_levels(tif) -> list:
    """The pages that form the pyramid: level 0 plus tiled pages of the same aspect ratio and
    smaller size (Aperio's stripped thumbnail, the label and the macro image are not levels)."""
    base = tif.series[0].levels[0].keyframe
    h0, w0 = base.imagelength, base.imagewidth
    candidates = [p.keyframe for p in tif.series[0].levels[1:]]
    candidates += [p for p in tif.pages[1:] if getattr(p, "is_tiled", False)]
    levels, seen = [base], {(w0, h0)}
    for page in sorted(candidates, key=lambda p: -p.imagewidth):
        w, h = page.imagewidth, page.imagelength
        if (w, h) in seen or w >= w0 or page.samplesperpixel < 3 or not page.is_tiled:
            continue
        if abs(w / h - w0 / h0) > 0.02 * (w0 / h0) + 2 / h:
            continue
        levels.append(page)
        seen.add((w, h))
    return levels


def tiff_mpp(tif) -> Mpp | None:
    """MPP from an Aperio description, else from the resolution tags and their unit."""
    page = tif.pages[0]
    desc = page.description or ""
    m = re.search(r"\|\s*MPP\s*=\s*([0-9.eE+-]+)", desc)
    if m:
        v = float(m.group(1))
        return plausible_mpp(v, v, "aperio.MPP")
    tags = page.tags
    unit = tags.get("ResolutionUnit")
    unit = int(unit.value) if unit is not None else 2  # TIFF's default unit is the inch
    per_unit = {2: 25400.0, 3: 10000.0}.get(unit)  # µm per inch / per cm
    xr, yr = tags.get("XResolution"), tags.get("YResolution")
    if per_unit is None or xr is None or yr is None:
        return None
    (xn, xd), (yn, yd) = xr.value, yr.value
    if not (xn and xd and yn and yd):
        return None
    # A resolution of 1 or 72 per inch is a writer's placeholder, not a scan.
    if unit == 2 and xn / xd in (1.0, 72.0, 96.0, 300.0):
        return None
    return plausible_mpp(per_unit * xd / xn, per_unit * yd / yn, f"tiff.XResolution ({'inch' if unit == 2 else 'cm'})")


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


# ---------------------------------------------------------------------------------------------
# Readers


class TiffSlide(Slide):
    """tifffile + imagecodecs, tile-exact reads with a shared LRU cache of decoded tiles. Levels of
    JPEG tiles (Aperio, most generic tiled TIFF) read a batch in one native call (engine.jpeg_tiles:
    decode and patch assembly, GIL released), at full size or DCT-scaled to 1/2, 1/4 or 1/8; other
    codecs, and every level with `native=False` (the reference), decode a tile at a time."""

    backend = "tifffile"

    def __init__(self, path, cache_bytes: int | None = None, native: bool = True, threads: int | None = None):
        """`cache_bytes`: the decoded-tile cache's cap; None sizes it to the slide (`cache_cap`).
        `threads`: decode threads of a native call (None: one per core). Native calls run one at a
        time: a batch then finds the tiles it shares with the batch before it in the cache, where two
        batches decoding at once both decoded them (31 % more decodes on a 40960 px slide)."""
        import tifffile

        from engine import jpeg_tiles

        try:
            self._tif = tifffile.TiffFile(path)
            pages = tiff_levels(self._tif)
        except Exception as e:
            raise SlideError(f"{path}: not a TIFF that tifffile reads ({e})") from e
        size = os.path.getsize(path)
        end = max(int((np.asarray(p.dataoffsets) + np.asarray(p.databytecounts)).max()) for p in pages)
        if end > size:
            self._tif.close()
            raise TruncatedSlideError(f"{path}: the file is cut short ({size} bytes, its tiles need {end}); copy it again")
        self._pages = pages
        self._jpeg = [jpeg_tiles.jpeg_level(p) for p in pages] if native and jpeg_tiles.available() else [None] * len(pages)
        self._threads = threads or os.cpu_count() or 1
        self._decoding = threading.Lock()
        self._fd = os.open(path, os.O_RDONLY)
        self._cache: OrderedDict = OrderedDict()
        self._cache_bytes, self._cache_cap = 0, self.cache_cap(pages[0]) if cache_bytes is None else cache_bytes
        self._lock = threading.Lock()
        super().__init__(path, [(p.imagewidth, p.imagelength) for p in pages], tiff_mpp(self._tif))

    @classmethod
    def cache_cap(cls, page, rows: int = 4, most: int = 256 << 20) -> int:
        """Decoded bytes of `rows` rows of tiles across level 0 (`page`), at most `most`. Patches share
        tiles with their neighbours in the batch (decoded once there) and with the next row of patches,
        which comes one patch row of tiles later: four tile rows hold that where a patch spans at most four
        (512 px on 240 px tiles; taller patches re-decode some shared tiles). A fixed 256 MiB decoded no fewer tiles than this on 20480 and 40960 px
        mosaics (57 and 113 MiB) and raised the tiler's peak RSS by 150-230 MB (issue 19)."""
        tw, th, across = cls._grid(page)
        return min(most, rows * across * tw * th * 3)

    @staticmethod
    def _grid(page, scale: int = 1):
        """Tile size (at 1/`scale`) and tiles per row; strips are tiles as wide as the image."""
        if page.is_tiled:
            tw, th = page.tilewidth, page.tilelength
        else:
            tw, th = page.imagewidth, page.rowsperstrip or page.imagelength
            th = min(th, page.imagelength)
        return tw // scale, th // scale, -(-page.imagewidth // tw)

    def decode_scales(self, level: int) -> tuple[int, ...]:
        jpeg = self._jpeg[level]
        return jpeg.scales if jpeg is not None else (1,)

    def _cached(self, key):
        with self._lock:
            tile = self._cache.get(key)
            if tile is not None:
                self._cache.move_to_end(key)
            return tile

    def _remember(self, items) -> None:
        """Put (key, decoded tile) pairs in the cache, dropping the least recently used beyond its cap."""
        with self._lock:
            for key, tile in items:
                self._cache[key] = tile
                self._cache_bytes += tile.nbytes
            while self._cache_bytes > self._cache_cap and len(self._cache) > 1:
                _, old = self._cache.popitem(last=False)
                self._cache_bytes -= old.nbytes

    def _tile_bytes(self, level: int, index: int) -> bytes:
        page = self._pages[level]
        offset, count = page.dataoffsets[index], page.databytecounts[index]
        if count == 0:
            raise SlideError(f"{self.path}: tile {index} of level {level} is missing from the file")
        return os.pread(self._fd, count, offset)  # whole: the file was checked for truncation at open

    def _tile(self, level: int, index: int) -> np.ndarray:
        """One tile decoded by tifffile (the reference path), through the cache."""
        tile = self._cached((level, 1, index))
        if tile is not None:
            return tile
        page = self._pages[level]
        data = self._tile_bytes(level, index)
        try:
            decoded, _, shape = page.decode(data, index, jpegtables=page.jpegtables)
        except Exception as e:
            raise SlideError(f"{self.path}: tile {index} of level {level} does not decode ({e})") from e
        if decoded is None:
            raise SlideError(f"{self.path}: tile {index} of level {level} does not decode")
        tile = to_rgb(decoded.reshape(decoded.shape[-3:]))
        self._remember([((level, 1, index), tile)])
        return tile

    def _level_size(self, level: int, scale: int) -> tuple[int, int]:
        lw, lh = self.level_dimensions[level]
        return -(-lw // scale), -(-lh // scale)

    def _tiles_for(self, level, x, y, w, h, scale: int = 1):
        tw, th, across = self._grid(self._pages[level], scale)
        lw, lh = self._level_size(level, scale)
        c0, c1 = max(0, x // tw), min(-(-lw // tw), -(-(x + w) // tw))
        r0, r1 = max(0, y // th), min(-(-lh // th), -(-(y + h) // th))
        return [(r * across + c, c * tw, r * th) for r in range(r0, r1) for c in range(c0, c1)]

    def _level_xy(self, x, y, level, scale: int = 1):
        ds = self.level_downsamples[level] * scale
        return math.floor(x / ds), math.floor(y / ds)  # as OpenSlide: floor, also left of 0

    def _assemble(self, level, x, y, w, h, tiles, out: np.ndarray) -> None:
        """Copy the request's pixels from decoded tiles into `out` (h, w, 3): the reference of the
        native call's assembly."""
        lw, lh = self.level_dimensions[level]
        if x < 0 or y < 0 or x + w > lw or y + h > lh:
            out[:] = 255  # partly outside the slide
        for index, tx, ty in self._tiles_for(level, x, y, w, h):
            tile = tiles[index]
            # Overlap of the tile (clipped to the image) with the request, in level coordinates.
            ax0, ay0 = max(x, tx), max(y, ty)
            ax1, ay1 = min(x + w, tx + tile.shape[1], lw), min(y + h, ty + tile.shape[0], lh)
            if ax1 > ax0 and ay1 > ay0:
                out[ay0 - y : ay1 - y, ax0 - x : ax1 - x] = tile[ay0 - ty : ay1 - ty, ax0 - tx : ax1 - tx]

    def _read(self, x, y, level, w, h):
        return self.read_regions([(x, y)], level, (w, h))[0]

    def read_regions(self, locations, level, size, scale: int = 1):
        """As Slide.read_regions; `scale` (one of `decode_scales(level)`) reads the level DCT-scaled
        to 1/scale, `size` counted at that scale."""
        self.check_scale(level, scale)
        w, h = (int(v) for v in size)
        regions = [self._level_xy(int(x), int(y), level, scale) for x, y in locations]
        needed = sorted({i for x, y in regions for i, _, _ in self._tiles_for(level, x, y, w, h, scale)})
        out = np.empty((len(regions), h, w, 3), np.uint8)
        if self._jpeg[level] is not None:
            return self._read_native(level, scale, needed, regions, out)
        tiles = {i: self._tile(level, i) for i in needed}  # the union of tiles, each decoded once
        for k, (x, y) in enumerate(regions):
            self._assemble(level, x, y, w, h, tiles, out[k])
        return out

    def _read_native(self, level: int, scale: int, needed: list[int], regions: list, out: np.ndarray) -> np.ndarray:
        """One native call: decode the batch's tiles that are not cached, then fill `out`."""
        from engine import _native

        jpeg = self._jpeg[level]
        tw, th, across = self._grid(self._pages[level], scale)
        lw, lh = self._level_size(level, scale)
        with self._decoding:
            tiles, data = [], []
            for i in needed:
                tile = self._cached((level, scale, i))
                data.append(None if tile is not None else self._tile_bytes(level, i))
                tiles.append(tile if tile is not None else np.empty((th, tw, 3), np.uint8))
            failed = _native.jpeg_decode_assemble(tiles, data, jpeg.tables, jpeg.colorspace, scale, np.asarray(needed, np.int64),
                                                  across, np.asarray(regions, np.int64).reshape(-1, 2), lw, lh, out, self._threads)
            bad = {k for k, _ in failed}
            self._remember(((level, scale, i), t) for k, (i, t, d) in enumerate(zip(needed, tiles, data)) if d is not None and k not in bad)
        if failed:
            k, why = failed[0]
            raise SlideError(f"{self.path}: tile {needed[k]} of level {level} does not decode ({why})")
        return out

    def close(self):
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        self._tif.close()


class OpenSlideSlide(Slide):
    backend = "openslide"

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


class CuCIMSlide(Slide):
    backend = "cucim"

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


class DicomSlide(Slide):
    """wsidicom: a DICOM WSI series (a folder of instances) or a single-file DICOM WSI; MPP from the
    base level's pixel spacing."""

    backend = "wsidicom"

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


class ImageSlide(Slide):
    """A plain PNG/JPEG as a one-level slide (held in memory: such images are small)."""

    backend = "pil"

    def __init__(self, path):
        from PIL import Image

        try:
            with Image.open(path) as img:
                self._rgb = to_rgb(np.asarray(img.convert("RGBA" if "A" in img.mode else "RGB")))
        except Exception as e:
            raise SlideError(f"{path}: not an image PIL reads ({e})") from e
        h, w = self._rgb.shape[:2]
        super().__init__(path, [(w, h)], None)

    def _read(self, x, y, level, w, h):
        out = np.full((h, w, 3), 255, np.uint8)
        H, W = self._rgb.shape[:2]
        x0, y0, x1, y1 = max(x, 0), max(y, 0), min(x + w, W), min(y + h, H)
        if x1 > x0 and y1 > y0:
            out[y0 - y : y1 - y, x0 - x : x1 - x] = self._rgb[y0:y1, x0:x1]
        return out


def choose_backend(path: Path) -> tuple[str, str]:
    """(backend, reason): the fastest backend that can read this file's compression and layout."""
    path = Path(path)
    if path.suffix.lower() in IMAGE_SUFFIXES:
        return "pil", "plain image"
    if dicom_files(path):
        return "wsidicom", "DICOM WSI (wsidicom reads more transfer syntaxes than OpenSlide)"
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            not_cucim = reason_not_for_cucim(tif)
            if tif.is_ndpi or tif.is_philips or tif.is_scn:
                return "openslide", "a vendor layout that OpenSlide knows"
    except Exception as e:
        return "openslide", f"tifffile does not read it ({type(e).__name__})"
    if not_cucim is None and runtime.cuda_available():
        return "cucim", "GPU decode"
    return "tifffile", f"{not_cucim or 'no CUDA device'}: tile-exact CPU decode with a shared tile cache"


def open_slide(path, backend: str = "auto") -> Slide:
    """Open a slide with `backend`, or with the best one for the file; `auto` falls back to the
    next backend if the first cannot open it, logging why."""
    path = Path(path)
    if backend not in READERS:
        raise ValueError(f"unknown backend {backend!r}; choose one of {', '.join(READERS)}")
    if path.is_dir():
        if not dicom_files(path):
            raise SlideError(f"{path}: a folder, and not a DICOM series (no .dcm files)", "point at a slide file or a folder of one DICOM series")
    elif not path.is_file():
        raise SlideError(f"{path}: no such file")
    elif path.stat().st_size == 0:
        raise SlideError(f"{path}: the file is empty; copy it again")
    factories = {"tifffile": TiffSlide, "cucim": CuCIMSlide, "wsidicom": DicomSlide, "openslide": OpenSlideSlide, "pil": ImageSlide}
    if backend != "auto":
        return factories[backend](path)
    first, reason = choose_backend(path)
    fallbacks = {"pil": (), "wsidicom": ("openslide",)}.get(first, ("tifffile", "openslide"))
    order = [first] + [b for b in fallbacks if b != first]
    errors = []
    for name in order:
        try:
            slide = factories[name](path)
        except TruncatedSlideError:
            raise
        except SlideError as e:
            errors.append(str(e).removeprefix(f"{path}: "))
            continue
        log.info("%s: backend %s (%s)", path.name, name, reason if name == first else f"fallback: {errors[-1]}")
        return slide
    raise SlideError(f"{path}: not a slide any backend reads ({'; '.join(errors)}); check that the file is a complete WSI")
