"""The native batch decode of JPEG tiles (csrc/jpeg.cpp via engine.jpeg_tiles) against the tifffile
reference, pixel for pixel, and its DCT-scaled decode against a resize of the full decode."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from engine import jpeg_tiles
from engine.readers import TiffSlide
from engine.slide import SlideError
from tests.support.regions import assert_regions_are_crops, scaled_whole


def random_regions(slide, rng, n: int, size: tuple[int, int], level: int = 0, margin: int = 300):
    """Level-0 corners anywhere on the level, some hanging off every edge."""
    W, H = slide.dimensions
    return [(int(x), int(y)) for x, y in zip(rng.integers(-margin, W - size[0] + margin, n),
                                             rng.integers(-margin, H - size[1] + margin, n))]


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    return float(10 * np.log10(255**2 / np.mean((a.astype(float) - b.astype(float)) ** 2)))


def test_the_library_loads():
    assert jpeg_tiles.library_path() is not None and jpeg_tiles.available()


@pytest.mark.parametrize("name", ["svs_slide", "tiff_slide", "cmu_svs"])
def test_native_equals_tifffile_pixel_for_pixel(name, request):
    """Aperio RGB 4:4:4 tiles (synthetic and the real CMU slide) and YCbCr 4:2:0 tiles; every level;
    odd sizes; regions off every edge; one and two decode threads; a cold and a warm cache."""
    path = request.getfixturevalue(name)
    rng = np.random.default_rng(len(name))
    ref = TiffSlide(path, native=False)
    one, two = TiffSlide(path, threads=1), TiffSlide(path, threads=2)
    assert one._jpeg[0] is not None  # the native path is the one tested
    for level in range(ref.level_count):
        for size in [(512, 512), (301, 77), (1, 700)]:
            locs = random_regions(ref, rng, 24, size)
            want = ref.read_regions(locs, level, size)
            np.testing.assert_array_equal(one.read_regions(locs, level, size), want)
            np.testing.assert_array_equal(one.read_regions(locs[::-1], level, size), want[::-1])  # cached tiles
            np.testing.assert_array_equal(two.read_regions(locs, level, size), want)
    far = [(10**6, 10**6)]  # wholly outside: white, no tile read
    assert (one.read_regions(far, 0, (64, 64)) == 255).all()


@pytest.mark.parametrize("scale", [2, 4, 8])
def test_dct_scaled_decode_is_the_downsampled_slide(cmu_svs, scale):
    """At 1/scale the patches match an area average of the full decode closely and a Lanczos resize
    (the tiler's exact resize) within what the choice of filter changes, on the real slide."""
    slide, ref = TiffSlide(cmu_svs), TiffSlide(cmu_svs, native=False)
    rng = np.random.default_rng(scale)
    n = 512 // scale
    W, H = slide.dimensions
    locs = [(int(x) * 8, int(y) * 8)
            for x, y in zip(rng.integers(0, (W - 512) // 8, 24), rng.integers(0, (H - 512) // 8, 24))]
    got = slide.read_regions(locs, 0, (n, n), scale=scale)
    full = ref.read_regions(locs, 0, (512, 512))
    box = np.stack([np.asarray(Image.fromarray(f).resize((n, n), Image.Resampling.BOX)) for f in full])
    lanczos = np.stack([np.asarray(Image.fromarray(f).resize((n, n), Image.Resampling.LANCZOS)) for f in full])
    assert psnr(got, box) > 45, psnr(got, box)  # measured 51-55 dB at 1/2 and 1/4
    assert psnr(got, lanczos) > 33, psnr(got, lanczos)  # measured 35-38 dB
    assert np.abs(got.astype(int) - lanczos).mean() < 3
    # A shifted region is not the same picture: the comparison can fail.
    assert psnr(got[:, 1:], box[:, :-1]) < psnr(got, box) - 8


def test_threads_reading_batches_decode_each_tile_once(tiff_slide, monkeypatch):
    """The tiler reads batches on several threads: native calls take turns, so a tile two batches
    share is decoded by the first and found in the cache by the second (racing, both decoded it)."""
    from concurrent.futures import ThreadPoolExecutor

    slide = TiffSlide(tiff_slide)
    decoded = []
    remember = TiffSlide._remember
    monkeypatch.setattr(TiffSlide, "_remember",
                        lambda self, items: (decoded.extend(items := list(items)), remember(self, items)))
    locs = [(x, y) for y in range(0, 1536, 384) for x in range(0, 2048, 384)]  # overlapping 512 px reads
    batches = [locs[i : i + 3] for i in range(0, len(locs), 3)]
    with ThreadPoolExecutor(4) as pool:
        got = list(pool.map(lambda b: slide.read_regions(b, 0, (512, 512)), batches))
    keys = [k for k, _ in decoded]
    assert len(keys) == len(set(keys))  # no tile decoded twice
    ref = TiffSlide(tiff_slide, native=False)
    for b, g in zip(batches, got):
        np.testing.assert_array_equal(g, ref.read_regions(b, 0, (512, 512)))


@pytest.mark.parametrize("scale", [2, 8])
def test_dct_scaled_regions_are_crops_of_the_scaled_slide(svs_slide, scale):
    """Regions read at 1/scale, anywhere (off the edges too), are exactly the matching crops of the
    whole level read at 1/scale in one piece, white outside: the assembly at every scale."""
    slide = TiffSlide(svs_slide, threads=1)
    whole = scaled_whole(slide, slide.dimensions, scale)
    assert_regions_are_crops(TiffSlide(svs_slide), whole, slide.dimensions, scale, 30)


def test_scales_offered_only_where_tiles_divide(svs_slide):
    slide = TiffSlide(svs_slide)
    assert slide.decode_scales(0) == (1, 2, 4, 8)  # 240 px tiles
    assert TiffSlide(svs_slide, native=False).decode_scales(0) == (1,)
    with pytest.raises(ValueError, match="1/3"):
        slide.read_regions([(0, 0)], 0, (64, 64), scale=3)


def test_a_corrupt_tile_names_itself_and_spares_the_others(svs_slide, tmp_path):
    """A tile whose bytes are garbage: the batch over it fails with the tile's number, a batch
    elsewhere reads the same as the reference, and the good tiles of the failed batch stay usable."""
    import tifffile

    path = tmp_path / "bad.svs"
    shutil.copy(svs_slide, path)
    with tifffile.TiffFile(path) as tif:
        page = tif.pages[0]
        offset, count = page.dataoffsets[0], page.databytecounts[0]
    with open(path, "r+b") as f:
        f.seek(offset + 2)  # after SOI: the scan header is garbage
        f.write(os.urandom(min(count - 2, 64)))
    slide, ref = TiffSlide(path), TiffSlide(svs_slide, native=False)
    with pytest.raises(SlideError, match=r"tile 0 of level 0 does not decode"):
        slide.read_regions([(0, 0), (600, 600)], 0, (300, 300))
    np.testing.assert_array_equal(slide.read_regions([(600, 600)], 0, (300, 300)),
                                  ref.read_regions([(600, 600)], 0, (300, 300)))


def test_without_the_library_jpeg_decodes_through_tifffile(svs_slide):
    """A library that does not load: one warning naming it, and the reference path reads the slide."""
    code = ("import logging, numpy as np; logging.basicConfig(level=logging.WARNING);"
            "from engine.readers import TiffSlide;"
            f"s = TiffSlide({str(svs_slide)!r}); assert s._jpeg == [None] * s.level_count;"
            f"r = TiffSlide({str(svs_slide)!r}, native=False);"
            "np.testing.assert_array_equal(s.read_regions([(5, 7)], 0, (300, 300)),"
            " r.read_regions([(5, 7)], 0, (300, 300)))")
    env = {**os.environ, jpeg_tiles.ENV_LIBRARY: "/nonexistent/libjpeg.so.8"}
    run = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert "/nonexistent/libjpeg.so.8: cannot load it" in run.stderr and "through tifffile" in run.stderr
