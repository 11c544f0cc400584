"""Training and evaluation use only the patches that pass the patch check: a store's rejected
patches (--keep-rejected) are left out, data.qc tightens the thresholds from the stored scores,
looser ones are refused, and stores and runs from before the check had scores still work."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from engine.qc import REASONS, SCORES, PatchQC
from engine.store import PatchStore
from histogen import config
from histogen.batches import Batches, SlidePatches, list_slides
from histogen.config import ConfigError
from histogen.evaluation.patches import Patches
from histogen.run_folder import RunFolder
from tests.support.stores import make_store

TISSUE = np.array([0.9, 0.05, 0.3, 0.7, 0.8, 0.2, 0.95, 0.5], np.float32)  # min_tissue 0.1 rejects row 1
REJECTED = {1: REASONS["tissue"], 4: REASONS["ink"] | REASONS["blur"]}  # as --keep-rejected stores them


def known_qc() -> PatchQC:
    scores = {name: np.zeros(len(TISSUE), np.float32) for name in SCORES}
    scores.update(tissue=TISSUE, focus=np.ones(len(TISSUE), np.float32))  # sharp, no fold or bubble
    scores["ink"][3] = 0.02  # passes the default max_ink
    reasons = np.zeros(len(TISSUE), np.uint8)
    for row, bits in REJECTED.items():
        reasons[row] = bits
    return PatchQC(scores, reasons)


@pytest.fixture
def stores(tmp_path):
    checked = make_store(tmp_path / "qc.zarr", {"a": 8, "b": 8}, qc={"a": known_qc(), "b": known_qc()})
    old = make_store(tmp_path / "old.zarr", {"c": 5})  # tiled before the check had scores
    return checked, old


def run_cfg(**qc) -> config.RunConfig:
    return config.from_dict({"kind": "diffusion", "resolution": 32,
                             "data": {"workers": 0, "flip": False, "rot90": False, "qc": qc},
                             "train": {"batch_size": 4, "seed": 3}})


def used_images(refs, cfg) -> np.ndarray:
    """Every image the training batches of `refs` draw in one epoch, in dataset order."""
    ds = SlidePatches(refs, cfg.data.conditional)
    return np.stack([ds[i][0] for i in range(len(ds))])


def test_training_uses_only_passing_patches(stores):
    checked, _ = stores
    refs = list_slides([checked], 32)
    want = [0, 2, 3, 5, 6, 7]
    assert [r.n for r in refs] == [6, 6] and all(r.rows.tolist() == want for r in refs)
    store = PatchStore.open(checked)
    np.testing.assert_array_equal(used_images(refs, run_cfg()),
                                  np.concatenate([store.read_patches(r.slide, want) for r in refs]))
    batch = next(Batches(refs, run_cfg(), torch.device("cpu"), steps=1))  # the loop's batches come from those only
    assert batch["images"].shape == (4, 3, 32, 32)
    drawn = Patches.draw(refs, 20, 0).rows  # evaluation and memorisation draw the same rows
    assert len(drawn) == 12 and set(drawn[:, 1].tolist()) == set(want)


def test_tightening_at_training_time_drops_more_and_loosening_is_refused(stores, tmp_path):
    checked, old = stores
    cfg = config.resolve("diffusion-tiny", ["data.qc.min_tissue=0.6"])
    assert cfg.data.qc == {"min_tissue": 0.6}
    refs = list_slides([checked], 32, qc=cfg.data.qc)
    assert all(r.rows.tolist() == [0, 3, 6] for r in refs)  # 0.3, 0.2 and 0.5 now fail too; 0.8 still has ink
    assert all(r.rows.tolist() == [0, 2, 5, 6, 7] for r in list_slides([checked], 32, qc={"max_ink": 0.01}))
    with pytest.raises(ConfigError, match=r"data.qc.min_tissue=0.05 is looser than the 0.1 .*qc.zarr: slide a"):
        list_slides([checked], 32, qc={"min_tissue": 0.05})
    # eval: the store's holds
    assert [r.n for r in list_slides([checked], 32, qc={"min_tissue": 0.05}, strict=False)] == [6, 6]
    with pytest.raises(ConfigError, match="has no patch-check scores"):
        list_slides([old], 32, qc={"min_tissue": 0.5})
    with pytest.raises(ConfigError, match="unknown data.qc key.*max_nothing.*known keys: min_tissue"):
        config.resolve("diffusion-tiny", ["data.qc.max_nothing=1"])
    with pytest.raises(ConfigError, match="expected a number"):
        config.resolve("diffusion-tiny", ["data.qc.min_tissue=yes"])
    from histogen.train import train  # refused before the run folder is made

    with pytest.raises(ConfigError, match="looser"):
        train(config.resolve("diffusion-tiny", ["data.qc.min_tissue=0.01", "data.workers=0"]), [checked],
              tmp_path / "run", show_progress=False)
    assert not (tmp_path / "run").exists()


def test_an_old_store_trains_on_everything(stores):
    _, old = stores
    (ref,) = list_slides([old], 32)
    assert ref.n == 5 and ref.rows.tolist() == list(range(5))
    np.testing.assert_array_equal(used_images([ref], run_cfg()), PatchStore.open(old).read_patches("c"))


def test_split_json_round_trips_and_old_ones_load(stores, tmp_path):
    checked, old = stores
    cfg = run_cfg(min_tissue=0.6)
    refs = list_slides([checked], 32, qc=cfg.data.qc)
    RunFolder(tmp_path / "run").write(cfg, refs[:1], refs[1:])
    split = RunFolder(tmp_path / "run").split  # read back, not what the writer kept
    assert split["train"] == refs[:1] and split["val"][0].rows.tolist() == [0, 3, 6]
    # A run from before the check had scores: {store, slide, n} per slide, the config without data.qc.
    legacy = tmp_path / "legacy"
    legacy.mkdir()
    d = run_cfg().to_dict()
    del d["data"]["qc"]
    (legacy / "config.yaml").write_text(json.dumps(d))
    (legacy / "split.json").write_text(json.dumps({"train": [{"store": str(old), "slide": "c", "n": 5}],
                                                   "val": [{"store": str(checked), "slide": "a", "n": 8}]}))
    split = RunFolder(legacy).split
    # the stored rejections stay out
    assert split["train"][0].rows.tolist() == list(range(5)) and split["val"][0].n == 6
