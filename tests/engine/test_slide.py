"""Readers: every backend gives the same pixels for the same region, on real and synthetic slides;
`auto` picks by what the file is; MPP comes with its source; bad files give clear errors."""
from __future__ import annotations

import numpy as np
import pytest
import tifffile

from engine import runtime
from engine import slide as slide_mod
from engine.readers import choose_backend, open_slide
from engine.slide import SlideError

JPEG_TOL = 3  # max abs difference between libjpeg-turbo builds (cuCIM, OpenSlide, imagecodecs)


def random_regions(rng, dims, size, n, outside=True):
    w, h = dims
    lo = -size // 2 if outside else 0
    xs = rng.integers(lo, w - size // (2 if outside else 1), n)
    ys = rng.integers(lo, h - size // (2 if outside else 1), n)
    return list(zip(xs.tolist(), ys.tolist()))


def openslide_rgb(path, loc, level, size):
    """A direct OpenSlide read composited on white: the reference every backend must meet."""
    import openslide  # absent on a bare GPU box: only these comparisons need it

    rgba = np.asarray(openslide.OpenSlide(str(path)).read_region(loc, level, size)).astype(np.float64)
    a = rgba[..., 3:] / 255
    return np.round(rgba[..., :3] * a + 255 * (1 - a)).astype(np.uint8)


@pytest.mark.parametrize("backend", ["tifffile", "openslide", "cucim"])
def test_real_svs_backends_match_openslide(cmu_svs, backend):
    rng = np.random.default_rng(0)
    with open_slide(cmu_svs, backend) as s:
        assert s.backend == backend
        assert s.dimensions == (2220, 2967)
        assert s.mpp is not None and s.mpp.x == pytest.approx(0.499)
        locs = random_regions(rng, s.dimensions, 512, 12)
        batch = s.read_regions(locs, 0, (512, 512))
        for loc, got in zip(locs, batch):
            ref = openslide_rgb(cmu_svs, loc, 0, (512, 512))
            assert np.abs(got.astype(int) - ref).max() <= JPEG_TOL
            np.testing.assert_array_equal(got, s.read_region(loc, 0, (512, 512)))


@pytest.mark.parametrize("backend", ["wsidicom", "openslide"])
def test_real_dicom_series_backends_match_openslide(cmu_dicom, backend):
    """The CMU slide as an IDC-style DICOM series (JPEG frames): each backend against a direct
    OpenSlide read of the series, on every level."""
    rng = np.random.default_rng(3)
    first = sorted(cmu_dicom.glob("*.dcm"))[0]  # OpenSlide opens a series through any of its files
    with open_slide(cmu_dicom, backend) as s:
        assert s.backend == backend and s.level_count == 3
        assert s.mpp is not None and s.mpp.x == pytest.approx(0.499)
        for level in range(s.level_count):
            ds = s.level_downsamples[level]
            locs = [(int(x * ds), int(y * ds)) for x, y in random_regions(rng, s.level_dimensions[level], 256, 4)]
            for loc, got in zip(locs, s.read_regions(locs, level, (256, 256))):
                np.testing.assert_array_equal(got, openslide_rgb(first, loc, level, (256, 256)))


def test_auto_picks_tile_exact_reader_on_cpu(cmu_svs, monkeypatch):
    monkeypatch.setattr(runtime, "cuda_available", lambda: False)
    assert choose_backend(cmu_svs)[0].backend == "tifffile"
    monkeypatch.setattr(runtime, "cuda_available", lambda: True)
    reader, reason = choose_backend(cmu_svs)
    assert (reader.backend, reason) == ("cucim", "GPU decode")


def test_jpeg2000_svs_never_goes_to_cucim(synth_dir, monkeypatch):
    import histosynth as synth  # here: it needs imagecodecs, which a bare GPU box lacks

    path = synth_dir / "j2k.svs"
    synth.write_svs(path, synth.SynthSpec(width=960, height=720, seed=3, mpp=0.5), levels=(1,), compression="jpeg2000")
    monkeypatch.setattr(runtime, "cuda_available", lambda: True)
    reader, reason = choose_backend(path)
    assert reader.backend == "tifffile" and "cuCIM" in reason
    with open_slide(path) as s, open_slide(path, "openslide") as o:
        locs = random_regions(np.random.default_rng(1), s.dimensions, 256, 6)
        got, want = s.read_regions(locs, 0, (256, 256)), o.read_regions(locs, 0, (256, 256))
        assert np.abs(got.astype(int) - want).max() <= JPEG_TOL


@pytest.mark.parametrize("fixture", ["svs_slide", "tiff_slide"])
def test_synthetic_pyramids_agree_on_every_level(fixture, request):
    path = request.getfixturevalue(fixture)
    rng = np.random.default_rng(2)
    slides = {b: open_slide(path, b) for b in ("tifffile", "openslide", "cucim")}
    ref = slides["openslide"]
    for b, s in slides.items():
        assert s.level_dimensions == ref.level_dimensions, b
        np.testing.assert_allclose(s.level_downsamples, ref.level_downsamples, rtol=1e-3)
    for level in range(ref.level_count):
        # OpenSlide resamples at sub-pixel offsets where a level-0 location is not a multiple of
        # the level's downsample (the others floor), so compare on whole level pixels.
        ds = round(ref.level_downsamples[level])
        locs = [(x // ds * ds, y // ds * ds) for x, y in random_regions(rng, ref.dimensions, 300, 5)]
        want = ref.read_regions(locs, level, (300, 200))
        for b, s in slides.items():
            got = s.read_regions(locs, level, (300, 200))
            assert np.abs(got.astype(int) - want).max() <= JPEG_TOL, (b, level)


def test_mpp_sources(svs_slide, tiff_slide, synth_dir):
    import histosynth as synth  # here: it needs imagecodecs, which a bare GPU box lacks

    assert open_slide(svs_slide).mpp.source == "aperio.MPP"
    m = open_slide(tiff_slide).mpp
    assert m.x == pytest.approx(0.5) and m.y == pytest.approx(0.5) and "cm" in m.source
    bare = synth_dir / "nompp.tif"
    synth.write_tiled_tiff(bare, synth.SynthSpec(width=1024, height=1024, seed=4, mpp=None), levels=(1,))
    assert open_slide(bare).mpp is None
    assert open_slide(bare, "openslide").mpp is None


def test_implausible_mpp_is_dropped():
    assert slide_mod.plausible_mpp(0.25, 0.25, "x") is not None
    assert slide_mod.plausible_mpp(0.0001, 0.0001, "x") is None
    assert slide_mod.plausible_mpp(25400.0, 25400.0, "x") is None


def test_plain_tiff_and_png_are_single_level_slides(kidney_tif, tmp_path):
    whole = tifffile.imread(kidney_tif)
    with open_slide(kidney_tif) as s:
        assert s.level_count == 1 and s.dimensions == (whole.shape[1], whole.shape[0]) and s.mpp is None
        np.testing.assert_array_equal(s.read_region((100, 50), 0, (400, 300)), whole[50:350, 100:500])
        edge = s.read_region((whole.shape[1] - 10, 0), 0, (20, 5))
        assert (edge[:, 10:] == 255).all()  # outside the slide is white
    png = tmp_path / "small.png"
    from PIL import Image

    Image.fromarray(whole[:200, :300]).save(png)
    with open_slide(png) as s:
        assert s.backend == "pil"
        np.testing.assert_array_equal(s.read_region((0, 0), 0, (300, 200)), whole[:200, :300])


def test_thumbnail_is_area_average(cmu_svs):
    from PIL import Image

    with open_slide(cmu_svs) as s:
        thumb = s.thumbnail(16, band_bytes=1 << 20)  # small bands: exercise the seams
        full = s.read_region((0, 0), 0, s.dimensions)
    ref = np.asarray(Image.fromarray(full).resize((thumb.shape[1], thumb.shape[0]), Image.Resampling.BOX))
    assert thumb.shape == (round(2967 / 16), round(2220 / 16), 3)
    assert np.abs(thumb.astype(int) - ref).max() <= 2


@pytest.mark.parametrize("backend", ["auto", "tifffile", "openslide"])
def test_bad_files_name_the_file(tmp_path, svs_slide, backend):
    import histosynth as synth  # here: it needs imagecodecs, which a bare GPU box lacks

    text = tmp_path / "notes.svs"
    text.write_text("not a slide")
    empty = tmp_path / "empty.tif"
    empty.write_bytes(b"")
    cut = tmp_path / "cut.svs"
    cut.write_bytes(svs_slide.read_bytes())
    synth.truncate(cut, 0.3)
    for path in (text, empty):
        with pytest.raises(SlideError, match=path.name):
            open_slide(path, backend)
    with pytest.raises(SlideError, match="cut.svs"):
        with open_slide(cut, backend) as s:
            s.read_regions([(0, 0), (s.dimensions[0] - 600, s.dimensions[1] - 600)], 0, (512, 512))


def test_corrupt_tile_fails_only_there(tmp_path, svs_slide):
    import histosynth as synth  # here: it needs imagecodecs, which a bare GPU box lacks

    path = tmp_path / "corrupt.svs"
    path.write_bytes(svs_slide.read_bytes())
    index = synth.corrupt_tile(path)
    with open_slide(path) as s:
        across = -(-s.dimensions[0] // 240)
        tx, ty = (index % across) * 240, (index // across) * 240
        with pytest.raises(SlideError, match="does not decode"):
            s.read_region((tx + 10, ty + 10), 0, (64, 64))
        far = (0 if tx > 600 else s.dimensions[0] - 300, 0 if ty > 600 else s.dimensions[1] - 300)
        assert s.read_region(far, 0, (256, 256)).shape == (256, 256, 3)


@pytest.mark.gpu
def test_cucim_gpu_decode_matches_cpu(cmu_svs):
    """GPU twin of test_real_svs_backends_match_openslide: nvJPEG against libjpeg-turbo."""
    from engine.readers import CuCIMSlide

    rng = np.random.default_rng(3)
    gpu, cpu = CuCIMSlide(cmu_svs, device="cuda"), CuCIMSlide(cmu_svs, device="cpu")
    locs = random_regions(rng, gpu.dimensions, 512, 16)
    diff = np.abs(gpu.read_regions(locs, 0, (512, 512)).astype(int) - cpu.read_regions(locs, 0, (512, 512)))
    assert diff.max() <= 4 and diff.mean() < 0.5
