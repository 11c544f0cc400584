"""Start-up of `python -m engine.tile`: the first slide is reached within 0.5 s on the 2-core CI machine
only if the command's imports leave out what tiling never calls (issue 19). Guarded by what is imported,
not by timing: cupy (imported by zarr's GPU buffers, 0.15-0.55 s), scipy (only the mask's reference
uses it, 0.13-0.4 s), and the deep-learning frameworks."""
from __future__ import annotations

import importlib.util
import json
import subprocess
import sys

import pytest

from engine.runtime import hidden_modules
from tests.support.data import ROOT

HEAVY = ("cupy", "scipy", "torch", "tensorflow")

# In a fresh interpreter: import the tile command's module, print which heavy modules came with it,
# then whether cupy still imports afterwards (hidden only while zarr imports).
PROBE = f"""
import importlib, json, sys
import engine.tile
loaded = [m for m in {HEAVY!r} if m in sys.modules]
try:
    importlib.import_module("cupy")
    cupy_after = True
except ImportError:
    cupy_after = False
print(json.dumps({{"loaded": loaded, "zarr": "zarr" in sys.modules, "cupy_after": cupy_after}}))
"""


@pytest.fixture(scope="module")
def probe() -> dict:
    r = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout.splitlines()[-1])


def test_tile_command_imports_no_heavy_module(probe):
    assert probe["zarr"]  # the store is imported as before, so the probe measures the real import chain
    assert probe["loaded"] == []


@pytest.mark.skipif(importlib.util.find_spec("cupy") is None,
                    reason="cupy is not installed (cuCIM's package brings it)")
def test_cupy_imports_after_the_store(probe):
    # cuCIM and CUDA detection (engine.runtime) import cupy later in the same process.
    assert probe["cupy_after"]


def test_hidden_modules_hides_only_inside_and_only_what_is_not_loaded():
    name = "colorsys"  # small, pure Python, loaded by nothing in the tests' path
    sys.modules.pop(name, None)
    with hidden_modules(name, "json"):
        with pytest.raises(ImportError):
            importlib.import_module(name)
        assert importlib.import_module("json") is json  # loaded before: left alone
    assert importlib.import_module(name).__name__ == name
    assert sys.modules["json"] is json
