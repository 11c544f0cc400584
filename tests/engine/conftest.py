"""Fixtures of the engine tests: three small slides (and a file that is not one) and the store one
process makes of them, the reference for the scale-out and object-store runs."""
from __future__ import annotations

from pathlib import Path

import pytest

import histosynth as synth
from engine.store import PatchStore
from engine.tile import main
from tests.support.tiling import ARGS


@pytest.fixture(scope="module")
def slides(tmp_path_factory) -> Path:
    """Three small slides and a file that is not a slide."""
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
