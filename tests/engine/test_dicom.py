"""DICOM whole-slide images as a first-class format: a series folder and a single file are each one
slide; wsidicom and OpenSlide give the same pixels; the pixels of a series made from the real CMU
slide are the SVS's own; tiling such a series stores the same patches as the SVS's region, with the
organ the fetch recorded."""
from __future__ import annotations

import logging
import shutil

import numpy as np
import pyarrow.parquet as pq
import pytest

from engine.dataset.export import export_parquet
from engine.discover import find_slides, fingerprint
from engine.fetch.manifest import Entry, write_record
from engine.readers import choose_backend, open_slide
from engine.slide import SlideError
from engine.store import PatchStore
from engine.tile import tile_slides
from tests.support.dicom import CMU_CROP, as_older_converter, write_dicom_series
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
