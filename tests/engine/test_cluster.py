"""Tiling and embedding on a real Dask cluster of worker processes on loopback: the same store as one
process, worker processes really killed (SIGKILL) mid-slide, one-line errors for bad schedulers."""
from __future__ import annotations

import os
import shutil
import signal
import socket
from pathlib import Path

import dask
import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from distributed import Client, WorkerPlugin  # noqa: E402

from engine import cluster, embed  # noqa: E402
from engine.cluster import ClusterError, Scheduler  # noqa: E402
from histosynth.standin_model import save_standin  # noqa: E402
from engine.store import PatchStore  # noqa: E402
from engine.tile import main, tile_slides  # noqa: E402
from tests.support.filesystems import du, grow, small_filesystem  # noqa: E402
from tests.support.stores import assert_same_store  # noqa: E402
from tests.support.tiling import ARGS, CFG  # noqa: E402

@pytest.fixture(scope="module")
def scheduler():
    """A running cluster of 2 worker processes; a slide is tried twice at most (one retry)."""
    with cluster.local_cluster(Scheduler(n_local=2)) as c:
        yield Scheduler(address=c.scheduler_address, retries=1)


class KillMidSlide(WorkerPlugin):
    """In every worker process: SIGKILL itself right after the first shard of `slide_id` is written,
    on every attempt, or only on the first where `marker` is given (a file made before dying)."""

    name = "kill-mid-slide"

    def __init__(self, slide_id: str, marker: str | None = None):
        self.slide_id, self.marker = slide_id, marker

    def setup(self, worker):
        from engine.store import SlideWriter

        self.original = write = SlideWriter._write_shard
        slide_id, marker = self.slide_id, self.marker

        def write_then_die(writer, chunks):
            write(writer, chunks)
            if writer.group.basename == slide_id and (marker is None or not os.path.exists(marker)):
                if marker is not None:
                    Path(marker).touch()
                os.kill(os.getpid(), signal.SIGKILL)

        SlideWriter._write_shard = write_then_die

    def teardown(self, worker):
        from engine.store import SlideWriter

        SlideWriter._write_shard = self.original


@pytest.fixture
def client(scheduler):
    """A client of the running cluster, for the test to install a KillMidSlide; removed afterwards."""
    with Client(scheduler.address) as c:
        yield c
        if KillMidSlide.name in c.run_on_scheduler(lambda dask_scheduler: dask_scheduler.worker_plugins):
            c.unregister_worker_plugin(KillMidSlide.name)


def test_local_cluster_writes_the_store_one_process_writes(tmp_path, slides, reference, capsys, scheduler):
    out = tmp_path / "p.zarr"
    # The client refreshing its view of the cluster all the time: that view, which lists no workers,
    # must never be taken for workers gone (each slide would then be tiled twice).
    with dask.config.set({"distributed.client.scheduler-info-interval": "2ms"}):
        assert main(["--slides", str(slides), "--out", str(out), *ARGS, "--scheduler", "local:2"]) == 1
    text = capsys.readouterr().out
    assert "3 done, 1 failed" in text and "ran on: 2 local Dask worker processes" in text
    assert "failed: " in text and "fake.svs" in text and "not a slide" in text
    assert_same_store(out, reference)
    # Resumed on a running scheduler: the complete slides are skipped, the bad file fails again.
    assert main(["--slides", str(slides), "--out", str(out), *ARGS, "--scheduler", scheduler.address]) == 1
    text = capsys.readouterr().out
    assert "0 done, 1 failed, 3 skipped" in text and f"Dask workers at {scheduler.address}" in text
    assert_same_store(out, reference)


def test_worker_killed_mid_slide_loses_nothing(tmp_path, slides, reference, scheduler, client):
    marker = tmp_path / "died"
    client.register_plugin(KillMidSlide("s1", str(marker)))
    workers = set(client.nthreads())
    summary = tile_slides(slides, tmp_path / "p.zarr", CFG, scheduler=scheduler, show_progress=False)
    assert marker.exists() and workers - set(client.nthreads())  # the worker on s1 died after writing part of it
    assert summary.count("done") == 3 and [r.slide_id for r in summary.results if r.status == "failed"] == ["fake"]
    assert_same_store(tmp_path / "p.zarr", reference)


def test_slide_that_always_kills_its_worker_fails_alone(tmp_path, slides, reference, scheduler, client):
    """s0 goes first, so its retries overlap the other slides: none of them is charged with its
    workers' deaths."""
    out = tmp_path / "p.zarr"
    client.register_plugin(KillMidSlide("s0"))
    summary = tile_slides(slides, out, CFG, scheduler=scheduler, show_progress=False)
    failed = {r.slide_id: r.error for r in summary.results if r.status == "failed"}
    assert summary.count("done") == 2 and failed.keys() == {"fake", "s0"}
    assert failed["s0"].startswith(str(slides / "s0.svs")) and "worker died 2 times while tiling it" in failed["s0"]
    assert "run the same command again" in failed["s0"] and len(failed["s0"].splitlines()) == 1
    store = PatchStore.open(out)
    assert store.slide_ids() == ["s1", "s2"] and store.status("s0") == "writing"  # left unfinished, invisible
    # Without the fault, the same run redoes only s0, and the store is the one a clean run makes.
    client.unregister_worker_plugin(KillMidSlide.name)
    again = tile_slides(slides, out, CFG, scheduler=scheduler, show_progress=False)
    assert [r.slide_id for r in again.results if r.status == "done"] == ["s0"] and again.count("skipped") == 2
    assert_same_store(out, reference)


def test_full_disk_on_a_cluster_sends_no_more_slides_and_keeps_the_store_valid(tmp_path, slides, reference,
                                                                                scheduler):
    """Two workers writing onto a tmpfs with room for one slide: whichever slides the disk fills
    up on are removed, none is sent after, every group left is whole; with space, the run resumes."""
    with small_filesystem(tmp_path / "fs", du(reference / "slides" / "s0") * 3 // 2) as fs:
        summary = tile_slides(slides, fs / "p.zarr", CFG, scheduler=scheduler, show_progress=False)
        full = [r.slide_id for r in summary.results if r.disk_full]
        assert full and summary.count("done") + len(full) + summary.count("not started") == 3
        said = [line for line in summary.text().splitlines() if "no space left" in line]
        assert said == [f"failed: {summary.failed[-1]}"] and f"{', '.join(full)} removed unfinished" in said[0]
        store = PatchStore.open(fs / "p.zarr")
        assert store.slide_ids(complete_only=False) == store.slide_ids() == summary.done
        grow(fs, 4 * du(reference))
        summary = tile_slides(slides, fs / "p.zarr", CFG, scheduler=scheduler, show_progress=False)
        assert summary.count("done") + summary.count("skipped") == 3
        assert_same_store(fs / "p.zarr", reference)


def test_scheduler_with_dask_defaults_charges_only_the_killer(tmp_path, slides, reference):
    """A scheduler as `dask scheduler` starts one (3 allowed failures, where a pinned slide whose
    worker died just waits): the run sees the death itself, and retries as often as it says."""
    from distributed import LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, host="127.0.0.1",
                      dashboard_address=None) as c, Client(c) as client:
        client.register_plugin(KillMidSlide("s0"))
        summary = tile_slides(slides, tmp_path / "p.zarr", CFG,
                              scheduler=Scheduler(address=c.scheduler_address, retries=1),
                              show_progress=False)
    failed = {r.slide_id: r.error for r in summary.results if r.status == "failed"}
    assert summary.count("done") == 2 and failed.keys() == {"fake", "s0"} and "worker died 2 times" in failed["s0"]
    ref = PatchStore.open(reference)
    for sid in ("s1", "s2"):
        np.testing.assert_array_equal(PatchStore.open(tmp_path / "p.zarr").slide(sid)["images"][:],
                                      ref.slide(sid)["images"][:])


def test_embed_on_a_local_cluster_equals_one_process(tmp_path, reference, capsys):
    model = save_standin(tmp_path / "model")
    one, two = tmp_path / "one.zarr", tmp_path / "two.zarr"
    shutil.copytree(reference, one)
    shutil.copytree(reference, two)
    assert embed.main(["--store", str(one), "--model", str(model), "--batch-size", "8", "--quiet"]) == 0
    assert embed.main(["--store", str(two), "--model", str(model), "--batch-size", "8", "--quiet", "--scheduler",
                       "local:2"]) == 0
    text = capsys.readouterr().out
    assert "3 embedded, 0 failed" in text and "ran on: 2 local Dask worker processes" in text
    a, b = PatchStore.open(one), PatchStore.open(two)
    for sid in a.slide_ids():
        assert b.embeddings_attrs(sid) == a.embeddings_attrs(sid)
        assert np.abs(a.embeddings(sid) - a.embeddings(sid).mean(0)).max() > 1e-3  # real, varied embeddings
        np.testing.assert_array_equal(b.embeddings(sid), a.embeddings(sid))
    # Resumed: nothing to do, so no cluster is started.
    assert embed.main(["--store", str(two), "--model", str(model), "--quiet", "--scheduler", "local:2"]) == 0
    text = capsys.readouterr().out
    assert "0 embedded, 0 failed, 3 skipped" in text and "ran on" not in text


@pytest.mark.parametrize("value", ["local:0", "local:x", "local2", "tcp://host", "tcp://host:port", "http://host:8786"])
def test_bad_scheduler_is_one_line_exit_2(tmp_path, slides, caplog, value):
    for run in (main, embed.main):
        caplog.clear()
        store = str(tmp_path / "p.zarr")
        argv = ["--slides", str(slides), "--out", store] if run is main else ["--store", store]
        assert run([*argv, "--scheduler", value]) == 2
        errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
        assert len(errors) == 1 and all(s in errors[0] for s in ("--scheduler", "local:N", "tcp://HOST:PORT"))
    assert not (tmp_path / "p.zarr").exists()


def test_unreachable_scheduler_stops_the_run_with_what_to_do(tmp_path, slides):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    address = f"tcp://127.0.0.1:{port}"
    with pytest.raises(ClusterError, match=f"cannot reach the Dask scheduler at {address}.*dask scheduler"):
        tile_slides(slides, tmp_path / "p.zarr", CFG, scheduler=Scheduler(address=address, connect_timeout=1))


def test_local_workers_share_cores_and_take_one_gpu_each(monkeypatch):
    assert Scheduler.parse("local", default_local=lambda: 3) == Scheduler(n_local=3)
    assert Scheduler.parse("local:2", default_local=lambda: 3).n_local == 2
    assert Scheduler.parse("tcp://10.0.0.5:8786", default_local=lambda: 3).address == "tcp://10.0.0.5:8786"
    cores = os.cpu_count()
    assert cluster.worker_env(0, 1, []) == {"OMP_NUM_THREADS": str(cores)}
    envs = [cluster.worker_env(i, 4, ["2", "5"]) for i in range(4)]
    assert [e["CUDA_VISIBLE_DEVICES"] for e in envs] == ["2", "5", "2", "5"]
    assert envs[0]["OMP_NUM_THREADS"] == str(max(1, cores // 4))
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1, 3")
    assert cluster.visible_gpus() == ["1", "3"]
    assert embed._default_local() == 2  # plain `local` embeds with one worker per GPU
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert cluster.visible_gpus() == [] and embed._default_local() == 1


def test_local_cluster_leaves_this_process_environment_alone(monkeypatch):
    """Dask's nannies set OMP_NUM_THREADS=1 (and more) here to start workers: a training run started
    from this process afterwards would run on one thread, and resume on other numerics."""
    for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "PYTHONHASHSEED", "MALLOC_TRIM_THRESHOLD_"):
        monkeypatch.delenv(k, raising=False)
    before = dict(os.environ)
    with cluster.local_cluster(Scheduler(n_local=1)) as c, Client(c.scheduler_address) as client:
        assert client.submit(os.getenv, "OMP_NUM_THREADS").result() == str(os.cpu_count())  # its share: all cores
    assert dict(os.environ) == before
