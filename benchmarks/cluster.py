"""Scale-out: slides/hour of `engine.tile` on a local Dask cluster of 1 and 2 worker processes, on
the same slides, against the single-process path (no --scheduler) in the same run.

Scaling efficiency = throughput with 2 workers / (2 x throughput with 1 worker), each worker pinned
to a core of its own (Linux CPU affinity) with one reader thread: what adding a worker with its own
core gives. Unpinned, one "one-thread" worker already keeps more than one core busy (its main
thread writes while the reader thread decodes), so on a 2-core machine the second worker would
find no free core. The cluster runs are timed on a cluster already started (as a shared
scheduler is); what starting and stopping one costs a `--scheduler local:N` run is measured on
its own.
"""
from __future__ import annotations

import argparse
import os
import shutil
import time
from pathlib import Path

from benchmarks import report
from benchmarks.tiling import make_slide
from engine import cluster
from engine.cluster import Scheduler
from engine.tile import TileConfig, tile_slides


def make_slides(work: Path, size: int, n: int) -> Path:
    """`n` slides, each a link to the same large slide (the tiler reads each as a slide of its own)."""
    src = make_slide(work, size)
    folder = work / f"cluster-{size}-x{n}"
    folder.mkdir(exist_ok=True)
    for i in range(n):
        link = folder / f"slide{i:02d}{src.suffix}"
        if not link.exists():
            link.symlink_to(src.resolve())
    return folder


def run(slides: Path, work: Path, threads: int, scheduler: Scheduler | None) -> tuple[float, int, int]:
    """(seconds, slides, patches) of one run into a fresh store."""
    out = work / "cluster-store.zarr"
    shutil.rmtree(out, ignore_errors=True)
    t0 = time.perf_counter()
    summary = tile_slides(slides, out, TileConfig(workers=threads, qa=False), show_progress=False, scheduler=scheduler)
    seconds = time.perf_counter() - t0
    assert summary.count("done") == len(summary.results), summary.text()
    return seconds, summary.count("done"), summary.n_patches


def _pin_process(core: int) -> None:
    for tid in os.listdir("/proc/self/task"):  # every thread, so that the threads they start inherit it
        os.sched_setaffinity(int(tid), {core})


def best_on_cluster(n_workers: int, slides: Path, work: Path, threads: int, repeats: int, pin: bool = False):
    from distributed import Client

    with cluster.local_cluster(Scheduler(n_local=n_workers)) as c, Client(c.scheduler_address) as client:
        if pin:
            for core, worker in enumerate(sorted(client.nthreads())):
                client.run(_pin_process, core, workers=[worker])
        sched = Scheduler(address=c.scheduler_address)
        run(slides, work, threads, sched)  # warm-up, untimed: workers import the engine
        return min(run(slides, work, threads, sched) for _ in range(repeats))


def start_and_stop(n: int) -> float:
    t0 = time.perf_counter()
    with cluster.connect(Scheduler(n_local=n)) as client:
        client.submit(lambda: __import__("engine.tile")).result()  # every worker ready to tile
    return time.perf_counter() - t0


def main(argv, work: Path, out: Path) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks cluster")
    p.add_argument("--size", type=int, default=20480, help="side of each slide in pixels")
    p.add_argument("--slides", type=int, default=8, help="number of slides")
    p.add_argument("--repeats", type=int, default=2, help="timed runs per configuration (the best counts)")
    a = p.parse_args(argv)
    work.mkdir(parents=True, exist_ok=True)
    slides = make_slides(work, a.size, a.slides)
    cores = os.cpu_count() or 1
    run(slides, work, cores, None)  # warm-up, untimed: the slide into the page cache
    base, one, two = ("single process (no --scheduler), all cores", "Dask, 1 worker on 1 core, 1 reader thread",
                      "Dask, 2 workers on a core each, 1 reader thread each")
    results = {
        base: min(run(slides, work, cores, None) for _ in range(a.repeats)),
        "Dask, 1 worker, all cores": best_on_cluster(1, slides, work, cores, a.repeats),
        "Dask, 2 workers, 1 reader thread each (the local:2 default here)": best_on_cluster(2, slides, work, 1,
                                                                                            a.repeats),
        one: best_on_cluster(1, slides, work, 1, a.repeats, pin=True),
        two: best_on_cluster(2, slides, work, 1, a.repeats, pin=True),
    }
    rows, rate = [], {}
    for name, (seconds, n, patches) in results.items():
        rate[name] = n / seconds * 3600
        rows.append({"name": name, "slides": n, "patches": patches, "seconds": seconds,
                     "slides/hour": round(rate[name]),
                     "patches/s": patches / seconds, "x single process": rate[name] / rate[base]})  # base comes first
    extra = {
        "slides": f"{a.slides} x {make_slide(work, a.size).name} ({a.size}x{a.size})",
        "scaling efficiency, 2 workers / (2 x 1 worker), 1 reader thread each": rate[two] / (2 * rate[one]),
        "seconds to start and stop a local:2 cluster (not in the rows above)": min(start_and_stop(2)
                                                                                   for _ in range(a.repeats)),
    }
    print(report.write(out, "cluster", rows, extra))
    return 0
