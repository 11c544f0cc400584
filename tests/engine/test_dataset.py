"""The study's dataset format both ways, on real stores made by the tiler from synthetic slides:
what `datasets` loads from an export equals the store, and an export imported against the same
slides gives the same store back."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import histosynth as synth
from engine.dataset.cli import main
from engine.dataset.export import export_parquet
from engine.dataset.hub import push_to_hub
from engine.dataset.schema import DatasetError
from engine.dataset.table_import import import_parquet
from engine.discover import match_names
from engine.plan import PlanParams
from engine.store import PatchStore
from engine.tile import TileConfig, tile_slides
from tests.support.stores import assert_same_store

FAST = dict(workers=2, batch_size=8, qa=False)
LEVEL0 = TileConfig(**FAST)  # 512 px read at level 0
# 1.5 µm/px from slides at 0.25 and 0.5 µm/px: 192 px read at level 1, resized to 128.
SCALED = TileConfig(plan=PlanParams(128), mpp=1.5, **FAST)


def hf_features(with_images: bool):
    import datasets as hf

    f = {
        "organ": hf.Value("string"), "slide_name": hf.Value("string"),
        "x": hf.Value("int64"), "y": hf.Value("int64"), "level": hf.Value("int64"),
        "patch_size": hf.List(hf.Value("int64")), "resize": hf.List(hf.Value("int64")),
        "image_embedding_vector": hf.List(hf.List(hf.Value("float32"))), "encoder": hf.Value("string"),
    }
    return hf.Features({**f, **({"image": hf.Image()} if with_images else {})})


@pytest.fixture(scope="module")
def slides(tmp_path_factory, svs_slide, tiff_slide) -> Path:
    d = tmp_path_factory.mktemp("slides")
    shutil.copy(svs_slide, d)
    shutil.copy(tiff_slide, d)
    return d


def embedded_store(path: Path, slides: Path, cfg: TileConfig, seed: int) -> Path:
    """A store made by the tiler, with random embeddings (the model is engine.embed's business)."""
    assert tile_slides(slides, path, cfg, show_progress=False).count("done") == 2
    store, rng = PatchStore.open(path), np.random.default_rng(seed)
    for sid in store.slide_ids():
        n = store.attrs(sid)["n_patches"]
        store.write_embeddings(sid, rng.standard_normal((n, 384)).astype(np.float32),
                               {"model": "test", "input_size": 224})
    return path


@pytest.fixture(scope="module")
def store(tmp_path_factory, slides) -> Path:
    return embedded_store(tmp_path_factory.mktemp("store") / "p.zarr", slides, LEVEL0, 1)


@pytest.fixture(scope="module")
def scaled_store(tmp_path_factory, slides) -> Path:
    return embedded_store(tmp_path_factory.mktemp("store") / "s.zarr", slides, SCALED, 2)


def store_rows(path: Path):
    """(slide, x, y, level, read_size, embedding, image) per patch, slide by slide, as the export orders them."""
    s = PatchStore.open(path)
    for sid in s.slide_ids():
        g, a, emb = s.slide(sid), s.attrs(sid), s.embeddings(sid)
        for (x, y), e, img in zip(g["coords"][:], emb, g["images"][:]):
            yield sid, int(x), int(y), a["level"], a["read_size"], e, img


def test_export_loads_with_datasets_equal_to_the_store(tmp_path, store):
    import datasets
    from PIL import Image

    files = export_parquet(store, tmp_path / "out", with_images=True, rows_per_file=4)
    want = list(store_rows(store))
    assert len(want) >= 8
    n_files = -(-len(want) // 4)
    assert [f.name for f in files] == [f"train-{i:05d}-of-{n_files:05d}.parquet" for i in range(n_files)]
    cache = str(tmp_path / "cache")  # not the user's ~/.cache
    ds = datasets.load_dataset("parquet", data_files=[str(f) for f in files], split="train", cache_dir=cache)
    assert ds.features == hf_features(True) and len(ds) == len(want)
    for row, (sid, x, y, level, read, emb, img) in zip(ds, want):
        assert (row["organ"], row["slide_name"], row["x"], row["y"], row["level"]) == ("unknown", sid, x, y, level)
        assert row["patch_size"] == [read, read] == [512, 512] and row["resize"] == [224, 224]
        vec = np.array(row["image_embedding_vector"], np.float32)
        assert vec.shape == (1, 384)
        np.testing.assert_array_equal(vec[0], emb)
        assert row["encoder"] == "path-foundation"
        assert row["image"].size == (224, 224)
        np.testing.assert_array_equal(np.asarray(row["image"]),
                                      np.asarray(Image.fromarray(img).resize((224, 224), Image.Resampling.BILINEAR)))
    # The parquet files carry the features as datasets itself writes them ...
    ref = tmp_path / "ref.parquet"
    datasets.Dataset.from_dict({k: [] for k in hf_features(True)}, features=hf_features(True)).to_parquet(str(ref))
    ours = pq.read_schema(files[0])
    assert json.loads(ours.metadata[b"huggingface"]) == json.loads(pq.read_schema(ref).metadata[b"huggingface"])
    assert ours.remove_metadata() == pq.read_schema(ref).remove_metadata()
    # ... and the dataset card's YAML describes the same schema, as the Hub reads the folder.
    from_card = datasets.load_dataset(str(tmp_path / "out"), split="train", cache_dir=cache)
    assert from_card.features == hf_features(True) and len(from_card) == len(want)
    assert from_card.info.splits["train"].num_examples == len(want)


def test_export_organ_and_store_without_embeddings(tmp_path, slides, caplog):
    bare = tmp_path / "bare.zarr"
    tile_slides(slides, bare, LEVEL0, show_progress=False)
    with pytest.raises(DatasetError, match="no slide has path-foundation embeddings.*python -m engine.embed --store"):
        export_parquet(bare, tmp_path / "out")
    assert main(["export", "--store", str(bare), "--out", str(tmp_path / "out")]) == 2
    assert "engine.embed" in caplog.text
    # One slide embedded: it is exported, the other is named in one warning.
    s = PatchStore.open(bare)
    s.write_embeddings("camelyon", np.ones((s.attrs("camelyon")["n_patches"], 384), np.float32), {"input_size": 256})
    caplog.clear()
    files = export_parquet(bare, tmp_path / "out", organ="lymph node")
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and "aperio" in warnings[0] and "python -m engine.embed --store" in warnings[0]
    t = pq.read_table(files)
    assert set(t["slide_name"].to_pylist()) == {"camelyon"} and set(t["organ"].to_pylist()) == {"lymph node"}
    assert t["resize"].to_pylist()[0] == [256, 256]  # the embeddings' own input size


@pytest.mark.parametrize("which", ["store", "scaled_store"])
def test_round_trip_gives_the_same_store(tmp_path, slides, which, request):
    src = request.getfixturevalue(which)
    cfg = LEVEL0 if which == "store" else SCALED
    export_parquet(src, tmp_path / "out", rows_per_file=3)
    summary = import_parquet(tmp_path / "out", slides, tmp_path / "back.zarr",
                             TileConfig(plan=PlanParams(cfg.plan.patch_size), **FAST))
    assert summary.count("done") == 2 and summary.count("failed") == 0
    a, b = PatchStore.open(src), PatchStore.open(tmp_path / "back.zarr")
    assert a.slide_ids() == b.slide_ids() == ["aperio", "camelyon"]
    for sid in a.slide_ids():
        ga, gb = a.slide(sid), b.slide(sid)
        for k in ("images", "coords", "tissue"):
            np.testing.assert_array_equal(gb[k][:], ga[k][:], err_msg=f"{sid} {k}")
        np.testing.assert_array_equal(b.embeddings(sid), a.embeddings(sid))
        for k in ("level", "read_size", "tile0", "downsample"):
            assert b.attrs(sid)[k] == a.attrs(sid)[k], (sid, k)
        assert b.embeddings_attrs(sid)["model"] == "google/path-foundation"
        assert b.embeddings_attrs(sid)["input_size"] == 224
    if which == "scaled_store":  # the case where level and resizing matter
        assert a.attrs("aperio")["level"] == 1 and a.attrs("aperio")["read_size"] == 192
    # Resumed: complete groups are skipped; one left without its embeddings by a kill is redone.
    del b.slide("camelyon")["embeddings"]
    again = import_parquet(tmp_path / "out", slides, tmp_path / "back.zarr",
                           TileConfig(plan=PlanParams(cfg.plan.patch_size), **FAST))
    assert {r.slide_id: r.status for r in again.results} == {"aperio": "skipped", "camelyon": "done"}
    np.testing.assert_array_equal(PatchStore.open(tmp_path / "back.zarr").embeddings("camelyon"),
                                  a.embeddings("camelyon"))


def test_another_encoders_embeddings_travel_with_their_name(tmp_path, slides, store):
    src = tmp_path / "two.zarr"
    shutil.copytree(store, src)
    s = PatchStore.open(src)
    for sid in s.slide_ids():
        s.write_embeddings(sid, np.full((s.n_patches(sid), 8), 0.5, np.float32), {"model": "x"}, name="uni2-h")
    files = export_parquet(src, tmp_path / "out", encoder="uni2-h")
    t = pq.read_table(files)
    assert set(t["encoder"].to_pylist()) == {"uni2-h"} and len(t["image_embedding_vector"][0].as_py()[0]) == 8
    assert "uni2-h (x)" in (tmp_path / "out" / "README.md").read_text()
    import_parquet(tmp_path / "out", slides, tmp_path / "back.zarr", TileConfig(plan=PlanParams(512), **FAST))
    back = PatchStore.open(tmp_path / "back.zarr")
    assert back.embedding_names("aperio") == ["uni2-h"]
    assert back.embeddings_attrs("aperio", "uni2-h")["model"] == "MahmoodLab/UNI2-h"
    np.testing.assert_array_equal(back.embeddings("aperio", name="uni2-h"), s.embeddings("aperio", name="uni2-h"))


def test_flat_embeddings_other_column_name_and_low_tissue_rows_kept(tmp_path, slides, store):
    """A re-upload's layout: `embedding_vector` (D,) per row, no resize or organ column; and rows of
    background (no tissue) still become patches, matched to their embeddings."""
    t = pq.read_table(export_parquet(store, tmp_path / "out"))
    emb = np.stack([np.asarray(v[0], np.float32) for v in t["image_embedding_vector"].to_pylist()])
    blank = {"slide_name": "camelyon", "x": 0, "y": 0, "level": 0, "patch_size": [512, 512]}  # a corner of glass
    rows = {k: t[k].to_pylist() + [blank[k]] for k in ("slide_name", "x", "y", "level", "patch_size")}
    emb = np.concatenate([emb, np.full((1, 384), 7.0, np.float32)])
    flat = pa.table({**rows, "embedding_vector": pa.array(list(emb), pa.list_(pa.float32()))})
    pq.write_table(flat, tmp_path / "flat.parquet")
    summary = import_parquet(tmp_path / "flat.parquet", slides, tmp_path / "back.zarr", TileConfig(**FAST))
    assert summary.count("done") == 2
    a, b = PatchStore.open(store), PatchStore.open(tmp_path / "back.zarr")
    np.testing.assert_array_equal(b.embeddings("aperio"), a.embeddings("aperio"))
    cam = b.slide("camelyon")
    n = a.attrs("camelyon")["n_patches"]
    assert cam.attrs["n_patches"] == n + 1 and cam.attrs["n_rejected"] == 0
    np.testing.assert_array_equal(b.embeddings("camelyon"), emb[-n - 1:])
    np.testing.assert_array_equal(cam["images"][:n], a.slide("camelyon")["images"][:])
    assert tuple(cam["coords"][n]) == (0, 0) and cam["tissue"][n] < 0.1  # kept though it is no tissue
    assert b.embeddings_attrs("camelyon")["input_size"] == 224  # no resize column: Path Foundation's


def test_import_on_a_local_cluster_equals_one_process(tmp_path, slides, store, capsys):
    export_parquet(store, tmp_path / "out", rows_per_file=5)
    args = ["import", "--table", str(tmp_path / "out"), "--slides", str(slides), "--no-qa", "--quiet", "--workers", "2",
            "--batch-size", "8"]
    assert main([*args, "--out", str(tmp_path / "one.zarr")]) == 0
    assert main([*args, "--out", str(tmp_path / "two.zarr"), "--scheduler", "local:2"]) == 0
    text = capsys.readouterr().out
    assert "slides: 2 done, 0 failed" in text and "ran on: 2 local Dask worker processes" in text
    assert_same_store(tmp_path / "two.zarr", tmp_path / "one.zarr")


def test_unreadable_row_is_dropped_with_its_embedding(tmp_path, svs_slide, store):
    export_parquet(store, tmp_path / "out")
    d = tmp_path / "slides"
    d.mkdir()
    x, y = PatchStore.open(store).slide("aperio")["coords"][1] + 256
    shutil.copy(svs_slide, d / "aperio.svs")
    # the tile under patch 1's centre
    synth.corrupt_tile(d / "aperio.svs", index=int(y // 240 * -(-2400 // 240) + x // 240))
    summary = import_parquet(tmp_path / "out", d, tmp_path / "back.zarr", TileConfig(**FAST))
    assert summary.count("done") == 1 and summary.count("failed") == 1  # camelyon is not in this folder
    g, a = PatchStore.open(tmp_path / "back.zarr").slide("aperio"), PatchStore.open(store).slide("aperio")
    lost = {(f["x"], f["y"]) for f in g.attrs["failed_patches"]}
    keep = [i for i, c in enumerate(a["coords"][:].tolist()) if tuple(c) not in lost]
    assert 1 not in keep and len(keep) == g.attrs["n_patches"] == g.attrs["n_candidates"] - g.attrs["n_failed"]
    np.testing.assert_array_equal(g["coords"][:], a["coords"][:][keep])
    np.testing.assert_array_equal(PatchStore.open(tmp_path / "back.zarr").embeddings("aperio"),
                                  PatchStore.open(store).embeddings("aperio")[keep])


def test_bad_tables_and_absent_slides(tmp_path, slides, store, caplog):
    files = export_parquet(store, tmp_path / "out")
    t = pq.read_table(files)
    pq.write_table(t.drop_columns(["x", "level"]), tmp_path / "cut.parquet")
    with pytest.raises(DatasetError, match="missing column.*x, level"):
        import_parquet(tmp_path / "cut.parquet", slides, tmp_path / "a.zarr")
    out = ["--out", str(tmp_path / "b.zarr"), "--quiet", "--no-qa", "--workers", "2"]
    assert main(["import", "--table", str(tmp_path / "cut.parquet"), "--slides", str(slides), *out]) == 2
    assert main(["import", "--table", str(tmp_path / "nope.parquet"), "--slides", str(slides), *out]) == 2
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 2 and "x, level" in errors[0] and "nope.parquet" in errors[1]
    assert "Traceback" not in caplog.text
    # A slide the folder lacks: one line naming it, the others imported, exit 1.
    ghost = t.slice(0, 2).set_column(1, "slide_name", pa.array(["ghost"] * 2))
    pq.write_table(pa.concat_tables([t, ghost]), tmp_path / "more.parquet")
    caplog.clear()
    assert main(["import", "--table", str(tmp_path / "more.parquet"), "--slides", str(slides), *out]) == 1
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and "ghost" in errors[0] and "--slides" in errors[0]
    b = PatchStore.open(tmp_path / "b.zarr")
    assert b.slide_ids() == ["aperio", "camelyon"] and all(b.embeddings_attrs(s) for s in b.slide_ids())
    # Rows of one slide at several levels, or at a level the slide does not have, fail that slide only.
    levels = np.array(t["level"].to_pylist())
    levels[0] = 1  # the first row is aperio's
    pq.write_table(t.set_column(t.schema.get_field_index("level"), "level", pa.array(levels)),
                   tmp_path / "mixed.parquet")
    summary = import_parquet(tmp_path / "mixed.parquet", slides, tmp_path / "m.zarr", TileConfig(**FAST))
    assert [r.status for r in summary.results] == ["failed", "done"]
    assert "several level [0, 1]" in summary.results[0].error
    odd = t.set_column(t.schema.get_field_index("level"), "level", pa.array([9] * len(t), pa.int64()))
    pq.write_table(odd, tmp_path / "odd.parquet")
    summary = import_parquet(tmp_path / "odd.parquet", slides, tmp_path / "c.zarr", TileConfig(**FAST))
    assert summary.count("failed") == 2 and "no pyramid level 9" in summary.results[0].error


def test_organ_selects_rows_and_travels_with_the_slide(tmp_path, slides, store):
    t = pq.read_table(export_parquet(store, tmp_path / "out"))
    organs = ["lung" if s == "aperio" else "breast" for s in t["slide_name"].to_pylist()]
    pq.write_table(t.set_column(0, "organ", pa.array(organs)), tmp_path / "t.parquet")
    summary = import_parquet(tmp_path / "t.parquet", slides, tmp_path / "b.zarr", TileConfig(**FAST), organ="lung")
    assert [(r.slide_id, r.status) for r in summary.results] == [("aperio", "done")]
    assert set(pq.read_table(export_parquet(tmp_path / "b.zarr", tmp_path / "again"))["organ"].to_pylist()) == {"lung"}


def test_slide_names_match_file_names_stems_and_store_ids(tmp_path):
    for rel in ("a/case.svs", "b/case.tif", "c/solo.tif"):
        (tmp_path / rel).parent.mkdir(exist_ok=True)
        (tmp_path / rel).write_bytes(b"")
    paths = sorted(tmp_path.rglob("*.*"))
    m = match_names(["case", "a__case.svs", "solo", "solo.tif", "c/solo.tif", "other"], paths, tmp_path)
    assert len(m["case"]) == 2 and m["a__case.svs"] == [tmp_path / "a/case.svs"]
    assert m["solo"] == m["solo.tif"] == m["c/solo.tif"] == [tmp_path / "c/solo.tif"] and m["other"] == []


def test_push_without_network_is_one_clear_error(tmp_path, store, monkeypatch, caplog):
    from huggingface_hub import constants

    export_parquet(store, tmp_path / "out")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(DatasetError, match="cannot push .* me/patches: .*offline mode"):
        push_to_hub(tmp_path / "out", "me/patches", token="hf_x")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")  # nothing listens: refused at once
    with pytest.raises(DatasetError, match="cannot push .*refused"):
        push_to_hub(tmp_path / "out", "me/patches", token="hf_x")
    assert main(["export", "--store", str(store), "--out", str(tmp_path / "o2"), "--push", "me/patches", "--token",
                 "hf_x"]) == 2
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and len(errors[0].splitlines()) == 1 and "me/patches" in errors[0]
    assert (tmp_path / "o2" / "data" / "train-00000-of-00001.parquet").is_file()  # the export itself is kept
