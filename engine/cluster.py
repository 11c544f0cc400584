"""Per-slide work on a Dask cluster, for the commands that take `--scheduler`:

    --scheduler tcp://HOST:8786   a running Dask scheduler and its workers
    --scheduler local:N           N worker processes started on this machine for the run
    (no flag)                     this process only; Dask is not even imported

One task per slide: the function the single-process path calls for that slide, which writes only
that slide's group (the caller writes the store's root metadata once, before submitting). Results
come back as slides finish. A slide whose worker dies is tried again on another worker, a bounded
number of times, and then becomes a failed slide, never a stopped run.
"""
from __future__ import annotations

import logging
import os
import queue
import time
import uuid
from collections import Counter, deque
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator, TypeVar
from urllib.parse import urlsplit

from engine.errors import UserError
from engine.progress import Progress

R = TypeVar("R")
log = logging.getLogger(__name__)
LOCAL_WORKERS_LOST = 60.0  # seconds without a worker after which a local cluster is given up
RESULT_TIMEOUT = 30.0  # seconds to fetch a finished slide's small result before taking its worker for dead
POLL = 1.0  # seconds between looks at the cluster's workers while slides run


class ClusterError(UserError):
    """A cluster that cannot be used; the message says what to do."""


@dataclass(frozen=True)
class Scheduler:
    """Where the slides go: a running scheduler at `address`, or `n_local` worker processes started
    here for the run. `retries`: how often a slide is sent again after its worker died running it."""

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
    from engine.runtime import cuda_device_count

    return [str(i) for i in range(cuda_device_count())]


def worker_env(i: int, n: int, gpus: list[str]) -> dict[str, str]:
    """Local worker i of n: its share of the cores for OpenMP (Dask would set 1), and one GPU."""
    env = {"OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 1) // n))}
    if gpus:
        env["CUDA_VISIBLE_DEVICES"] = gpus[i % len(gpus)]
    return env


@contextmanager
def local_cluster(s: Scheduler) -> Iterator:
    """`s.n_local` worker processes on 127.0.0.1, each restarted by its nanny if it dies, one task at
    a time each, no dashboards; yields the cluster, whose `scheduler_address` takes clients.

    Dask's nannies set OMP_NUM_THREADS=1, PYTHONHASHSEED and more in this process's environment
    before they start workers; it is put back afterwards, so that what this process starts later
    (a training run, say) gets neither one thread nor a fixed hash seed."""
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
                                                   "dashboard_address": "127.0.0.1:0",
                                                   "allowed_failures": 0}}  # run() retries itself
    environ = dict(os.environ)
    try:
        with SpecCluster(workers=workers, scheduler=scheduler, silence_logs=quiet) as cluster:
            yield cluster
    finally:
        os.environ.clear()
        os.environ.update(environ)


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
        show_progress: bool | None = None, halt: Callable[[R], bool] = lambda r: False) -> dict[str, R]:
    """tasks[key]() for every key, one Dask task each, collected as they finish. A task whose
    worker died is sent again to another worker, at most `s.retries` times, and then gives
    failed(key, why). After a result for which `halt` is true (a full disk), no task is sent
    any more: the keys never sent have no result.

    Each task is pinned to a worker with a thread free for it (of this run's tasks). Left to
    itself, Dask queues a few tasks on each worker, and moves a dead worker's slide at once onto a
    busy one; a worker's death counts against every task it holds, so a slide that kills workers
    would take innocent slides down with it. Pinned, a death is charged only to the slides that
    were running there, and the scheduler holds no more than the cluster runs (10,000 slides)."""
    from distributed import KilledWorker

    run_id = uuid.uuid4().hex[:8]  # keys unique on a scheduler that other runs share
    todo = deque(tasks)  # keys still to send; a slide to retry goes first
    running: dict = {}  # future -> (key, worker address)
    deaths: Counter = Counter()
    results: dict[str, R] = {}
    finished: queue.Queue = queue.Queue()
    seen_workers = time.monotonic()
    bar = Progress(len(tasks), "slides", "slide", show=show_progress)

    def done(key: str, result: R) -> None:
        results[key] = result
        bar.update(1)
        if halt(result):
            todo.clear()

    def lost(key: str, how: str) -> None:  # its worker died while running it
        deaths[key] += 1
        if deaths[key] > s.retries:
            done(key, failed(key, f"its worker died {deaths[key]} times"))
        else:
            log.warning("%s: its worker %s; sending it to another worker (retry %d of %d)", key, how, deaths[key],
                        s.retries)
            todo.appendleft(key)

    def collect(fut) -> None:
        key, _ = running.pop(fut, (None, None))
        if key is None:  # already given up for lost, below
            return
        try:
            if fut.status == "error":
                e = fut.exception()
                lost(key, "died") if isinstance(e, KilledWorker) else done(key, failed(key, f"{type(e).__name__}: {e}"))
            elif fut.status == "cancelled":
                raise ClusterError("the Dask scheduler dropped the run (cancelled); slides finished so far are kept: "
                                   "run the same command again to resume")
            else:
                done(key, fut.result(timeout=RESULT_TIMEOUT))
        except TimeoutError:  # its worker died after the slide was written, before the result came back
            lost(key, f"did not hand its result over in {RESULT_TIMEOUT:.0f} s")
        fut.release()

    def send() -> None:
        nonlocal seen_workers
        # Asked directly: client.scheduler_info() returns an attribute that the client's own
        # periodic refresh overwrites with an identity listing no workers.
        workers = client.sync(client.scheduler.identity, n_workers=-1)["workers"]
        for fut, (key, address) in list(running.items()):
            if address not in workers:  # died (or left) with the slide; its pinned task would wait forever
                del running[fut]
                fut.release()
                lost(key, "left the cluster")
        # New slides only to running workers: one still starting (or paused) may never run them.
        ready = {address: w["nthreads"] for address, w in workers.items() if w["status"] == "running"}
        if ready:
            seen_workers = time.monotonic()
        elif s.n_local and time.monotonic() - seen_workers > LOCAL_WORKERS_LOST:
            # Seen with distributed 2026.8 after workers died right after starting, again and again:
            # their nannies never started them again, or the new ones never got past starting.
            raise ClusterError(f"the local Dask workers died and did not come back for {LOCAL_WORKERS_LOST:.0f} s; "
                               "slides finished so far are kept: run the same command again to resume")
        busy = Counter(address for _, address in running.values())
        for address, threads in ready.items():
            while todo and busy[address] < threads:
                key = todo.popleft()
                fut = client.submit(tasks[key], key=f"{key}-{run_id}-{deaths[key]}", workers=[address],
                                    allow_other_workers=False)
                running[fut] = (key, address)
                busy[address] += 1
                fut.add_done_callback(finished.put)

    with bar:
        while todo or running:
            send()
            try:
                collect(finished.get(timeout=POLL))
            except queue.Empty:
                pass
    return results
