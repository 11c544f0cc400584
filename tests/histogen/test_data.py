"""histogen.batches and histogen.config: slide-level splits, batches as functions of (seed, step),
DALI and torch batches agree, stain jitter, and clear errors."""
from __future__ import annotations


import numpy as np
import pytest
import torch

from engine.store import PatchStore, SlideRef
from histogen import config
from histogen.batches import Batches, DataError, StepSampler, embeddings_from, list_slides, split_slides
from histogen.config import ConfigError, RunConfig
from histogen.stain import stain_jitter
from tests.support.references import resize_reference
from tests.support.stores import make_store


def run_cfg(**data) -> RunConfig:
    return config.from_dict({"kind": "diffusion", "resolution": 32, "data": {"workers": 0, **data},
                             "train": {"batch_size": 4, "seed": 3}})


def test_split_is_by_slide_and_stable():
    refs = [SlideRef("s.zarr", f"slide{i}", 10) for i in range(20)]
    train, val = split_slides(refs, 0.2, seed=0)
    assert len(val) == 4 and len(train) == 16 and not {r.slide for r in train} & {r.slide for r in val}
    assert split_slides(list(reversed(refs)), 0.2, seed=0) == (train, val)  # order of discovery does not matter
    assert split_slides(refs, 0.2, seed=1)[1] != val
    assert split_slides(refs[:2], 0.1, 0)[1] and split_slides(refs[:1], 0.1, 0)[1] == []
    # The draw is over slide ids: a store of another name (re-tiled) gives the same split, and a
    # slide in two stores (two scales) lands on one side, its other copies with it.
    renamed = [SlideRef("s-retiled.zarr", r.slide, r.n) for r in refs]
    assert [r.slide for r in split_slides(renamed, 0.2, seed=0)[1]] == [r.slide for r in val]
    both = refs + [SlideRef("t.zarr", f"slide{i}", 5) for i in range(0, 20, 2)]
    train2, val2 = split_slides(both, 0.2, seed=0)
    assert {r.slide for r in val2} == {r.slide for r in val} and not {r.slide for r in train2} & {r.slide for r in val2}
    assert len(train2) + len(val2) == 30


def test_step_sampler_is_a_function_of_the_step():
    full = StepSampler(10, 4, seed=5)
    stream = [i for s in range(5) for i in full.batch(s)]
    for e in range(2):  # each epoch is a permutation of all patches
        assert sorted(stream[10 * e : 10 * e + 10]) == list(range(10))
    resumed = StepSampler(10, 4, seed=5, start_step=3, steps=2)
    assert list(resumed) == [full.batch(3), full.batch(4)]
    ranks = [StepSampler(10, 4, seed=5, rank=r, world=2).batch(2) for r in range(2)]
    assert ranks[0] + ranks[1] == full.batch(2)
    with pytest.raises(DataError, match="divisible"):
        StepSampler(10, 5, seed=0, world=2)


def test_batches_are_resized_patches_and_resume_exactly(tmp_path):
    path = make_store(tmp_path / "s.zarr", {"a": 7, "b": 5})
    refs = list_slides([path], 32, conditional=True)
    cfg = run_cfg(conditional=True, flip=False, rot90=False)
    it = Batches(refs, cfg, torch.device("cpu"), steps=3)
    batches = [next(it) for _ in range(3)]
    store = PatchStore.open(path)
    allimg = np.concatenate([store.slide(r.slide)["images"][:] for r in refs])
    allemb = np.concatenate([store.embeddings(r.slide) for r in refs])
    for s, b in enumerate(batches):
        idx = it.sampler.batch(s)
        want = resize_reference(allimg[idx], 32).transpose(0, 3, 1, 2) * 2 - 1
        assert b["images"].shape == (4, 3, 32, 32)
        np.testing.assert_allclose(b["images"].numpy(), want, atol=2e-4)
        np.testing.assert_array_equal(b["cond"].numpy(), allemb[idx])
    aug = run_cfg(conditional=True, flip=True, rot90=True, stain_jitter=0.05)
    first = [next(Batches(refs, aug, torch.device("cpu"), start_step=s, steps=1))["images"] for s in range(3)]
    again = [next(Batches(refs, aug, torch.device("cpu"), start_step=s, steps=1))["images"] for s in range(3)]
    for x, y in zip(first, again):
        torch.testing.assert_close(x, y, rtol=0, atol=0)


def test_dali_and_torch_batches_agree(tmp_path):
    path = make_store(tmp_path / "s.zarr", {"a": 9})
    refs = list_slides([path], 32, conditional=False)
    a, b = (next(Batches(refs, run_cfg(pipeline=be, flip=False, rot90=False), torch.device("cpu"), steps=1))["images"]
            for be in ("dali-cpu", "torch"))
    assert (a - b).abs().max().item() < 2e-4


def test_stain_jitter_is_mild_and_off_at_zero():
    x = torch.rand(4, 3, 16, 16) * 1.6 - 0.9
    g = torch.Generator().manual_seed(0)
    torch.testing.assert_close(stain_jitter(x, 0.0, g), x, atol=1e-4, rtol=0)
    y = stain_jitter(x, 0.05, g)
    d = (y - x).abs()
    assert 1e-3 < d.mean().item() < 0.1 and y.min() >= -1 and y.max() <= 1


def test_data_errors(tmp_path):
    plain = make_store(tmp_path / "plain.zarr", {"a": 3}, embeddings=False)
    with pytest.raises(DataError, match="no path-foundation embeddings but the preset is conditional.*engine.embed"):
        list_slides([plain], 32, conditional=True)
    with pytest.raises(DataError, match="larger than its 64 px patches"):
        list_slides([plain], 128, conditional=False)
    empty = tmp_path / "empty.zarr"
    PatchStore.create_or_resume(empty, 64, {})
    with pytest.raises(DataError, match="no complete slide"):
        list_slides([empty], 32, conditional=False)
    with pytest.raises(DataError, match="not a patch store"):
        list_slides([tmp_path / "missing.zarr"], 32, conditional=False)
    with pytest.raises(DataError, match="no path-foundation embeddings to condition on"):
        embeddings_from(plain, 4, 0)
    emb = embeddings_from(make_store(tmp_path / "e.zarr", {"a": 3}), 5, 0)
    assert emb.shape == (5, 384)


def test_config_presets_overrides_and_errors(tmp_path):
    assert {"ae-f8", "gan-128", "diffusion-64", "ldm-256"} <= set(config.presets())
    for name in config.presets():
        cfg = config.resolve(name)
        assert cfg.kind in config.KINDS
    cfg = config.resolve("diffusion-64", ["train.steps=7", "model.channel_mult=[1, 2]", "data.flip=false"])
    assert cfg.train.steps == 7 and cfg.model["channel_mult"] == [1, 2] and cfg.data.flip is False
    config.save(cfg, tmp_path / "c.yaml")
    assert config.load(tmp_path / "c.yaml") == cfg
    with pytest.raises(ConfigError, match="unknown preset 'nope'; choose one of"):
        config.resolve("nope")
    with pytest.raises(ConfigError, match="unknown train key.*stepz.*known keys:"):
        config.resolve("diffusion-64", ["train.stepz=3"])
    with pytest.raises(ConfigError, match="expected key=value"):
        config.resolve("diffusion-64", ["train.steps"])
    with pytest.raises(ConfigError, match="at least 1"):
        config.resolve("diffusion-64", ["train.batch_size=0"])
