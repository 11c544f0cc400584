"""histogen eval --encoder NAME, repeated: Fréchet distance and precision/recall in each further
encoder's space, equal to what that encoder gives as the primary one; a registry encoder loads by
name with =WEIGHTS; one that cannot load is skipped with the line saying how to give its weights."""
from __future__ import annotations

import json
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr

from histogen.cli import main
from histosynth.standin_model import save_torch_standin
from tests.support.stores import make_store


@pytest.fixture(autouse=True)
def fast(tmp_path, monkeypatch):
    import histogen.cli
    from histogen.evaluate import EvalConfig
    from histogen.two_sample import TwoSampleConfig

    monkeypatch.setenv("HISTOGEN_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr("engine.torch_encoder.native_bf16", lambda device: False)
    monkeypatch.setattr(histogen.cli, "EvalConfig",
                        partial(EvalConfig, two_sample=TwoSampleConfig(steps=5, min_steps=5)))


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> tuple[Path, Path, Path, Path]:
    d = tmp_path_factory.mktemp("data")
    store = make_store(d / "p.zarr", {"s1": 12, "s2": 10}, patch=32, embeddings=False, he=True)
    samples = d / "samples"
    samples.mkdir()
    images = make_store(d / "other.zarr", {"x": 16}, patch=32, embeddings=False, he=True, seed=4)
    from engine.store import PatchStore

    zarr.create_array(str(samples / "samples.zarr"), data=PatchStore.open(images).read_patches("x", list(range(16))),
                      chunks=(1, 32, 32, 3))
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 7, 4), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(2),
                              torch.nn.Flatten())
    torch.jit.save(torch.jit.script(net), str(d / "encoder.pt"))
    return store, samples, d / "encoder.pt", save_torch_standin(d / "vit", seed=1)


def evaluate(out: Path, store: Path, samples: Path, *encoders) -> dict:
    args = ["eval", "--samples", str(samples), "--real", str(store), "--out", str(out), "--n", "10"]
    assert main(args + [x for e in encoders for x in ("--encoder", str(e))]) == 0
    return json.loads((out / "metrics.json").read_text())


def test_further_encoders_give_what_they_give_as_the_primary(data, tmp_path, monkeypatch):
    from huggingface_hub import constants

    store, samples, pt, vit = data
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    alone = evaluate(tmp_path / "a", store, samples, f"standin-vit={vit}")
    both = evaluate(tmp_path / "b", store, samples, pt, f"standin-vit={vit}", "uni2-h")
    m, f = both["metrics"], both["floor"]
    assert m["frechet_distance"] != m["frechet_distance[standin-vit]"]  # two spaces, two numbers
    assert np.isclose(m["frechet_distance[standin-vit]"], alone["metrics"]["frechet_distance"], rtol=1e-5)
    assert np.isclose(f["frechet_distance[standin-vit]"], alone["floor"]["frechet_distance"], rtol=1e-5)
    assert m["precision_recall[standin-vit]"] == alone["metrics"]["precision_recall"]
    assert alone["info"]["encoder_untrained"]  # the stand-in carries the untrained marker ...
    assert {"frechet_distance[standin-vit]", "precision_recall[standin-vit]"} <= set(both["info"]["meaningless"])
    for name in ("frechet_distance[uni2-h]", "precision_recall[uni2-h]"):  # ... and UNI2-h cannot load offline
        why = both["skipped"][name]
        assert "cannot reach the Hugging Face Hub" in why and "pass --encoder uni2-h=PATH" in why
