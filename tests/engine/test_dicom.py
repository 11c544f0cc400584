"""DICOM whole-slide images as a first-class format: a series folder and a single file are each one
slide; wsidicom and OpenSlide give the same pixels; the pixels of a series made from the real CMU
slide are the SVS's own; tiling such a series stores the same patches as the SVS's region, with the
organ the fetch recorded. Older single files without frame positions (the pydicom reader): JPEG
frames through the native batch path equal Pillow's and pydicom's decode, other syntaxes through
pydicom, only the frames a read covers."""
from __future__ import annotations

import logging
import shutil

import numpy as np
import pyarrow.parquet as pq
import pytest

from engine.dataset.export import export_parquet
from engine.discover import find_slides, fingerprint
from engine.fetch.manifest import Entry, write_record
from engine.readers import DicomFramesSlide, choose_backend, open_slide
from engine.slide import SlideError, TruncatedSlideError
from engine.store import PatchStore
from engine.tile import tile_slides
from tests.support.dicom import CMU_CROP, as_older_converter, write_dicom_series
from tests.support.regions import PAD, assert_regions_are_crops, scaled_whole
from tests.support.tiling import CFG


def test_series_folder_reads_as_the_svs_region(cmu_svs, cmu_dicom_raw):
    x0, y0, w, h = CMU_CROP
    rng = np.random.default_rng(1)
    with open_slide(cmu_svs, "tifffile") as svs, open_slide(cmu_dicom_raw) as dcm:
        assert dcm.backend == "wsidicom"
        assert dcm.level_dimensions == ((w, h), (w // 2, h // 2), (w // 4, h // 4))
        assert dcm.level_downsamples == (1.0, 2.0, 4.0)
        assert dcm.mpp is not None and dcm.mpp.x == pytest.approx(svs.mpp.x) and dcm.mpp.source == "dicom.PixelSpacing"
        locs = [(int(x), int(y)) for x, y in zip(rng.integers(0, w - 300, 8), rng.integers(0, h - 300, 8))]
        got = dcm.read_regions(locs, 0, (300, 300))
        want = svs.read_regions([(x + x0, y + y0) for x, y in locs], 0, (300, 300))
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("fixture", ["cmu_dicom", "cmu_dicom_raw"])
def test_wsidicom_and_openslide_agree_on_every_level(fixture, request):
    folder = request.getfixturevalue(fixture)
    rng = np.random.default_rng(2)
    with open_slide(folder, "wsidicom") as a, open_slide(folder, "openslide") as b:
        assert a.level_dimensions == b.level_dimensions
        assert a.mpp.x == pytest.approx(b.mpp.x, rel=1e-3)
        for level in range(a.level_count):
            lw, lh = a.level_dimensions[level]
            ds = a.level_downsamples[level]
            # partly outside the slide too: both give white there
            locs = [(int(x * ds), int(y * ds))
                    for x, y in zip(rng.integers(-64, lw - 64, 6), rng.integers(-64, lh - 64, 6))]
            np.testing.assert_array_equal(a.read_regions(locs, level, (128, 128)),
                                          b.read_regions(locs, level, (128, 128)))


def test_single_file_dicom_that_openslide_rejects_is_read(cmu_crop, tmp_path):
    rgb, mpp = cmu_crop
    path = write_dicom_series(rgb[:512, :768], tmp_path / "one", mpp=mpp, levels=1, codec="jpegls")[0]
    with pytest.raises(SlideError, match="OpenSlide cannot open it"):
        open_slide(path, "openslide")
    assert choose_backend(path)[0].backend == "wsidicom"
    with open_slide(path) as s:
        assert s.backend == "wsidicom" and s.dimensions == (768, 512)
        np.testing.assert_array_equal(s.read_region((0, 0), 0, (768, 512)), rgb[:512, :768])  # JPEG-LS is lossless
    assert find_slides(tmp_path) == ([path], [])


def test_fallback_to_openslide_says_why(cmu_dicom, monkeypatch, caplog):
    import wsidicom

    def refuse(*a, **k):
        raise ValueError("no such module")

    monkeypatch.setattr(wsidicom.WsiDicom, "open", refuse)
    with caplog.at_level(logging.INFO, "engine.readers"), open_slide(cmu_dicom) as s:
        assert s.backend == "openslide"
    assert "fallback: wsidicom cannot open it (ValueError: no such module)" in caplog.text


@pytest.mark.parametrize("codec", ["raw", "jpeg"])
def test_older_single_file_without_frame_positions_is_read_by_pydicom(cmu_svs, cmu_crop, tmp_path, codec, caplog):
    """500 px frames, no ImageType, no DimensionOrganizationType, no pixel spacing, no functional
    groups: wsidicom and OpenSlide refuse it; its frames in TILED_FULL order give the SVS's pixels."""
    rgb, mpp = cmu_crop
    path = as_older_converter(write_dicom_series(rgb, tmp_path / "old", mpp=mpp, tile=500, levels=1, codec=codec))[0]
    with pytest.raises(SlideError):
        open_slide(path, "wsidicom")
    with pytest.raises(SlideError):
        open_slide(path, "openslide")
    x0, y0, w, h = CMU_CROP
    with caplog.at_level(logging.INFO, "engine.readers"), open_slide(path) as s, \
            open_slide(cmu_svs, "tifffile") as svs:
        assert s.backend == "pydicom" and s.dimensions == (w, h) and s.level_count == 1
        assert s.mpp.source == "dicom.ImagedVolumeWidth/TotalPixelMatrixColumns"
        assert s.mpp.x == pytest.approx(svs.mpp.x) and s.mpp.y == pytest.approx(svs.mpp.y)
        locs = [(0, 0), (450, 470), (w - 300, h - 300), (w - 100, 980)]  # across frame edges, and past the end
        got = s.read_regions(locs, 0, (300, 300))
        want = svs.read_regions([(x + x0, y + y0) for x, y in locs], 0, (300, 300))
        want[3, 44:] = 255  # below the pixel matrix: white
        want[3, :, 100:] = 255
        if codec == "raw":
            np.testing.assert_array_equal(got, want)
        else:  # JPEG at quality 95
            assert np.abs(got.astype(int) - want).mean() < 2.5
    assert "backend pydicom (fallback: " in caplog.text


def test_older_series_of_several_files_with_pixel_spacing_tiles(cmu_crop, tmp_path):
    from PIL import Image

    rgb, mpp = cmu_crop
    folder = tmp_path / "slides" / "old-series"
    as_older_converter(write_dicom_series(rgb, folder, mpp=mpp, tile=500, levels=2, codec="raw"), pixel_spacing=True)
    with open_slide(folder) as s:
        assert s.backend == "pydicom" and s.level_dimensions == ((1280, 1024), (640, 512))
        assert s.mpp.source == "dicom.PixelSpacing" and s.mpp.x == pytest.approx(mpp)
        np.testing.assert_array_equal(s.read_region((0, 0), 1, (640, 512)), np.asarray(Image.fromarray(rgb).reduce(2)))
    summary = tile_slides(tmp_path / "slides", tmp_path / "p.zarr", CFG, show_progress=False)
    assert summary.count("done") == 1, summary.text()
    attrs = PatchStore.open(tmp_path / "p.zarr").attrs("old-series")
    assert attrs["backend"] == "pydicom" and attrs["mpp_source"] == "dicom.PixelSpacing"


def older_file(rgb, folder, codec="jpeg", **kw):
    return as_older_converter(write_dicom_series(rgb, folder, tile=500, levels=1, codec=codec, **kw))[0]


def random_regions(rng, n, size, w=1280, h=1024, margin=300):
    return [(int(x), int(y)) for x, y in zip(rng.integers(-margin, w - size[0] + margin, n),
                                             rng.integers(-margin, h - size[1] + margin, n))]


@pytest.mark.parametrize("offsets,fragments", [("basic", 1), ("none", 1), ("none", 2), ("extended", 1)])
def test_older_jpeg_frames_decode_in_native_batches_as_pillow_and_pydicom_do(cmu_crop, tmp_path, offsets, fragments,
                                                                           caplog):
    """Baseline JPEG frames found by the basic offset table, by none (a fragment a frame, or frames
    ending at EOI) or by the extended table decode in the native batch path, the log says so once,
    and the regions (off every edge too, a cold and a warm cache, one and two threads) are Pillow's
    one frame at a time pixel for pixel, and pydicom's own decode of the pixel data within its YCbCr
    rounding (max 1 level, measured on 119 of 3.9 M values)."""
    import pydicom

    rgb, mpp = cmu_crop
    path = older_file(rgb, tmp_path / "old", offsets=offsets, fragments=fragments)
    with caplog.at_level(logging.INFO, "engine.readers"):
        one, two = DicomFramesSlide(path, threads=1), DicomFramesSlide(path, threads=2)
        ref = DicomFramesSlide(path, native=False)
    assert (one.decoder(0), ref.decoder(0)) == ("native", "pillow")
    assert caplog.text.count("decoded by the native batch JPEG path") == 2  # once per open of the file
    assert "JPEG Baseline (Process 1) [1.2.840.10008.1.2.4.50]" in caplog.text
    rng = np.random.default_rng(len(offsets) + fragments)
    for size in [(512, 512), (301, 77), (1, 700)]:
        locs = random_regions(rng, 24, size)
        want = ref.read_regions(locs, 0, size)
        np.testing.assert_array_equal(one.read_regions(locs, 0, size), want)
        np.testing.assert_array_equal(one.read_regions(locs[::-1], 0, size), want[::-1])  # cached frames
        np.testing.assert_array_equal(two.read_regions(locs, 0, size), want)
    frames = pydicom.dcmread(path).pixel_array  # every frame, decoded by pydicom (Pillow, its own YCbCr to RGB)
    whole = frames.reshape(3, 3, 500, 500, 3).transpose(0, 2, 1, 3, 4).reshape(1500, 1500, 3)[:1024, :1280]
    diff = np.abs(one.read_region((0, 0), 0, (1280, 1024)).astype(int) - whole)
    assert diff.max() <= 1 and (diff > 0).mean() < 1e-3, (diff.max(), (diff > 0).mean())
    for s in (one, two, ref):
        s.close()


def test_a_read_takes_only_the_frames_it_covers(cmu_crop, tmp_path, monkeypatch):
    from engine.readers import dicom_frames

    rgb, _ = cmu_crop
    path = older_file(rgb, tmp_path / "old")
    read = []
    frame_bytes = dicom_frames._Level.frame_bytes
    monkeypatch.setattr(dicom_frames._Level, "frame_bytes",
                        lambda self, fd, i: (read.append(i), frame_bytes(self, fd, i))[1])
    with DicomFramesSlide(path) as s:
        assert read == []  # opening reads no frame
        s.read_regions([(10, 10), (300, 20)], 0, (100, 100))
        assert read == [0]  # both in the first frame: read and decoded once
        s.read_region((450, 700), 0, (100, 100))
        assert read == [0, 3, 4]  # the frames under (450..550, 700..800): 500 px frames, 3 across
        s.read_region((0, 0), 0, (64, 64))
        assert read == [0, 3, 4]  # cached


@pytest.mark.parametrize("scale", [2, 4])
def test_older_jpeg_frames_read_dct_scaled(cmu_crop, tmp_path, scale):
    """Lossy JPEG frames offer the DCT scales their 500 px frames divide by (1/2 and 1/4, not 1/8):
    regions at 1/scale are the crops of the whole level read at 1/scale, white outside, and close
    to an area average of the full decode."""
    from PIL import Image

    rgb, _ = cmu_crop
    path = older_file(rgb, tmp_path / "old")
    with DicomFramesSlide(path) as s:
        assert s.decode_scales(0) == (1, 2, 4)
        w, h = 1280 // scale, 1024 // scale
        whole = scaled_whole(s, (1280, 1024), scale)
        full = s.read_region((0, 0), 0, (1280, 1024))
        box = np.asarray(Image.fromarray(full).resize((w, h), Image.Resampling.BOX))
        mse = np.mean((whole[PAD : PAD + h, PAD : PAD + w].astype(float) - box) ** 2)
        assert 10 * np.log10(255**2 / mse) > 40
        assert_regions_are_crops(s, whole, (1280, 1024), scale, 20)


@pytest.mark.parametrize("codec,decoder,words", [("jpeg-lossless", "native", "the native batch JPEG path"),
                                                 ("jpeg2k", "pydicom", "pydicom one at a time (pillow)"),
                                                 ("raw", "pydicom", "pydicom one at a time (uncompressed)")])
def test_other_transfer_syntaxes_decode_losslessly_and_say_how(cmu_crop, tmp_path, codec, decoder, words, caplog):
    """Lossless JPEG takes the native batch path (at full size only); JPEG 2000 and uncompressed
    frames decode through pydicom's own decoders: the source's pixels exactly, the log says which."""
    rgb, _ = cmu_crop
    path = older_file(rgb, tmp_path / "old", codec=codec, offsets="none")
    with caplog.at_level(logging.INFO, "engine.readers"), open_slide(path) as s:
        assert s.backend == "pydicom" and s.decoder(0) == decoder and s.decode_scales(0) == (1,)
        locs = random_regions(np.random.default_rng(3), 12, (300, 300), margin=0)
        np.testing.assert_array_equal(s.read_regions(locs, 0, (300, 300)),
                                      np.stack([rgb[y : y + 300, x : x + 300] for x, y in locs]))
    assert caplog.text.count(f"decoded by {words}") == 1


def test_a_transfer_syntax_pydicom_cannot_decode_here_says_what_to_install(cmu_crop, tmp_path):
    from pydicom.pixels import get_decoder

    if get_decoder("1.2.840.10008.1.2.4.80").is_available:
        pytest.skip("a JPEG-LS decoder for pydicom is installed here")
    rgb, _ = cmu_crop
    path = older_file(rgb[:500, :500], tmp_path / "old", codec="jpegls")
    with pytest.raises(SlideError, match=r"pydicom cannot decode transfer syntax JPEG-LS Lossless Image "
                                         r"Compression \[1.2.840.10008.1.2.4.80\] here \(install one of: .*pylibjpeg"):
        open_slide(path, "pydicom")


def test_a_cut_short_file_and_a_corrupt_frame_name_themselves(cmu_crop, tmp_path):
    """A file cut inside its last frame: one line saying so, whichever reader was tried first. A
    frame whose bytes are garbage: the batch over it fails with the frame's number, reads elsewhere
    still give the reference's pixels."""
    import pydicom

    rgb, _ = cmu_crop
    path = older_file(rgb, tmp_path / "old")
    cut = tmp_path / "cut" / "old.dcm"
    cut.parent.mkdir()
    cut.write_bytes(path.read_bytes()[:-3000])
    with pytest.raises(TruncatedSlideError, match="cut short"):
        open_slide(cut)
    bad = tmp_path / "bad.dcm"
    data = bytearray(path.read_bytes())
    with DicomFramesSlide(path) as s:
        offset, _ = s._levels[0].frames[0][0]
    data[offset + 2 : offset + 66] = np.random.default_rng(0).integers(0, 256, 64, np.uint8).tobytes()
    bad.write_bytes(bytes(data))
    assert pydicom.dcmread(bad).NumberOfFrames == 9
    with DicomFramesSlide(bad) as s, DicomFramesSlide(path, native=False) as ref:
        with pytest.raises(SlideError, match=r"frame 0 of level 0 does not decode"):
            s.read_regions([(0, 0), (600, 600)], 0, (300, 300))
        np.testing.assert_array_equal(s.read_regions([(600, 600)], 0, (300, 300)),
                                      ref.read_regions([(600, 600)], 0, (300, 300)))


def test_series_folder_is_one_slide_and_changes_its_fingerprint(cmu_dicom, tmp_path):
    root = tmp_path / "slides"
    shutil.copytree(cmu_dicom, root / "C3L-00004-21")
    (root / ".partial" / "x").mkdir(parents=True)
    (root / ".partial" / "x" / "a.dcm").write_bytes(b"half")
    slides, ignored = find_slides(root)
    assert slides == [root / "C3L-00004-21"] and ignored == []
    before = fingerprint(root / "C3L-00004-21")
    (root / "C3L-00004-21" / "level-2.dcm").unlink()
    assert fingerprint(root / "C3L-00004-21") != before
    with pytest.raises(SlideError, match="not a DICOM series"):
        open_slide(tmp_path)


def test_tiled_dicom_series_stores_the_svs_patches_and_the_organ(cmu_svs, cmu_dicom_raw, tmp_path):
    root = tmp_path / "slides"
    shutil.copytree(cmu_dicom_raw, root / "MSB-00241-01-05")
    write_record(root, [Entry("MSB-00241-01-05", "colon", "idc", "idc://cmb_crc/MSB-00241-01-05")])
    summary = tile_slides(root, tmp_path / "p.zarr", CFG, show_progress=False)
    assert summary.count("done") == 1, summary.text()
    store = PatchStore.open(tmp_path / "p.zarr")
    attrs = store.attrs("MSB-00241-01-05")
    assert attrs["organ"] == "colon" and attrs["backend"] == "wsidicom"
    coords, patches = store.coords("MSB-00241-01-05"), store.read_patches("MSB-00241-01-05")
    assert len(coords) >= 4
    x0, y0 = CMU_CROP[:2]
    p = store.patch_size
    with open_slide(cmu_svs, "tifffile") as svs:
        want = svs.read_regions([(x + x0, y + y0) for x, y in coords.tolist()], 0, (p, p))
    np.testing.assert_array_equal(patches, want)
    # The export carries the organ without being told it.
    store.write_embeddings("MSB-00241-01-05", np.zeros((len(coords), 384), np.float32), {"model": "test"})
    table = pq.read_table(export_parquet(tmp_path / "p.zarr", tmp_path / "export")[0])
    assert set(table["organ"].to_pylist()) == {"colon"}
