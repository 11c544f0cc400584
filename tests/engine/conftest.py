"""Fixtures of the engine tests: three small slides (and a file that is not one) and the store one
process makes of them, the reference for the scale-out and object-store runs."""
from __future__ import annotations

from pathlib import Path

import pytest

from engine.store import PatchStore
from engine.tile import main
from tests.support.dicom import CMU_CROP
from tests.support.tiling import ARGS


@pytest.fixture(scope="module")
def slides(tmp_path_factory) -> Path:
    """Three small slides and a file that is not a slide."""
    import histosynth as synth

    d = tmp_path_factory.mktemp("slides")
    for i in range(3):
        synth.write_svs(d / f"s{i}.svs", synth.SynthSpec(width=2048, height=1536, seed=10 + i, mpp=0.25), levels=(1, 4))
    (d / "fake.svs").write_text("not a slide")
    return d


@pytest.fixture(scope="module")
def reference(slides, tmp_path_factory) -> Path:
    """The store one process makes."""
    out = tmp_path_factory.mktemp("ref") / "p.zarr"
    assert main(["--slides", str(slides), "--out", str(out), *ARGS]) == 1  # fake.svs fails
    assert PatchStore.open(out).slide_ids() == ["s0", "s1", "s2"]
    return out


@pytest.fixture(scope="session")
def cmu_crop(cmu_svs):
    """The crop of the real CMU slide (tifffile, tile-exact) that the DICOM series are made of."""
    from engine.readers import open_slide

    x, y, w, h = CMU_CROP
    with open_slide(cmu_svs, "tifffile") as s:
        return s.read_region((x, y), 0, (w, h)), s.mpp.x


@pytest.fixture(scope="session")
def cmu_dicom(cmu_crop, tmp_path_factory) -> Path:
    """The crop as IDC serves slides: a DICOM series folder, an instance per level (3), JPEG frames."""
    from tests.support.dicom import write_dicom_series

    rgb, mpp = cmu_crop
    folder = tmp_path_factory.mktemp("dicom") / "CMU-crop"
    write_dicom_series(rgb, folder, mpp=mpp, container="CMU-crop")
    return folder


@pytest.fixture(scope="session")
def cmu_dicom_raw(cmu_crop, tmp_path_factory) -> Path:
    """The same series with uncompressed frames: its pixels are exactly the SVS's."""
    from tests.support.dicom import write_dicom_series

    rgb, mpp = cmu_crop
    folder = tmp_path_factory.mktemp("dicom-raw") / "CMU-raw"
    write_dicom_series(rgb, folder, mpp=mpp, container="CMU-raw", codec="raw")
    return folder
