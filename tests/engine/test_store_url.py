"""Patch stores on an object store through fsspec URLs, against a real S3-protocol server (moto's
server mode) on loopback: the same store as on disk, from one process or a cluster; resume; embed;
a half-written slide group replaced cleanly; one-line errors for a missing bucket or endpoint."""
from __future__ import annotations

import os
import shutil
import socket
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from engine.cluster import Scheduler  # noqa: E402
from engine.embed import EmbedConfig, embed_store  # noqa: E402
from engine.location import location  # noqa: E402
from histosynth.standin_model import save_standin  # noqa: E402
from engine.store import Codec, PatchStore, StoreError  # noqa: E402
from engine.tile import main, tile_slides  # noqa: E402
from tests.support.s3server import fresh_s3fs, s3_server  # noqa: E402
from tests.support.stores import assert_same_store  # noqa: E402
from tests.support.tiling import ARGS, CFG  # noqa: E402


@pytest.fixture(scope="module")
def s3():
    """A moto S3 server on 127.0.0.1 with a bucket `bkt`; the standard AWS variables point at it,
    so that this process and the worker processes it starts reach it like a real object store."""
    with s3_server("bkt") as fs:
        yield fs


def test_location_keeps_urls_and_paths_apart():
    assert location("s3://bkt/p.zarr") == "s3://bkt/p.zarr"
    assert location(Path("s3://bkt/p.zarr")) == "s3://bkt/p.zarr"  # what argparse's type=Path made of it
    assert location("file:///tmp/p.zarr") == Path("/tmp/p.zarr")
    assert location("runs/p.zarr") == Path("runs/p.zarr") and location("c:/p.zarr") == Path("c:/p.zarr")


def test_cluster_tiles_into_s3_as_onto_disk_and_resumes(s3, slides, reference):
    url = "s3://bkt/tiles.zarr"
    summary = tile_slides(slides, url, CFG, scheduler=Scheduler(n_local=2), show_progress=False)
    assert summary.count("done") == 3 and summary.count("failed") == 1 and summary.store == url
    assert s3.exists("bkt/tiles.zarr/slides/s0/images/zarr.json")
    assert_same_store(url, reference)
    # Resumed by one process: every complete slide is skipped.
    again = tile_slides(slides, url, CFG, show_progress=False)
    assert again.count("skipped") == 3 and again.count("done") == 0
    assert_same_store(url, reference)
    # `histogen train --data s3://...` comes through argparse's type=Path and still finds the slides,
    # and forked DataLoader workers read them.
    from torch.utils.data import DataLoader

    from histogen.batches import SlidePatches, list_slides

    refs = list_slides([Path(url)], 64)
    assert [r.slide for r in refs] == ["s0", "s1", "s2"]
    loader = DataLoader(SlidePatches(refs, conditional=False), batch_size=16, num_workers=2)
    images = np.concatenate([b[0].numpy() for b in loader])
    ref = PatchStore.open(reference)
    np.testing.assert_array_equal(images, np.concatenate([ref.slide(s)["images"][:] for s in ref.slide_ids()]))


def test_qa_pictures_and_embeddings_on_s3(s3, slides, reference, tmp_path):
    url = "s3://bkt/embed.zarr"
    assert main(["--slides", str(slides), "--out", url, *[a for a in ARGS if a != "--no-qa"], "--workers", "1"]) == 1
    assert sorted(Path(p).name for p in s3.ls("bkt/embed.qa")) == ["s0.png", "s1.png", "s2.png"]
    model = save_standin(tmp_path / "model")
    local = tmp_path / "local.zarr"
    shutil.copytree(reference, local)
    cfg = EmbedConfig(model=str(model), batch_size=8)
    assert sorted(embed_store(url, cfg, show_progress=False).done) == ["s0", "s1", "s2"]
    embed_store(local, cfg, show_progress=False)
    assert_same_store(url, local)  # patches and embeddings, with their attributes
    assert embed_store(url, cfg, show_progress=False).skipped == ["s0", "s1", "s2"]


def test_half_written_group_on_s3_is_replaced_cleanly(s3):
    url = "s3://bkt/half.zarr"
    store = PatchStore.create_or_resume(url, 8, {"a": 1})
    rng = np.random.default_rng(0)
    w = store.begin_slide("x", {"try": 1}, capacity=40, codec=Codec())
    # two shards, then "killed"
    w.append(rng.integers(0, 255, (40, 8, 8, 3), np.uint8), np.zeros((40, 2)), np.zeros(40))
    assert s3.exists("bkt/half.zarr/slides/x/images/c/1/0/0/0") and PatchStore.open(url).slide_ids() == []
    store = PatchStore.create_or_resume(url, 8, {"a": 1})  # the resumed run
    w = store.begin_slide("x", {"try": 2}, capacity=5, codec=Codec())
    images = rng.integers(0, 255, (5, 8, 8, 3), np.uint8)
    w.append(images, np.arange(10).reshape(5, 2), np.ones(5))
    w.finish(np.ones((2, 2), np.uint8), {}, {})
    g = PatchStore.open(url).slide("x")
    assert g.attrs["try"] == 2 and not s3.exists("bkt/half.zarr/slides/x/images/c/1/0/0/0")  # nothing of try 1 left
    np.testing.assert_array_equal(g["images"][:], images)
    with pytest.raises(StoreError, match="other parameters"):
        PatchStore.create_or_resume(url, 8, {"a": 2})
    PatchStore.create_or_resume(url, 8, {"a": 2}, overwrite=True)
    assert PatchStore.open(url).slide_ids(complete_only=False) == []


def test_missing_bucket_or_endpoint_is_one_line_exit_2(s3, slides, caplog, monkeypatch):
    def errors(argv):
        caplog.clear()
        assert main(["--slides", str(slides), *argv, "--quiet"]) == 2
        lines = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
        assert len(lines) == 1 and len(lines[0].splitlines()) == 1
        return lines[0]

    line = errors(["--out", "s3://no-such-bucket/p.zarr"])
    assert line.startswith("cannot write s3://no-such-bucket/p.zarr") and "bucket" in line
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{s.getsockname()[1]}")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")  # botocore would retry a refused connection for seconds
    fresh_s3fs()
    try:
        line = errors(["--out", "s3://bkt/p.zarr"])
    finally:
        fresh_s3fs()
    assert line.startswith("s3://bkt/p.zarr: cannot reach it") and "AWS_ENDPOINT_URL" in line
