"""Per-slide jobs, the one harness of tiling, embedding and table import: each slide is a job that
writes only its own group of the store, run here one after another or as one Dask task each on a
`--scheduler` (engine.cluster). A bad slide becomes a failed result and one log line, never an
exception, so that the other slides go on; the run's Summary is what the command prints.
"""
from __future__ import annotations

import functools
import logging
import traceback
from dataclasses import dataclass, field
from typing import Callable

from engine import cluster
from engine.errors import UserError, disk_full
from engine.location import Location
from engine.progress import Progress
from engine.slide import SlideError
from engine.store import COMPLETE, PatchStore

log = logging.getLogger("engine.jobs")


@dataclass
class SlideResult:
    slide_id: str
    status: str  # done | skipped | failed | not started (the disk filled up before its turn)
    n_patches: int = 0
    error: str = ""
    n_rejected: int = 0
    rejected_by: dict[str, int] | None = None  # patches the check rejected, per reason; None: no check ran
    disk_full: bool = False  # failed because the disk filled up; what it wrote is removed


@dataclass(frozen=True)
class Written:
    """What a job that checks patches wrote: its patch count, and the patches the check rejected,
    in all and per reason (a patch failing two reasons counts under both)."""

    n_patches: int
    n_rejected: int = 0
    rejected_by: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class SlideJob:
    """One slide's work: `work()` returns the number of patches it wrote (or a Written), or None
    where the store already held the slide complete (skipped). `where` names the slide in messages.
    `undo()` removes what the work wrote, where the disk fills up in the middle of it."""

    slide_id: str
    where: str
    work: Callable[[], int | Written | None]
    undo: Callable[[], None] | None = None


def guarded(job: SlideJob) -> SlideResult:
    """`job.work()` as a SlideResult; whatever goes wrong becomes a failed result and one log line
    that names the slide (none for a full disk: the summary says that once for the run)."""
    try:
        n = job.work()
    except Exception as e:
        return _failed(job, e)
    if n is None:
        return SlideResult(job.slide_id, "skipped")
    if isinstance(n, Written):
        return SlideResult(job.slide_id, "done", n.n_patches, n_rejected=n.n_rejected, rejected_by=n.rejected_by)
    return SlideResult(job.slide_id, "done", n)


def _failed(job: SlideJob, e: Exception) -> SlideResult:
    if disk_full(e):
        # What the slide wrote goes, so that the store holds whole slides only and the space comes back.
        log.debug("%s: %s", job.where, e)
        try:
            if job.undo is not None:
                job.undo()
        except Exception as undo_error:
            log.warning("%s: could not remove its unfinished output (%s); the next run replaces it", job.where,
                        undo_error)
        return SlideResult(job.slide_id, "failed", error=f"{job.where}: {e}", disk_full=True)
    if isinstance(e, (UserError, OSError, ValueError)):
        msg = str(e) if job.where in str(e) else f"{job.where}: {e}"
        log.error("%s", msg)
        return SlideResult(job.slide_id, "failed", error=msg)
    # a bug or an unforeseen file: report it, keep going
    log.error("%s: unexpected %s: %s (run with --debug for the traceback)", job.where, type(e).__name__, e)
    log.debug("%s", traceback.format_exc())
    return SlideResult(job.slide_id, "failed", error=f"{job.where}: unexpected {type(e).__name__}: {e}")


def run(jobs: list[SlideJob], doing: str, scheduler: cluster.Scheduler | None = None,
        show_progress: bool | None = None) -> tuple[list[SlideResult], str]:
    """(results in job order, the Dask cluster they ran on or ''): every job here with a slides bar,
    or one Dask task each on `scheduler`. `doing` ("tiling") says what a slide whose worker died
    was in."""
    if not jobs:  # no cluster to start for nothing
        return [], ""
    if scheduler is None:
        results = []
        with Progress(len(jobs), "slides", "slide", show=show_progress) as bar:
            for job in jobs:
                if results and results[-1].disk_full:  # every slide after it would fail the same way
                    break
                results.append(guarded(job))
                bar.update(1)
        return results + [SlideResult(job.slide_id, "not started") for job in jobs[len(results):]], ""
    where = {job.slide_id: job.where for job in jobs}

    def died(sid: str, why: str) -> SlideResult:
        return SlideResult(sid, "failed", error=f"{where[sid]}: {why} while {doing} it (out of memory, or killed); "
                           "check the workers' logs, then run the same command again to retry it")

    tasks = {job.slide_id: functools.partial(guarded, job) for job in jobs}
    with cluster.connect(scheduler) as client:
        ran_on = cluster.describe(client, scheduler)
        done = cluster.run(client, scheduler, tasks, died, show_progress, halt=lambda r: r.disk_full)
    return [done.get(job.slide_id) or SlideResult(job.slide_id, "not started") for job in jobs], ran_on


def slide_bars(show_progress: bool | None, scheduler: cluster.Scheduler | None) -> bool | None:
    """Whether each slide shows its own patch bar: not on Dask, where it would go to a worker's log."""
    return show_progress if scheduler is None else False


def up_to_date(store: PatchStore, slide_id: str, where, identity: dict) -> bool:
    """Whether the store holds the slide complete from the same input (`identity`: attributes such
    as the file's fingerprint). A complete group made from other input is never replaced silently."""
    if store.status(slide_id) != COMPLETE:
        return False
    old = store.attrs(slide_id)
    changed = [k for k, v in identity.items() if old.get(k) != v]
    if not changed:
        return True
    raise SlideError(f"{where}: changed since it was written into {store.path} ({', '.join(changed)} differ)",
                     "write it into a new {out}, or pass {overwrite}")


@dataclass
class Summary:
    """What a run did, slide by slide, and the text its command prints."""

    results: list[SlideResult]
    seconds: float
    store: Location | None = None  # printed where given: the store the run wrote
    qa_dir: Location | None = None
    ran_on: str = ""  # the Dask cluster, where there was one
    done_as: str = "done"  # how the text says a slide was done ("embedded")
    skipped_as: str = "already complete"  # and why one was skipped
    disk_hint: str = "free space there or choose another --out"  # what to do where the disk filled up

    def count(self, status: str) -> int:
        return sum(r.status == status for r in self.results)

    def _ids(self, status: str) -> list[str]:
        return [r.slide_id for r in self.results if r.status == status]

    @property
    def done(self) -> list[str]:
        return self._ids("done")

    @property
    def skipped(self) -> list[str]:
        return self._ids("skipped")

    @property
    def failed(self) -> list[str]:
        """One message per failed slide, and one for all those the disk filled up on."""
        full = [r for r in self.results if r.disk_full]
        return [r.error for r in self.results if r.status == "failed" and not r.disk_full] + (
            [self._disk_full_text(full)] if full else [])

    def _disk_full_text(self, full: list[SlideResult]) -> str:
        kept = self.count("done") + self.count("skipped")
        return (f"{self.store}: no space left on the disk: {', '.join(r.slide_id for r in full)} removed unfinished, "
                f"{self.count('not started')} slide(s) not started, {kept} complete kept; "
                f"{self.disk_hint}, then run the same command again to resume")

    @property
    def n_patches(self) -> int:
        return sum(r.n_patches for r in self.results if r.status == "done")

    def text(self) -> str:
        rate = self.n_patches / self.seconds if self.seconds > 0 else 0.0
        lines = [
            f"slides: {self.count('done')} {self.done_as}, {self.count('failed')} failed, "
            f"{self.count('skipped')} skipped ({self.skipped_as})"
            + (f", {self.count('not started')} not started" if self.count("not started") else ""),
            f"patches: {self.n_patches} in {self.seconds:.1f} s ({rate:.1f} patches/s)",
        ]
        checked = [r for r in self.results if r.status == "done" and r.rejected_by is not None]
        if checked:
            by: dict[str, int] = {}
            for r in checked:
                for reason, k in r.rejected_by.items():
                    by[reason] = by.get(reason, 0) + k
            detail = ", ".join(f"{reason} {k}" for reason, k in by.items() if k)
            lines.append(f"rejected: {sum(r.n_rejected for r in checked)}" + (f" ({detail})" if detail else ""))
        if self.store is not None:
            lines.append(f"store: {self.store}")
        if self.ran_on:
            lines.append(f"ran on: {self.ran_on}")
        if self.qa_dir is not None:
            lines.append(f"QA pictures: {self.qa_dir}")
        return "\n".join(lines + [f"failed: {m}" for m in self.failed])
