"""make gpu-check: its dry run end to end (so the GPU check cannot rot on machines without a GPU),
the imports it needs on a bare GPU machine, its figures against their goals, and the bundle's
size arithmetic."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from benchmarks.bundle import STORE_READERS, travel_bytes
from benchmarks.gpu import Stage, figures

ROOT = Path(__file__).resolve().parents[2]
# Importable packages the lent GPU machine's image lacks (its package list in the device notes).
ABSENT_ON_GPU_MACHINE = ["zarr", "numcodecs", "donfig", "google_crc32c", "imagecodecs", "tensorflow", "nvidia.dali",
                         "cucim", "openslide", "datasets", "dask", "distributed", "s3fs", "moto"]


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu-check") / "out"
    env = {"PATH": "/usr/bin:/bin", "HOME": str(out.parent)}
    proc = subprocess.run(["make", "-s", "gpu-check", "DRY_RUN=1", f"OUT={out}", f"PY={sys.executable}"], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=600)
    return proc, out


@pytest.mark.slow
def test_dry_run_runs_every_stage(dry_run):
    proc, out = dry_run
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads((out / "gpu-check.json").read_text())
    stages = {s["name"]: s for s in report["stages"]}
    assert list(stages) == ["install", "build", "tests", "kernels", "train", "decode", "realism"]
    for name, s in stages.items():
        assert s["status"] in ("ok", "skipped"), (name, s)
    assert stages["realism"]["status"] == "ok"
    # What comes back from a lent machine is at most 8 files in OUT: the rest lives beside it.
    assert sorted(p.name for p in out.iterdir()) == ["gpu-check.json", "gpu-check.log", "gpu-check.md",
                                                     "real-vs-generated.png", "train-profile.txt"]
    # The table of figures is what it prints last.
    assert proc.stdout.rstrip().splitlines()[-1].startswith("| ")
    assert "| figure | value | goal | met |" in proc.stdout


@pytest.mark.slow
def test_dry_run_figures_come_from_the_suites(dry_run):
    _, out = dry_run
    report = json.loads((out / "gpu-check.json").read_text())
    payloads, figs = report["payloads"], {f["figure"]: f for f in report["figures"]}
    kernels = payloads["kernels"]
    for row in kernels["rows"]:
        if "ms eager" in row:  # every ratio is the quotient of the times in the same row
            assert row["x eager"] == pytest.approx(row["ms eager"] / row["ms"])
    assert figs["GroupNorm+mod+SiLU fwd+bwd x eager (worst shape)"]["value"] == pytest.approx(
        min(r["x eager"] for r in kernels["rows"] if "calls per UNet forward" in r
            and r["name"].startswith("groupnorm")))
    train = {r["name"].rsplit(", ", 1)[1]: r for r in payloads["train"]["rows"] if r["name"].startswith("diffusion")}
    assert set(train) == {"fused", "eager", "compile"}
    assert figs["diffusion step fused x eager"]["value"] == pytest.approx(train["eager"]["ms"] / train["fused"]["ms"])
    assert figs["time-boxed diffusion: steps"]["value"] >= 2  # two legs of one step, then what the time box leaves
    assert any(name.startswith("realism: ") for name in figs)
    profile = (out / "train-profile.txt").read_text()
    assert "diffusion (diffusion-tiny), eager" in profile and "gan (gan-tiny), eager" in profile and "aten::" in profile


def test_the_check_imports_nothing_a_gpu_machine_lacks_beyond_the_bundle():
    """The modules the check runs import with only what the lent machine has plus the wheels that
    gpu-bundle brings (the store's readers)."""
    brought = {n.replace("-", "_") for n in STORE_READERS}
    blocked = [m for m in ABSENT_ON_GPU_MACHINE if m not in brought]
    code = textwrap.dedent(f"""
        import importlib, importlib.abc, sys
        class Absent(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path, target=None):
                if any(name == m or name.startswith(m + ".") for m in {blocked!r}):
                    raise ModuleNotFoundError(f"No module named {{name!r}} (absent on the GPU machine)")
        sys.meta_path.insert(0, Absent())
        for m in ["benchmarks.__main__", "benchmarks.gpu", "benchmarks.kernels", "benchmarks.train",
                  "benchmarks.decode", "benchmarks.realism", "histogen.train", "histogen.evaluate", "histogen.cli",
                  "engine.readers"]:
            importlib.import_module(m)
    """)
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_figures_compare_with_their_goals():
    stages = {n: Stage(n) for n in ("tests", "kernels", "train", "decode", "realism")}
    stages["decode"] = Stage("decode", "skipped", 0.0, "cuCIM is not installed")
    payloads = {"tests": {"passed": 9, "failures": 1, "errors": 0},
                "kernels": {"goal groupnorm x eager >= 2 (worst shape)": 2.5,
                            "goal AdamW+EMA x baseline >= 1.5 (fp32)": 1.2,
                            "rows": [{"name": "all GroupNorms of one UNet fwd+bwd", "x eager": 3.0}]},
                "train": {"diffusion fused x eager": 1.25},
                "realism": {"rows": [{"metric": "stain.eosin_w1", "diffusion": 0.2, "diffusion floor": 0.05}]}}
    got = {f["figure"]: f for f in figures(stages, payloads)}
    assert got["gpu tests failing or erroring"]["met"] is False
    assert got["GroupNorm+mod+SiLU fwd+bwd x eager (worst shape)"]["met"] is True
    assert got["AdamW+EMA x AdamW(fused)+foreach EMA (fp32)"]["met"] is False
    assert got["diffusion step fused x eager"]["met"] is True  # at least the goal
    assert got["GroupNorm fwd+bwd, one UNet's worth, x eager"]["value"] == 3.0
    assert got["cuCIM GPU decode x CPU decode"]["value"] is None
    assert "cuCIM is not installed" in got["cuCIM GPU decode x CPU decode"]["note"]
    assert got["realism: stain.eosin_w1"]["value"] == 0.2 and got["realism: stain.eosin_w1"]["goal"] == "floor 0.05"


def test_travel_bytes_counts_as_tar_does(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "a").write_bytes(b"x" * 513)  # two blocks
    (tmp_path / "d" / "b").write_bytes(b"")  # a header only
    assert travel_bytes([tmp_path / "d"]) == 512 + (512 + 1024) + 512
