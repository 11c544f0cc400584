"""histosynth: synthetic slides checked with the real readers (OpenSlide,
cuCIM, tifffile). Small slides only; the whole file runs in well under 30 s."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import numpy as np
import openslide
import pytest
import tifffile

import histosynth as synth
from histosynth import (
    SynthSpec,
    corrupt_tile,
    demo_slides,
    mosaic_svs,
    render_region,
    truncate,
    write_plain_image,
    write_svs,
    write_tiled_tiff,
)
from histosynth.mosaic import _mirror
from histosynth.tiff import _render_level
from histosynth.tissue import _render
from tests.support.data import SHARED

try:
    from cucim import CuImage
except Exception:  # pragma: no cover - cuCIM missing
    CuImage = None

needs_cucim = pytest.mark.skipif(CuImage is None, reason="cuCIM not importable")

W, H = 1000, 760  # not multiples of the tile sizes: exercises edge tiles
SPEC = SynthSpec(width=W, height=H, seed=3, jpeg_quality=95)
CMU = SHARED / "slides" / "CMU-1-Small-Region.svs"


def os_rgb(slide, x=0, y=0, w=None, h=None, level=0):
    w = slide.level_dimensions[level][0] if w is None else w
    h = slide.level_dimensions[level][1] if h is None else h
    return np.asarray(slide.read_region((x, y), level, (w, h)))[..., :3]


def diff(a, b):
    d = np.abs(a.astype(np.int16) - b.astype(np.int16))
    return int(d.max()), float(d.mean())


def saturation_fraction(img, thr=0.1):
    mx = img.max(-1).astype(np.float32)
    mn = img.min(-1).astype(np.float32)
    return float((((mx - mn) / np.maximum(mx, 1)) > thr).mean())


@pytest.fixture(scope="module")
def out(tmp_path_factory):
    return tmp_path_factory.mktemp("synth")


@pytest.fixture(scope="module")
def svs(out):
    return write_svs(out / "a.svs", SPEC)


@pytest.fixture(scope="module")
def tif(out):
    return write_tiled_tiff(out / "c.tif", SPEC)


# ---------------------------------------------------------------- rendering

def test_render_deterministic_and_window_independent():
    a = render_region(SPEC, 100, 50, 700, 500)
    assert a.shape == (500, 700, 3) and a.dtype == np.uint8 and a.flags.c_contiguous
    assert np.array_equal(a, render_region(SPEC, 100, 50, 700, 500))
    # a pixel never depends on the window it was rendered in
    assert np.array_equal(a[123:323, 77:477], render_region(SPEC, 177, 173, 400, 200))
    assert not np.array_equal(a, render_region(SynthSpec(width=W, height=H, seed=4), 100, 50, 700, 500))


def test_render_exact_in_any_window():
    """Exact expectations for any region: random windows (tissue edges, pen,
    1-px slivers) equal the same pixels of one big render."""
    spec = SynthSpec(width=1500, height=1000, seed=11, pen=True)
    big = render_region(spec, 0, 0, 1500, 1000)
    rng = np.random.default_rng(0)
    for _ in range(60):
        w, h = (int(v) for v in rng.integers(1, 300, 2))
        x, y = int(rng.integers(0, 1500 - w)), int(rng.integers(0, 1000 - h))
        assert np.array_equal(render_region(spec, x, y, w, h), big[y:y + h, x:x + w]), (x, y, w, h)


def test_render_content_and_speed():
    spec = SynthSpec()  # default 4096 x 3072
    # the whole default slide, point-sampled every 8 px: rough tissue fraction
    img = _render(spec, np.arange(0, spec.width, 8.0), np.arange(0, spec.height, 8.0))
    frac = saturation_fraction(img)
    assert 0.2 < frac < 0.6, frac
    # background is near-white; tissue has pink stroma and dark purple nuclei
    bg = img[img.min(-1) > 225]
    assert bg.size and abs(float(bg.mean()) - 240) < 4
    tissue = img[(img.max(-1).astype(int) - img.min(-1)) > 40]
    assert (tissue[:, 0] > tissue[:, 1]).mean() > 0.9  # red > green: H&E hues
    assert ((tissue.max(-1) < 150) & (tissue[:, 2] > tissue[:, 1])).any()  # nuclei
    empty = _render(SynthSpec(tissue=False), np.arange(0, 4096, 8.0), np.arange(0, 3072, 8.0))
    assert saturation_fraction(empty) == 0.0 and empty.min() >= 230
    render_region(spec, 1500, 1200, 512, 512)
    t = time.perf_counter()
    render_region(spec, 1500, 1200, 512, 512)
    assert time.perf_counter() - t < 0.5  # ~25 ms in practice; loose for busy CI


def test_pen_stroke_adds_ink():
    a = _render(SynthSpec(pen=True), np.arange(0, 4096, 8.0), np.arange(0, 3072, 8.0))
    b = _render(SynthSpec(pen=False), np.arange(0, 4096, 8.0), np.arange(0, 3072, 8.0))
    changed = np.any(a != b, axis=-1)
    assert 0.003 < changed.mean() < 0.1
    ink = a[changed].astype(int)
    # green or blue ink: the red channel is the weakest
    assert np.median(ink[:, 0]) < np.median(ink[:, 1:].max(-1))


# ---------------------------------------------------------------- SVS

def test_svs_openslide(svs):
    s = openslide.OpenSlide(svs)
    assert s.properties["openslide.vendor"] == "aperio"
    assert s.level_count == 3
    assert s.level_dimensions == ((W, H), (W // 4, H // 4), (W // 16, H // 16))
    assert s.level_downsamples == pytest.approx((1, 4, 16), rel=0.02)
    assert float(s.properties["openslide.mpp-x"]) == SPEC.mpp
    assert float(s.properties["openslide.mpp-y"]) == SPEC.mpp
    assert s.properties["aperio.AppMag"] == "40"
    assert "thumbnail" in s.associated_images
    # level 0 and a reduced level match the renderer (JPEG Q95, no subsampling)
    mx, mean = diff(os_rgb(s), render_region(SPEC, 0, 0, W, H))
    assert mx <= 24 and mean < 1.0, (mx, mean)
    mx, mean = diff(os_rgb(s, level=1), _render_level(SPEC, 4, 0, 0, W // 4, H // 4))
    assert mx <= 24 and mean < 1.0, (mx, mean)


def test_svs_layout_tifffile(svs):
    with tifffile.TiffFile(svs) as t:
        assert t.is_svs
        p0, thumb = t.pages[0], t.pages[1]
        assert p0.is_tiled and p0.tile == (240, 240)
        assert p0.compression == 7 and p0.photometric == 2 and p0.jpegtables  # Aperio JPEG/RGB
        assert not thumb.is_tiled  # 2nd IFD: stripped thumbnail
        assert p0.description.startswith(f"Aperio Image Library v12.0.15 \r\n{W}x{H} [0,0 {W}x{H}] (240x240) JPEG/RGB "
                                         "Q=95|")
        assert "|AppMag = 40|MPP = 0.2500" in p0.description
        assert 282 not in p0.tags  # like Aperio: no resolution tags
        levels = t.series[0].levels
        assert [lv.shape for lv in levels] == [(H, W, 3), (H // 4, W // 4, 3), (H // 16, W // 16, 3)]
        assert t.series[1].name == "Thumbnail"
        a = levels[0].asarray()
    assert diff(a, render_region(SPEC, 0, 0, W, H))[0] <= 24


@needs_cucim
def test_svs_cucim_matches_openslide(svs):
    img = CuImage(str(svs))
    assert img.resolutions["level_count"] == 3
    assert img.metadata["aperio"]["MPP"] == "0.2500"
    s = openslide.OpenSlide(svs)
    for level, (x, y, w, h) in [(0, (130, 90, 600, 500)), (1, (10, 20, 200, 150))]:
        ds = round(s.level_downsamples[level])
        a = np.asarray(img.read_region((x * ds, y * ds), (w, h), level))[..., :3]
        mx, mean = diff(a, os_rgb(s, x * ds, y * ds, w, h, level))
        assert mx <= 2 and mean < 0.5, (level, mx, mean)


def test_svs_without_mpp(out):
    p = write_svs(out / "nompp.svs", SynthSpec(width=600, height=400, mpp=None))
    s = openslide.OpenSlide(p)
    assert s.properties["openslide.vendor"] == "aperio"
    assert "openslide.mpp-x" not in s.properties and "aperio.MPP" not in s.properties
    assert "MPP" not in tifffile.TiffFile(p).pages[0].description


def test_svs_deterministic_bytes(out, svs):
    again = write_svs(out / "again.svs", SPEC)
    assert again.read_bytes() == Path(svs).read_bytes()


J2K_SPEC = SynthSpec(width=700, height=500, seed=5, jpeg_quality=90)


@pytest.fixture(scope="module")
def j2k(out):
    return write_svs(out / "j2k.svs", J2K_SPEC, compression="jpeg2000")


def test_svs_jpeg2000(j2k):
    with tifffile.TiffFile(j2k) as t:
        assert t.pages[0].compression == 33005  # APERIO_JP2000_RGB
        assert t.pages[1].compression == 7  # thumbnail stays JPEG, as Aperio
        assert diff(t.series[0].levels[0].asarray(), render_region(J2K_SPEC, 0, 0, 700, 500))[1] < 1.5
    s = openslide.OpenSlide(j2k)
    assert s.properties["openslide.vendor"] == "aperio" and s.level_count == 3
    mx, mean = diff(os_rgb(s), render_region(J2K_SPEC, 0, 0, 700, 500))
    assert mean < 1.5, (mx, mean)


@needs_cucim
def test_svs_jpeg2000_cucim_matches_openslide(j2k):
    # The pinned cuCIM (cucim-cu13 26.10) decodes Aperio's JPEG 2000 (33005) on its CPU path, within 2
    # grey levels of OpenSlide; the readers still send such slides to tifffile (engine.readers.cucim).
    a = np.asarray(CuImage(str(j2k)).read_region((0, 0), (700, 500), 0))[..., :3]
    assert diff(a, os_rgb(openslide.OpenSlide(j2k)))[0] <= 2


# ---------------------------------------------------------------- generic TIFF

def test_tiled_tiff_openslide(tif):
    s = openslide.OpenSlide(tif)
    assert s.properties["openslide.vendor"] == "generic-tiff"
    assert s.level_count == 6
    assert s.level_dimensions == tuple((W // d, H // d) for d in (1, 2, 4, 8, 16, 32))
    assert float(s.properties["openslide.mpp-x"]) == pytest.approx(SPEC.mpp)
    assert s.properties["tiff.ResolutionUnit"] == "centimeter"
    mx, mean = diff(os_rgb(s), render_region(SPEC, 0, 0, W, H))
    assert mean < 2.0, (mx, mean)  # YCbCr 4:2:0: chroma edges of nuclei differ more


def test_tiled_tiff_tifffile(tif):
    with tifffile.TiffFile(tif) as t:
        p0 = t.pages[0]
        assert p0.tile == (512, 512) and p0.compression == 7 and p0.photometric == 6  # YCbCr
        assert p0.jpegtables
        assert [p.subfiletype for p in t.pages] == [0, 1, 1, 1, 1, 1]
        assert len(t.series) == 1 and len(t.series[0].levels) == 6
        assert p0.tags["XResolution"].value == (40000, 1)  # px/cm = 1e4 / mpp


@needs_cucim
def test_tiled_tiff_cucim_matches_openslide(tif):
    img = CuImage(str(tif))
    assert img.resolutions["level_count"] == 6
    assert img.spacing()[:2] == pytest.approx([SPEC.mpp, SPEC.mpp])
    s = openslide.OpenSlide(tif)
    a = np.asarray(img.read_region((0, 0), (W, H), 0))[..., :3]
    mx, mean = diff(a, os_rgb(s))
    assert mx <= 2 and mean < 0.5, (mx, mean)


@pytest.mark.parametrize("compression", ["lzw", "deflate"])
def test_tiled_tiff_lossless_exact(out, compression):
    spec = SynthSpec(width=700, height=530, seed=7, mpp=None)
    p = write_tiled_tiff(out / f"{compression}.tif", spec, compression=compression)
    ref = render_region(spec, 0, 0, 700, 530)
    s = openslide.OpenSlide(p)
    assert s.properties["openslide.vendor"] == "generic-tiff"
    assert "openslide.mpp-x" not in s.properties
    assert np.array_equal(os_rgb(s), ref)
    with tifffile.TiffFile(p) as t:
        assert 282 not in t.pages[0].tags
        levels = t.series[0].levels
        assert np.array_equal(levels[0].asarray(), ref)
        assert np.array_equal(levels[2].asarray(), _render_level(spec, 4, 0, 0, 700 // 4, 530 // 4))
    if CuImage is not None:
        assert np.array_equal(np.asarray(CuImage(str(p)).read_region((0, 0), (700, 530), 0))[..., :3], ref)


def test_tiled_tiff_zstd_webp(out):
    spec = SynthSpec(width=600, height=400, seed=8)
    ref = render_region(spec, 0, 0, 600, 400)
    z = write_tiled_tiff(out / "z.tif", spec, compression="zstd")
    wp = write_tiled_tiff(out / "w.tif", spec, compression="webp")
    assert np.array_equal(tifffile.imread(z), ref)
    assert diff(tifffile.imread(wp), ref)[1] < 3
    assert np.array_equal(os_rgb(openslide.OpenSlide(z)), ref)  # openslide-bin has zstd
    with pytest.raises(openslide.OpenSlideError):  # OpenSlide has no WebP TIFF
        openslide.OpenSlide(wp)
    if CuImage is not None:
        for p in (z, wp):  # cuCIM opens them but cannot decode
            with pytest.raises(Exception):
                CuImage(str(p)).read_region((0, 0), (64, 64), 0)


def test_kept_and_rerendered_levels_agree(out, monkeypatch):
    """Reduced levels come either from the level-0 pass (in memory) or from
    re-rendering level 0 per tile; both must give the same pixels."""
    spec = SynthSpec(width=900, height=700, seed=9)
    a = write_tiled_tiff(out / "kept.tif", spec, levels=(1, 2, 8), compression="lzw")
    monkeypatch.setattr("histosynth.tiff._KEEP_BUDGET", 0)
    b = write_tiled_tiff(out / "rerendered.tif", spec, levels=(1, 2, 8), compression="lzw")
    assert a.read_bytes() == b.read_bytes()


# ---------------------------------------------------------------- damage

def test_corrupt_tile(out, svs):
    p = out / "corrupt.svs"
    shutil.copy(svs, p)
    idx = corrupt_tile(p)
    nx = -(-W // 240)
    ty, tx = divmod(idx, nx)
    tile = render_region(SPEC, tx * 240, ty * 240, min(240, W - tx * 240), min(240, H - ty * 240))
    assert saturation_fraction(tile) > 0.3  # chosen inside tissue
    # the file still opens; other tiles read fine; the bad one raises
    good_xy = ((tx + 1) % nx * 240 + 3, ty * 240 + 3)
    s = openslide.OpenSlide(p)
    s.read_region(good_xy, 0, (32, 32))
    with pytest.raises(openslide.OpenSlideError):
        s.read_region((tx * 240 + 10, ty * 240 + 10), 0, (16, 16))
    # OpenSlide errors are sticky per handle: a fresh handle reads elsewhere
    openslide.OpenSlide(p).read_region(good_xy, 0, (32, 32))
    with tifffile.TiffFile(p) as t:
        with pytest.raises(Exception):
            t.series[0].levels[0].asarray()
    if CuImage is not None:
        # observed: cuCIM does NOT raise on a bad JPEG tile; it prints a libjpeg
        # error and returns undefined pixels (zeros or stale memory)
        a = np.asarray(CuImage(str(p)).read_region((tx * 240, ty * 240), (240, 240), 0))
        assert a.shape[:2] == (240, 240)
    assert corrupt_tile(p, index=0) == 0


def test_truncate(out, tif):
    p = out / "trunc.tif"
    shutil.copy(tif, p)
    size = p.stat().st_size
    assert truncate(p, 0.5) == size // 2 == p.stat().st_size
    with pytest.raises(openslide.OpenSlideError):
        s = openslide.OpenSlide(p)
        s.read_region((0, 0), 0, (W, H))
    with pytest.raises(Exception):
        tifffile.TiffFile(p).series[0].levels[0].asarray()


# ---------------------------------------------------------------- others

def test_plain_image(out):
    spec = SynthSpec(width=320, height=200, seed=2, mpp=None)
    ref = render_region(spec, 0, 0, 320, 200)
    t = write_plain_image(out / "p.tif", spec)
    with tifffile.TiffFile(t) as f:
        assert not f.pages[0].is_tiled
        assert np.array_equal(f.asarray(), ref)
    png = write_plain_image(out / "p.png", spec)
    from PIL import Image

    assert np.array_equal(np.asarray(Image.open(png).convert("RGB")), ref)
    jpg = write_plain_image(out / "p.jpg", spec)
    assert diff(np.asarray(Image.open(jpg).convert("RGB")), ref)[1] < 3


@pytest.mark.skipif(not CMU.exists(), reason="CMU-1-Small-Region.svs not available")
def test_mosaic_svs(out):
    p = mosaic_svs(out / "mosaic.svs", CMU, 3000, 2000)
    s = openslide.OpenSlide(p)
    assert s.properties["openslide.vendor"] == "aperio"
    assert s.dimensions == (3000, 2000) and s.level_count == 3
    assert float(s.properties["openslide.mpp-x"]) == pytest.approx(0.499)
    base = tifffile.imread(CMU)
    bh, bw = base.shape[:2]
    x, y = bw - 100, 500  # straddles the vertical mirror seam
    ref = base[np.ix_(_mirror(np.arange(y, y + 300), bh), _mirror(np.arange(x, x + 400), bw))]
    assert diff(os_rgb(s, x, y, 400, 300), ref)[1] < 2


def test_cli(out, capsys):
    assert synth.main([str(out / "cli"), "--kind", "tiff", "--width", "600", "--height", "500",
                       "--no-mpp", "--compression", "lzw", "--seed", "4"]) == 0
    p = Path(capsys.readouterr().out.strip())
    assert p.exists()
    s = openslide.OpenSlide(p)
    assert s.dimensions == (600, 500) and "openslide.mpp-x" not in s.properties


def test_demo_slides(out):
    t = time.perf_counter()
    paths = demo_slides(out / "demo")
    took = time.perf_counter() - t
    vendors = [openslide.OpenSlide(p).properties["openslide.vendor"] for p in paths]
    assert vendors == ["aperio", "generic-tiff"]
    assert openslide.OpenSlide(paths[0]).dimensions == (6000, 4000)
    assert took < 60  # ~1-2 s on 2 cores


def test_bad_arguments(out):
    with pytest.raises(ValueError):
        write_svs(out / "x.svs", SPEC, compression="lzw")
    with pytest.raises(ValueError):
        write_tiled_tiff(out / "x.tif", SPEC, compression="jpeg2000")
    with pytest.raises(ValueError):
        write_svs(out / "x.svs", SPEC, levels=(2, 4))
    with pytest.raises(ValueError):
        write_tiled_tiff(out / "x.tif", SPEC, tile=200)
