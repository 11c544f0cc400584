"""Shared fixtures: the real slides in ../shared/data (skipped with a reason where absent) and small
synthetic slides written once per session with histosynth."""
from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.data import shared_file



@pytest.fixture(scope="session")
def cmu_svs() -> Path:
    return shared_file("slides/CMU-1-Small-Region.svs")


@pytest.fixture(scope="session")
def kidney_tif() -> Path:
    return shared_file("odd/kidney-48-5.tif")


@pytest.fixture(scope="session")
def synth_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("synth")


@pytest.fixture(scope="session")
def svs_slide(synth_dir) -> Path:
    """Aperio-style SVS, 240 px JPEG tiles, two pyramid levels, 0.25 µm/px."""
    import histosynth as synth  # here, not above: it needs imagecodecs, absent on a bare GPU box

    path = synth_dir / "aperio.svs"
    synth.write_svs(path, synth.SynthSpec(width=2400, height=1800, seed=1, mpp=0.25, jpeg_quality=90), levels=(1, 4))
    return path


@pytest.fixture(scope="session")
def tiff_slide(synth_dir) -> Path:
    """CAMELYON-style generic pyramidal TIFF, 512 px JPEG tiles, 0.5 µm/px in resolution tags."""
    import histosynth as synth

    path = synth_dir / "camelyon.tif"
    synth.write_tiled_tiff(path, synth.SynthSpec(width=2560, height=2048, seed=2, mpp=0.5, jpeg_quality=90),
                           levels=(1, 2, 4))
    return path


def pytest_collection_modifyitems(config, items):
    from engine.runtime import cuda_available

    if cuda_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device; its CPU twin runs everywhere")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
