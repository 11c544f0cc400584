"""The ``tifffile`` reader: tifffile + imagecodecs, reading only the tiles a request covers and keeping
decoded tiles in a bounded LRU cache, so neighbouring patches that share source tiles decode them once.
Reads tiled and stripped TIFF/SVS in every codec imagecodecs has (JPEG, JPEG 2000, LZW, deflate, zstd,
webp); on a CPU this is the fastest reader we measured (benchmarks/RESULTS.md)."""
from __future__ import annotations

import logging
import math
import os
import threading

import numpy as np

from engine.readers.tile_cache import TileCache
from engine.readers.tile_grid import assemble, tiles_covering, tiles_needed
from engine.readers.tiff_meta import TIFF_SUFFIXES, tiff_levels, tiff_mpp
from engine.slide import Slide, SlideError, TruncatedSlideError, to_rgb

# tifffile logs damaged files at ERROR level itself; here they reach the user once, as a SlideError.
logging.getLogger("tifffile").setLevel(logging.CRITICAL)


class TiffSlide(Slide):
    """tifffile + imagecodecs, tile-exact reads with a shared LRU cache of decoded tiles. Levels of
    JPEG tiles (Aperio, most generic tiled TIFF) read a batch in one native call (engine.jpeg_tiles:
    decode and patch assembly, GIL released), at full size or DCT-scaled to 1/2, 1/4 or 1/8; other
    codecs, and every level with `native=False` (the reference), decode a tile at a time."""

    backend = "tifffile"
    suffixes = TIFF_SUFFIXES

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
            raise TruncatedSlideError(f"{path}: the file is cut short ({size} bytes, its tiles need {end}); "
                                      "copy it again")
        self._pages = pages
        native = native and jpeg_tiles.available()
        self._jpeg = [jpeg_tiles.jpeg_level(p) if native else None for p in pages]
        self._threads = threads or os.cpu_count() or 1
        self._decoding = threading.Lock()
        self._fd = os.open(path, os.O_RDONLY)
        self._cache = TileCache(self.cache_cap(pages[0]) if cache_bytes is None else cache_bytes)
        super().__init__(path, [(p.imagewidth, p.imagelength) for p in pages], tiff_mpp(self._tif))

    @classmethod
    def cache_cap(cls, page, rows: int = 4, most: int = 256 << 20) -> int:
        """Decoded bytes of `rows` rows of tiles across level 0 (`page`), at most `most`. Patches share
        tiles with their neighbours in the batch (decoded once there) and with the next row of patches,
        which comes one patch row of tiles later: four tile rows hold that where a patch spans at most four
        (512 px on 240 px tiles; taller patches re-decode some shared tiles). A fixed 256 MiB decoded no fewer
        tiles than this on 20480 and 40960 px mosaics (57 and 113 MiB) and raised the tiler's peak RSS by
        150-230 MB (issue 19)."""
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

    def _remember(self, items) -> None:
        """Put (key, decoded tile) pairs in the cache (tests watch the tiles decoded here)."""
        self._cache.put(items)

    def _tile_bytes(self, level: int, index: int) -> bytes:
        page = self._pages[level]
        offset, count = page.dataoffsets[index], page.databytecounts[index]
        if count == 0:
            raise SlideError(f"{self.path}: tile {index} of level {level} is missing from the file")
        return os.pread(self._fd, count, offset)  # whole: the file was checked for truncation at open

    def _tile(self, level: int, index: int) -> np.ndarray:
        """One tile decoded by tifffile (the reference path), through the cache."""
        tile = self._cache.get((level, 1, index))
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
        return tiles_covering(x, y, w, h, *self._grid(self._pages[level], scale), *self._level_size(level, scale))

    def _level_xy(self, x, y, level, scale: int = 1):
        ds = self.level_downsamples[level] * scale
        return math.floor(x / ds), math.floor(y / ds)  # as OpenSlide: floor, also left of 0

    def _read(self, x, y, level, w, h):
        return self.read_regions([(x, y)], level, (w, h))[0]

    def read_regions(self, locations, level, size, scale: int = 1):
        """As Slide.read_regions; `scale` (one of `decode_scales(level)`) reads the level DCT-scaled
        to 1/scale, `size` counted at that scale."""
        self.check_scale(level, scale)
        w, h = (int(v) for v in size)
        regions = [self._level_xy(int(x), int(y), level, scale) for x, y in locations]
        grid = (*self._grid(self._pages[level], scale), *self._level_size(level, scale))
        needed = tiles_needed(regions, w, h, *grid)
        out = np.empty((len(regions), h, w, 3), np.uint8)
        if self._jpeg[level] is not None:
            return self._read_native(level, scale, needed, regions, out)
        assemble({i: self._tile(level, i) for i in needed}, regions, out, *grid)  # each shared tile decoded once
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
                tile = self._cache.get((level, scale, i))
                data.append(None if tile is not None else self._tile_bytes(level, i))
                tiles.append(tile if tile is not None else np.empty((th, tw, 3), np.uint8))
            failed = _native.jpeg_decode_assemble(tiles, data, jpeg.tables, jpeg.colorspace, scale,
                                                  np.asarray(needed, np.int64), across,
                                                  np.asarray(regions, np.int64).reshape(-1, 2), lw, lh, out,
                                                  self._threads)
            bad = {k for k, _ in failed}
            self._remember(((level, scale, i), t) for k, (i, t, d) in enumerate(zip(needed, tiles, data))
                           if d is not None and k not in bad)
        if failed:
            k, why = failed[0]
            raise SlideError(f"{self.path}: tile {needed[k]} of level {level} does not decode ({why})")
        return out

    def close(self):
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        self._tif.close()
