"""The encoder's name through the whole chain, and the registry as the one place an encoder's
contract lives: the stand-in ViT's entry changed (input size, normalisation, pooling, so width)
reaches the embedder, the store's record, the dataset export, training's conditioning width,
sampling and evaluation's encoder, with nothing else edited."""
from __future__ import annotations

import dataclasses

import numpy as np
import pyarrow.parquet as pq
import pytest

from engine import encoder_registry
from engine.dataset.export import export_parquet
from engine.embed import main as embed
from engine.store import PatchStore
from histogen import config
from histogen.cli import main as histogen
from histogen.config import ConfigError
from histogen.encoders import load_encoder
from histogen.train import train
from histosynth.standin_model import save_torch_standin
from tests.support.stores import make_store
from tests.support.training import SMALL


def test_a_registry_change_reaches_every_consumer(tmp_path, monkeypatch):
    base = encoder_registry.spec("standin-vit")
    changed = dataclasses.replace(base, input_size=112, vit=dataclasses.replace(base.vit, image=112),
                                  norm=encoder_registry.HALF, pooling="cls+mean", width=2 * base.vit.dim)
    monkeypatch.setitem(encoder_registry.ENCODERS, "standin-vit", changed)
    monkeypatch.setattr("engine.torch_encoder.native_bf16", lambda device: False)
    weights = save_torch_standin(tmp_path / "vit")  # built from the changed entry: a 7 x 7 position grid
    store = make_store(tmp_path / "p.zarr", {"s1": 10, "s2": 9, "s3": 8}, patch=32, embeddings=False, he=True)

    assert embed(["--store", str(store), "--encoder", "standin-vit", "--weights", str(weights), "--quiet",
                  "--pipeline", "torch", "--batch-size", "8"]) == 0
    s = PatchStore.open(store)
    attrs = s.embeddings_attrs("s1", "standin-vit")
    assert s.embedding_width("standin-vit") == 384
    assert (attrs["input_size"], attrs["mean"], attrs["pooling"]) == (112, [0.5] * 3, "cls+mean")

    for sid in s.slide_ids():  # what the tiler records and the export needs
        s.slide(sid).attrs.update(level=0, read_size=32)
    table = pq.read_table(export_parquet(store, tmp_path / "out", encoder="standin-vit"))
    assert table["resize"][0].as_py() == [112, 112] and len(table["image_embedding_vector"][0].as_py()[0]) == 384

    run = tmp_path / "run"
    train(config.resolve("diffusion-tiny", SMALL + ["train.steps=1", "data.conditional=true",
                                                    "data.embedding=standin-vit"]), [store], run, show_progress=False)
    assert histogen(["sample", "--run", str(run), "--n", "2", "--steps", "1", "--out", str(tmp_path / "samples"),
                     "--cond-from", str(store)]) == 0
    cond = np.load(tmp_path / "samples" / "conditions.npy")
    assert cond.shape == (2, 384)  # drawn from the standin-vit embeddings, which the run was built for

    encoder = load_encoder(f"standin-vit={weights}")
    assert (encoder.transform.size, encoder.transform.mean, encoder.width) == (112, (0.5,) * 3, 384)
    assert encoder(s.read_patches("s1", [0, 1])).shape == (2, 384)


def test_training_names_a_registry_encoder(tmp_path):
    with pytest.raises(ConfigError, match="data.embedding must be one of path-foundation, uni, uni2-h"):
        config.resolve("diffusion-tiny", ["data.embedding=uni3"])
    store = make_store(tmp_path / "p.zarr", {"s1": 6, "s2": 6}, patch=32, embeddings=True)  # Path Foundation's only
    with pytest.raises(Exception, match="no uni2-h embeddings.*engine.embed --store .* --encoder uni2-h"):
        train(config.resolve("diffusion-tiny", SMALL + ["data.conditional=true", "data.embedding=uni2-h"]), [store],
              tmp_path / "run", show_progress=False)
