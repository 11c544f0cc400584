"""python -m engine.embed --encoder NAME: a torch encoder's embeddings beside Path Foundation's in
the same store, equal to the model run directly on independently resized, normalised patches;
a rerun skips them; offline without weights, one line and exit 2."""
from __future__ import annotations

import logging
import os

import numpy as np
import pytest
import torch

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from engine.embed import main  # noqa: E402
from engine.encoder_registry import spec  # noqa: E402
from engine.store import PatchStore  # noqa: E402
from engine.torch_encoder import build  # noqa: E402
from engine.vit import pool  # noqa: E402
from histosynth.standin_model import save_standin, save_torch_standin  # noqa: E402
from tests.support.references import resize_reference  # noqa: E402
from tests.support.stores import make_store  # noqa: E402


@pytest.fixture(scope="module")
def store_path(tmp_path_factory):
    return make_store(tmp_path_factory.mktemp("store") / "p.zarr", {"a": 6, "b": 3}, patch=64, embeddings=False)


def test_two_encoders_side_by_side(store_path, tmp_path, monkeypatch):
    monkeypatch.setattr("engine.torch_encoder.native_bf16", lambda device: False)  # fp32: exact comparison
    vit = save_torch_standin(tmp_path / "vit", seed=2)
    pf = save_standin(tmp_path / "pf")
    args = ["--store", str(store_path), "--batch-size", "4", "--quiet", "--pipeline", "torch"]
    assert main(args + ["--encoder", "standin-vit", "--weights", str(vit)]) == 0
    assert main(args + ["--weights", str(pf)]) == 0  # Path Foundation's interface, the default encoder
    store = PatchStore.open(store_path)
    assert store.embedding_names("a") == ["path-foundation", "standin-vit"]
    assert store.embedding_width() == 384 and store.embedding_width("standin-vit") == 192

    e = spec("standin-vit")
    x = (resize_reference(store.read_patches("a", list(range(6))), 224) - np.float32(e.norm[0])) / np.float32(e.norm[1])
    torch.manual_seed(2)
    net = build(e).eval()
    with torch.no_grad():
        want = pool(net(torch.from_numpy(x).permute(0, 3, 1, 2)), e.vit.prefix, e.pooling).numpy()
    np.testing.assert_allclose(store.embeddings("a", name="standin-vit"), want, atol=2e-4)
    attrs = store.embeddings_attrs("a", "standin-vit")
    assert attrs["encoder"] == "standin-vit" and attrs["revision"] == attrs["weights_hash"]
    assert attrs["weights_hash"].startswith("sha256:")
    assert attrs["mean"] == list(e.norm[0]) and attrs["std"] == list(e.norm[1]) and attrs["pooling"] == "cls"

    before = store.embeddings("b", name="standin-vit")
    assert main(args + ["--encoder", "standin-vit", "--weights", str(vit)]) == 0  # up to date: skipped
    np.testing.assert_array_equal(PatchStore.open(store_path).embeddings("b", name="standin-vit"), before)


def test_offline_without_weights_is_one_line_and_exit_2(store_path, monkeypatch, tmp_path, caplog):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    with caplog.at_level(logging.ERROR):
        assert main(["--store", str(store_path), "--encoder", "uni2-h", "--quiet"]) == 2
    (line,) = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert line.startswith("uni2-h (MahmoodLab/UNI2-h): cannot reach the Hugging Face Hub")
    assert "https://huggingface.co/MahmoodLab/UNI2-h" in line and "pass --weights PATH" in line and "\n" not in line


def test_conch_v1_is_one_line_and_exit_2(store_path, caplog):
    with caplog.at_level(logging.ERROR):
        assert main(["--store", str(store_path), "--encoder", "conch", "--quiet"]) == 2
    (line,) = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert line.startswith("conch (MahmoodLab/CONCH, CONCH v1's image tower): its code is on GitHub only")
    assert "not on the package index" in line and "--encoder conch-v1.5" in line and "\n" not in line
