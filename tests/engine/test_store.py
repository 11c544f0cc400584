"""The patch store on disk: whole-shard appends keep every patch in order, groups become complete
only in finish, and a store made with other parameters is never silently reused."""
from __future__ import annotations

import numpy as np
import pytest
import zarr

from engine.qc import REASONS, SCORES, CheckParams, PatchQC
from engine.store import COMPLETE, Codec, PatchStore, StoreError

P = 32
PARAMS = {"patch_size": P, "stride": None, "mask": {"white": 220}}


def finish(writer):
    return writer.finish(np.ones((4, 5), np.uint8), {"downsample": [8.0, 8.0]}, {"extra": 1})


@pytest.mark.parametrize("codec", [Codec(), Codec("lz4", 5), Codec("none")])
def test_appends_in_any_batch_sizes_round_trip(tmp_path, codec):
    rng = np.random.default_rng(7)
    store = PatchStore.create_or_resume(tmp_path / "s.zarr", P, PARAMS)
    writer = store.begin_slide("a", {"source": "a.svs"}, capacity=10, codec=codec, shard=4)
    batches = [rng.integers(0, 256, (n, P, P, 3), dtype=np.uint8) for n in (5, 0, 7, 1, 20, 3)]
    coords = [rng.integers(0, 10**6, (len(b), 2)) for b in batches]
    tissue = [rng.random(len(b)).astype(np.float32) for b in batches]
    for b, c, t in zip(batches, coords, tissue):
        writer.append(b, c, t)
    assert store.slide_ids() == []  # not complete until finish
    assert finish(writer) == 36
    reopened = PatchStore.open(tmp_path / "s.zarr")
    assert reopened.slide_ids() == ["a"]
    g = reopened.slide("a")
    np.testing.assert_array_equal(g["images"][:], np.concatenate(batches))
    np.testing.assert_array_equal(g["coords"][:], np.concatenate(coords))
    np.testing.assert_array_equal(g["tissue"][:], np.concatenate(tissue))
    assert g["images"].chunks == (1, P, P, 3) and g["images"].shards == (4, P, P, 3)
    assert g.attrs["status"] == COMPLETE and g.attrs["n_patches"] == 36 and g.attrs["extra"] == 1
    assert g["mask"].attrs["downsample"] == [8.0, 8.0]


def test_empty_slide_is_complete_with_zero_patches(tmp_path):
    store = PatchStore.create_or_resume(tmp_path / "s.zarr", P, PARAMS)
    assert finish(store.begin_slide("blank", {}, capacity=0, codec=Codec())) == 0
    g = PatchStore.open(tmp_path / "s.zarr").slide("blank")
    assert g["images"].shape == (0, P, P, 3) and g["coords"].shape == (0, 2)


def test_unfinished_group_is_invisible_and_restarted(tmp_path):
    store = PatchStore.create_or_resume(tmp_path / "s.zarr", P, PARAMS)
    w = store.begin_slide("a", {}, capacity=8, codec=Codec(), shard=2)
    w.append(np.full((3, P, P, 3), 9, np.uint8), np.zeros((3, 2)), np.ones(3))
    assert store.status("a") == "writing" and store.slide_ids() == [] and store.slide_ids(complete_only=False) == ["a"]
    with pytest.raises(StoreError, match="not complete"):
        store.slide("a")
    w = store.begin_slide("a", {}, capacity=8, codec=Codec(), shard=2)
    w.append(np.full((1, P, P, 3), 4, np.uint8), np.zeros((1, 2)), np.ones(1))
    finish(w)
    assert store.slide("a")["images"].shape[0] == 1 and (store.slide("a")["images"][:] == 4).all()


def test_other_parameters_are_refused_unless_overwrite(tmp_path):
    path = tmp_path / "s.zarr"
    finish(PatchStore.create_or_resume(path, P, PARAMS).begin_slide("a", {}, 0, Codec()))
    assert PatchStore.create_or_resume(path, P, dict(PARAMS)).slide_ids() == ["a"]  # same: resume
    other = {**PARAMS, "stride": 16}
    with pytest.raises(StoreError, match=r"other parameters \(stride: None -> 16\).*--overwrite"):
        PatchStore.create_or_resume(path, P, other)
    assert PatchStore.open(path).slide_ids() == ["a"]  # untouched
    assert PatchStore.create_or_resume(path, P, other, overwrite=True).slide_ids() == []


def test_unwritable_or_foreign_paths(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(StoreError, match="cannot write .*choose an --out"):
        PatchStore.create_or_resume(blocker / "s.zarr", P, PARAMS)
    zarr.open_group(str(tmp_path / "other.zarr"), mode="w")
    with pytest.raises(StoreError, match="not a histogen patch store"):
        PatchStore.open(tmp_path / "other.zarr")
    with pytest.raises(StoreError, match="unknown codec"):
        Codec("gzip").compressors()


def test_qc_scores_and_reasons_round_trip_and_old_slides_read(tmp_path):
    store = PatchStore.create_or_resume(tmp_path / "s.zarr", P, PARAMS)
    check = CheckParams().to_dict()
    writer = store.begin_slide("a", {}, capacity=6, codec=Codec(), shard=4, check=check)
    rng = np.random.default_rng(1)
    parts = []
    for n in (4, 0, 3):
        scores = {name: rng.random(n).astype(np.float32) for name in SCORES}
        parts.append(PatchQC(scores, rng.choice([0, *REASONS.values()], n).astype(np.uint8)))
        writer.append(rng.integers(0, 256, (n, P, P, 3), dtype=np.uint8), np.zeros((n, 2)), parts[-1])
    with pytest.raises(TypeError, match="PatchQC"):
        writer.append(np.zeros((1, P, P, 3), np.uint8), np.zeros((1, 2)), np.ones(1))  # tissue only: not for this slide
    finish(writer)
    qc = PatchStore.open(tmp_path / "s.zarr").qc("a")
    assert set(qc.scores) == set(SCORES) and qc.reasons.dtype == np.uint8
    for name in SCORES:
        np.testing.assert_array_equal(qc.scores[name], np.concatenate([p.scores[name] for p in parts]))
    np.testing.assert_array_equal(qc.reasons, np.concatenate([p.reasons for p in parts]))
    np.testing.assert_array_equal(store.tissue("a"), qc.scores["tissue"])  # also where older readers look
    assert store.qc_attrs("a") == {"params": check, "reasons": REASONS}
    empty = store.begin_slide("none", {}, capacity=0, codec=Codec(), check=check)
    finish(empty)
    assert len(store.qc("none").reasons) == 0 and set(store.qc("none").scores) == set(SCORES)
    old = store.begin_slide("old", {}, capacity=2, codec=Codec())  # as written before the check had scores
    old.append(np.zeros((2, P, P, 3), np.uint8), np.zeros((2, 2)), np.ones(2))
    finish(old)
    assert store.qc("old") is None and store.qc_attrs("old") is None and store.n_patches("old") == 2
