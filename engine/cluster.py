"""Per-slide work on a Dask cluster, for the commands that take `--scheduler`:

    --scheduler tcp://HOST:8786   a running Dask scheduler and its workers
    --scheduler local:N           N worker processes started on this machine for the run
    (no flag)                     this process only; Dask is not even imported

One task per slide: the function the single-process path calls for that slide, which writes only
that slide's group (the caller writes the store's root metadata once, before submitting). Results
come back as slides finish. A slide whose worker dies is tried again on another worker, up to the
scheduler's allowed failures, and then becomes a failed slide, never a stopped run.
"""
from __future__ import annotations

import logging
import os
import queue
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator, TypeVar
from urllib.parse import urlsplit

R = TypeVar("R")
LOCAL_WORKERS_LOST = 60.0  # seconds without a worker after which a local cluster is given up


class ClusterError(Exception):
    """A cluster that cannot be used; the message says what to do."""


@dataclass(frozen=True)
class Scheduler:
    """Where the slides go: a running scheduler at `address`, or `n_local` worker processes started
    here for the run. `retries`: how often a local cluster tries a slide again after its worker died
    on it (a running scheduler has its own setting, distributed.scheduler.allowed-failures)."""

    address: str | None = None  # tcp://HOST:PORT (or tls://)
    n_local: int = 0  # one task at a time each
    retries: int = 2
    connect_timeout: float = 10.0  # seconds to reach `address`

    @classmethod
    def parse(cls, text: str, default_local: Callable[[], int]) -> "Scheduler":
        """`tcp://HOST:PORT`, `local:N`, or `local` (N = default_local())."""
        usage = (f"--scheduler {text!r}: expected tcp://HOST:PORT of a running Dask scheduler, "
                 "or local:N to start N worker processes on this machine")
        if text.startswith(("tcp://", "tls://")):
            try:
                url = urlsplit(text)
                if url.hostname and url.port is not None:
                    return cls(address=text)
            except ValueError:  # a port that is not a number
                pass
            raise ValueError(usage)
        if text == "local":
            return cls(n_local=max(1, default_local()))
        n = text.removeprefix("local:")
        if text.startswith("local:") and n.isdigit() and int(n) >= 1:
            return cls(n_local=int(n))
        raise ValueError(usage)

    def cores_per_worker(self) -> int:
        """This machine's cores shared among the local workers (all of them without a local cluster)."""
        cores = os.cpu_count() or 1
        return max(1, cores // self.n_local) if self.n_local else cores


def add_option(p, local: str) -> None:
    """--scheduler; `local`: what plain `local` starts, for the help text."""
    p.add_argument("--scheduler", default=None, metavar="ADDRESS",
                   help="run one task per slide on Dask: tcp://HOST:8786 (a running scheduler) or local:N "
                        f"(N worker processes on this machine; plain 'local': {local}); default: this process alone")


def visible_gpus() -> list[str]:
    """The GPUs local workers are spread over: those in CUDA_VISIBLE_DEVICES where it is set, else all."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return [d.strip() for d in visible.split(",") if d.strip()]
    from engine.slide import cuda_device_count

    return [str(i) for i in range(cuda_device_count())]


def worker_env(i: int, n: int, gpus: list[str]) -> dict[str, str]:
    """Local worker i of n: its share of the cores for OpenMP (Dask would set 1), and one GPU."""
    env = {"OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 1) // n))}
    if gpus:
        env["CUDA_VISIBLE_DEVICES"] = gpus[i % len(gpus)]
    return env


def local_cluster(s: Scheduler):
    """`s.n_local` worker processes on 127.0.0.1, each restarted by its nanny if it dies, one task at
    a time each, no dashboards. A context manager; its `scheduler_address` takes clients."""
    from distributed import Nanny, SpecCluster
    from distributed import Scheduler as DaskScheduler

    n, gpus = s.n_local, visible_gpus()
    quiet = logging.ERROR  # a worker's death is reported with its slide, not as Dask's warnings
    workers = {
        i: {"cls": Nanny, "options": {"host": "127.0.0.1", "nthreads": 1, "dashboard": False, "silence_logs": quiet,
                                      "memory_limit": 1 / n, "env": worker_env(i, n, gpus)}}
        for i in range(n)
    }
    # The scheduler's HTTP server (health, metrics) still starts: on loopback, any free port.
    scheduler = {"cls": DaskScheduler, "options": {"host": "127.0.0.1", "port": 0, "dashboard": False,
                                                   "dashboard_address": "127.0.0.1:0", "allowed_failures": s.retries}}
    return SpecCluster(workers=workers, scheduler=scheduler, silence_logs=quiet)


@contextmanager
def connect(s: Scheduler) -> Iterator:
    """A dask.distributed Client for `s`, and its local cluster while it is open."""
    from distributed import Client

    dask_log = logging.getLogger("distributed")
    level = dask_log.level
    dask_log.setLevel(max(level, logging.WARNING))  # not every connection and worker start at INFO
    try:
        if s.n_local:
            with local_cluster(s) as cluster, Client(cluster) as client:
                yield client
            return
        try:
            client = Client(s.address, timeout=s.connect_timeout)
        except (OSError, TimeoutError) as e:
            raise ClusterError(f"cannot reach the Dask scheduler at {s.address} ({e}); check the address, or start one "
                               f"(dask scheduler) and its workers (dask worker {s.address})") from e
        with client:
            yield client
    finally:
        dask_log.setLevel(level)


def describe(client, s: Scheduler) -> str:
    """The cluster, for the run's summary."""
    n = len(client.nthreads())
    return f"{n} local Dask worker processes" if s.n_local else f"{n} Dask workers at {s.address}"


def run(client, s: Scheduler, tasks: dict[str, Callable[[], R]], failed: Callable[[str, str], R],
        show_progress: bool | None = None) -> dict[str, R]:
    """tasks[key]() for every key, one Dask task each, collected as they finish. A task that never
    finished (its worker died more often than the scheduler allows) gives failed(key, why).

    Only as many tasks are in flight as the cluster has worker threads. Dask would hand a few
    slides to each worker at once, and a worker's death counts against every task it holds; this
    way it holds only the slides it runs. It also keeps the scheduler small over 10,000 slides."""
    from distributed import KilledWorker
    from distributed.client import FutureCancelledError
    from tqdm import tqdm

    run_id = uuid.uuid4().hex[:8]  # keys unique on a scheduler that other runs share
    todo, in_flight, results = iter(tasks.items()), {}, {}
    finished: queue.Queue = queue.Queue()
    seen_workers = time.monotonic()

    def top_up() -> None:  # also as workers join, or come back after dying
        nonlocal seen_workers
        threads = sum(client.nthreads().values())
        if threads:
            seen_workers = time.monotonic()
        elif s.n_local and time.monotonic() - seen_workers > LOCAL_WORKERS_LOST:
            # Seen with distributed 2026.8 after workers died right after starting: their nannies
            # never started them again.
            raise ClusterError(f"the local Dask workers died and did not come back for {LOCAL_WORKERS_LOST:.0f} s; "
                               "slides finished so far are kept: run the same command again to resume")
        while len(in_flight) < max(1, threads):
            key, task = next(todo, (None, None))
            if key is None:
                return
            fut = client.submit(task, key=f"{key}-{run_id}")
            in_flight[fut] = key
            fut.add_done_callback(finished.put)

    def collect(fut) -> None:
        key = in_flight.pop(fut)
        try:
            results[key] = fut.result()
        except KilledWorker as e:
            results[key] = failed(key, f"its worker died {e.allowed_failures + 1} times")
        except FutureCancelledError as e:
            raise ClusterError(f"the Dask scheduler dropped the run ({e}); slides finished so far are kept: "
                               "run the same command again to resume") from e
        except Exception as e:  # the task's result or error could not come back
            results[key] = failed(key, f"{type(e).__name__}: {e}")
        fut.release()

    top_up()
    with tqdm(total=len(tasks), desc="slides", unit="slide", disable=None if show_progress is None else not show_progress) as bar:
        while in_flight:
            try:
                collect(finished.get(timeout=2))
                bar.update()
            except queue.Empty:
                pass
            top_up()
    return results
