"""engine.embed end to end: real SavedModels with Path Foundation's interface, real stores on disk,
embeddings equal to a direct TensorFlow call on independently resized inputs; bad models and bad
stores get clear errors; a killed run resumes."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import zarr

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import histosynth as synth  # noqa: E402
from engine.embed import EmbedConfig, EmbedError, embed_store, load_model, main  # noqa: E402
from engine.pipeline import Transform  # noqa: E402
from histosynth.standin_model import save_standin  # noqa: E402
from engine.store import PatchStore, StoreError  # noqa: E402
from engine.tile import TileConfig, tile_slides  # noqa: E402
from tests.support.references import resize_reference  # noqa: E402

from tests.support.data import ROOT  # noqa: E402
from tests.support.filesystems import du, leave_free, small_filesystem  # noqa: E402
FAST = dict(workers=2, batch_size=8, qa=False)


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("models")
    return {
        "tiny": save_standin(d / "tiny"),
        "other": save_standin(d / "other", seed=1),
        "width128": save_standin(d / "w128", width=128),
        "size256": save_standin(d / "s256", input_size=256),
        "key": save_standin(d / "key", output_key="embedding"),
        "nan": save_standin(d / "nan", nan=True),
    }


@pytest.fixture(scope="module")
def base_store(tmp_path_factory, svs_slide, tiff_slide, cmu_svs) -> Path:
    """Synthetic SVS and TIFF slides and the real CMU slide, tiled once."""
    d = tmp_path_factory.mktemp("slides")
    for p in (svs_slide, tiff_slide, cmu_svs):
        shutil.copy(p, d / p.name)
    out = d.parent / "base.zarr"
    summary = tile_slides(d, out, TileConfig(**FAST), show_progress=False)
    assert summary.count("done") == 3
    return out


@pytest.fixture
def store_path(base_store, tmp_path) -> Path:
    path = tmp_path / "patches.zarr"
    shutil.copytree(base_store, path)
    return path


def direct_embeddings(model_dir: Path, images: np.ndarray) -> np.ndarray:
    import tensorflow as tf

    fn = tf.saved_model.load(str(model_dir)).signatures["serving_default"]
    x = resize_reference(images, 224)
    return fn(x=tf.constant(x))["output_0"].numpy()


@pytest.mark.parametrize("pipeline", ["dali-cpu", "torch"])
def test_embeddings_equal_direct_tensorflow(store_path, models, pipeline):
    summary = embed_store(store_path, EmbedConfig(model=str(models["tiny"]), batch_size=5, pipeline=pipeline),
                          show_progress=False)
    store = PatchStore.open(store_path)
    assert sorted(summary.done) == store.slide_ids() and not summary.failed
    assert summary.n_patches == sum(int(store.attrs(s)["n_patches"]) for s in store.slide_ids()) >= 20
    for sid in store.slide_ids():
        emb = store.embeddings(sid)
        images = store.slide(sid)["images"][:]
        assert emb.shape == (len(images), 384) and emb.dtype == np.float32
        want = direct_embeddings(models["tiny"], images)
        np.testing.assert_allclose(emb, want, rtol=1e-4, atol=1e-4)
        assert np.abs(emb - emb.mean(0)).max() > 1e-3  # patches differ, so must their embeddings
        attrs = store.embeddings_attrs(sid)
        assert attrs["model"] == str(models["tiny"].resolve())
        assert attrs["revision"].startswith("sha256:")
        assert attrs["input_size"] == 224 and attrs["resize"] == Transform().method and attrs["status"] == "complete"


def test_rerun_is_idempotent_and_a_new_model_replaces(store_path, models):
    cfg = EmbedConfig(model=str(models["tiny"]), batch_size=16)
    embed_store(store_path, cfg, show_progress=False)
    store = PatchStore.open(store_path)
    first = {s: store.embeddings(s) for s in store.slide_ids()}
    again = embed_store(store_path, cfg, show_progress=False)
    assert again.done == [] and sorted(again.skipped) == sorted(first)
    other = embed_store(store_path, EmbedConfig(model=str(models["other"]), batch_size=16), show_progress=False)
    assert sorted(other.done) == sorted(first)
    for sid, old in first.items():
        assert store.embeddings_attrs(sid)["model"] == str(models["other"].resolve())
        assert not np.allclose(store.embeddings(sid), old)  # the other model's weights


def test_full_disk_keeps_finished_embeddings_and_removes_the_unfinished(store_path, base_store, models, tmp_path,
                                                                          capsys):
    """A tmpfs the store fills but for room for the first slide's embeddings: those stay, the
    slide the disk fills up on has none (not half), the rest are not started, one line says so;
    with space, the same command finishes with the embeddings a run with room writes."""
    cfg = ["--model", str(models["tiny"]), "--quiet", "--batch-size", "16"]
    assert main(["--store", str(store_path), *cfg]) == 0
    done = PatchStore.open(store_path)
    first, *rest = done.slide_ids()
    room = du(store_path / "slides" / first / "embeddings")
    assert all(du(store_path / "slides" / sid / "embeddings") > room // 2 for sid in rest)
    with small_filesystem(tmp_path / "fs", 2 * du(base_store)) as fs:
        shutil.copytree(base_store, fs / "p.zarr")
        leave_free(fs, room + room // 4)
        assert main(["--store", str(fs / "p.zarr"), *cfg]) == 1
        out = capsys.readouterr().out
        assert "slides: 1 embedded, 1 failed, 0 skipped (already embedded), 1 not started" in out
        assert [line for line in out.splitlines() if "failed:" in line] == [
            f"failed: {fs / 'p.zarr'}: no space left on the disk: {rest[0]} removed unfinished, 1 slide(s) not "
            "started, 1 complete kept; free space on that disk, then run the same command again to resume"]
        store = PatchStore.open(fs / "p.zarr")
        np.testing.assert_array_equal(store.embeddings(first), done.embeddings(first))
        # no embeddings array left, finished or not, under the slides the disk filled up on or never reached
        assert all(not any(isinstance(node, zarr.Array) and "embeddings" in node.path
                           for _, node in store.slide(sid).members(max_depth=None)) for sid in rest)
        (fs / "ballast").unlink()
        assert main(["--store", str(fs / "p.zarr"), *cfg]) == 0
        assert "2 embedded, 0 failed, 1 skipped" in capsys.readouterr().out
        for sid in done.slide_ids():
            np.testing.assert_array_equal(store.embeddings(sid), done.embeddings(sid))


def test_store_without_complete_slides(tmp_path, models, capsys):
    path = tmp_path / "empty.zarr"
    PatchStore.create_or_resume(path, 512, {})
    with pytest.raises(StoreError, match="no complete slides"):
        embed_store(path, EmbedConfig(model=str(models["tiny"])))
    assert main(["--store", str(path), "--model", str(models["tiny"])]) == 2
    assert main(["--store", str(tmp_path / "missing.zarr"), "--model", str(models["tiny"])]) == 2


@pytest.mark.parametrize("name,message", [
    ("width128", "128"),
    ("size256", "224, 224, 3"),
    ("key", "not output_0"),
])
def test_wrong_model_is_refused(models, name, message):
    with pytest.raises(EmbedError, match=message):
        load_model(str(models[name]))


def test_not_a_savedmodel(tmp_path, store_path, caplog):
    (tmp_path / "notamodel").mkdir()
    (tmp_path / "notamodel" / "weights.h5").write_bytes(b"\0" * 10)
    with pytest.raises(EmbedError, match="not a TensorFlow SavedModel"):
        load_model(str(tmp_path / "notamodel"))
    assert main(["--store", str(store_path), "--model", str(tmp_path / "notamodel"), "--quiet"]) == 2
    assert "not a TensorFlow SavedModel" in caplog.text
    with pytest.raises(EmbedError, match="not a file"):
        load_model(str(tmp_path / "notamodel" / "weights.h5"))
    with pytest.raises(EmbedError, match="no such directory"):
        load_model(str(tmp_path / "nothing" / "here"))


def test_hub_offline_and_gated_give_clear_messages(monkeypatch):
    import httpx2
    import huggingface_hub
    from huggingface_hub.errors import GatedRepoError

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", "/nonexistent-hf-home")
    with pytest.raises(EmbedError, match="pass --model DIR"):
        load_model("google/path-foundation")

    def gated(**kw):
        request = httpx2.Request("GET", "https://huggingface.co/api/models/google/path-foundation")
        response = httpx2.Response(403, request=request)
        raise GatedRepoError("access restricted", response=response)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", gated)
    with pytest.raises(EmbedError, match="accept its terms on https://huggingface.co/google/path-foundation.*HF_TOKEN"):
        load_model("google/path-foundation")


def test_nan_model_fails_slides_without_writing(store_path, models, capsys):
    assert main(["--store", str(store_path), "--model", str(models["nan"]), "--quiet"]) == 1
    store = PatchStore.open(store_path)
    assert all(store.embeddings_attrs(s) is None for s in store.slide_ids())
    out = capsys.readouterr().out
    assert out.count("NaN or inf") == len(store.slide_ids())


def test_nan_input_is_refused(models):
    model = load_model(str(models["tiny"]))
    x = np.random.default_rng(0).random((2, 224, 224, 3), dtype=np.float32)
    assert model(x).shape == (2, 384)
    x[1, 5, 5, 0] = np.nan
    with pytest.raises(EmbedError, match="NaN"):
        model(x)


def test_killed_run_resumes(tmp_path, models):
    """A real process killed after its first slide: the rerun skips what was finished and the store
    ends up equal to an uninterrupted run."""
    slides = tmp_path / "slides"
    slides.mkdir()
    for i in range(4):
        synth.write_svs(slides / f"s{i}.svs", synth.SynthSpec(width=2048, height=1536, seed=10 + i, mpp=0.25),
                        levels=(1, 4))
    store = tmp_path / "p.zarr"
    tile_slides(slides, store, TileConfig(**FAST), show_progress=False)
    ids = PatchStore.open(store).slide_ids()
    model = tmp_path / "vit"
    save_standin(model, arch="vit-s16")  # a real ViT-S costs ~50 ms a patch here: slow enough to kill mid-run
    clean = tmp_path / "clean.zarr"
    shutil.copytree(store, clean)

    proc = subprocess.Popen([sys.executable, "-m", "engine.embed", "--store", str(store), "--model", str(model),
                             "--batch-size", "4", "--quiet"], cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    first = store / "slides" / ids[0] / "embeddings"  # a group of one array per encoder

    def first_done() -> bool:
        return any('"complete"' in p.read_text() for p in first.glob("*/zarr.json"))

    deadline = time.time() + 120
    while time.time() < deadline and not first_done():
        assert proc.poll() is None, "the run ended before it could be killed"
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done_before = [s for s in ids if PatchStore.open(store).embeddings_attrs(s) is not None]
    assert 1 <= len(done_before) < len(ids)

    resumed = embed_store(store, EmbedConfig(model=str(model), batch_size=4), show_progress=False)
    assert sorted(resumed.skipped) == done_before and sorted(resumed.done) == [s for s in ids if s not in done_before]
    embed_store(clean, EmbedConfig(model=str(model), batch_size=4), show_progress=False)
    a, b = PatchStore.open(store), PatchStore.open(clean)
    for sid in ids:
        np.testing.assert_allclose(a.embeddings(sid), b.embeddings(sid), rtol=1e-5, atol=1e-5)
        np.testing.assert_array_equal(a.slide(sid)["images"][:], b.slide(sid)["images"][:])  # patches untouched


def test_progress_in_a_log_file_is_status_lines(store_path, models, tmp_path, monkeypatch, caplog):
    """Output that is not a terminal: status lines of the patches embedded (a line per update here,
    HISTOGEN_PROGRESS_SECONDS=0) instead of a bar; with --quiet none."""
    n = sum(PatchStore.open(store_path).n_patches(s) for s in PatchStore.open(store_path).slide_ids())
    log = tmp_path / "embed.log"
    env = {**os.environ, "HISTOGEN_PROGRESS_SECONDS": "0"}
    with open(log, "w") as f:
        cmd = [sys.executable, "-m", "engine.embed", "--store", str(store_path), "--model", str(models["tiny"]),
               "--batch-size", "8"]
        assert subprocess.run(cmd, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT, env=env, timeout=300).returncode == 0
    lines = [line for line in log.read_text().splitlines() if line.startswith("INFO embed: ")]
    assert len(lines) >= 3 and all(f"/{n} patch (" in line and "patch/s" in line for line in lines)
    assert lines[-1].startswith(f"INFO embed: {n}/{n} patch (100%)") and lines[-1].endswith("0:00 left")
    monkeypatch.setenv("HISTOGEN_PROGRESS_SECONDS", "0")
    assert main(["--store", str(store_path), "--model", str(models["tiny"]), "--overwrite", "--quiet"]) == 0
    assert not [r for r in caplog.records if r.name == "histogen.progress"]


LOAD = "import engine.embed as e; e.load_model(M)"
STEP = """import torch, triton
m = torch.nn.Linear(4, 4); o = torch.optim.AdamW(m.parameters()); m(torch.ones(2, 4)).sum().backward(); o.step()
@triton.jit
def k(x):
    pass"""
ORDERS = {
    "tensorflow-then-triton": [LOAD, STEP],
    "triton-then-tensorflow": [STEP, LOAD],
    "bare-tensorflow-then-triton": ["import tensorflow", STEP, LOAD],
    "torch-then-tensorflow-then-optimizer": ["import torch", LOAD, STEP],
}


@pytest.mark.parametrize("order", sorted(ORDERS))
def test_tensorflow_and_triton_in_any_order(order, models, tmp_path):
    """triton >= 3.7 kills the process when loaded after TensorFlow (ENVIRONMENT.md); the pinned
    3.6 must survive every import order the package allows."""
    script = tmp_path / "order.py"  # a file: triton.jit reads the kernel's source
    script.write_text(f"M = {str(models['tiny'])!r}\n" + "\n".join(ORDERS[order]) + "\nprint('ok')\n")
    r = subprocess.run([sys.executable, str(script)], cwd=ROOT, capture_output=True, text=True, timeout=300,
                       env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert r.returncode == 0 and r.stdout.strip().endswith("ok"), r.stderr[-2000:]
