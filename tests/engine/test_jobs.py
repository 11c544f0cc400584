"""engine.jobs: a job's outcome as a SlideResult (done, skipped, failed with a message naming the slide),
a run that goes on past a bad slide, the resume rule for a complete slide, and the summary's text."""
from __future__ import annotations

import errno
import logging
from pathlib import Path

import numpy as np
import pytest

from engine.cluster import Scheduler
from engine.jobs import SlideJob, SlideResult, Summary, Written, guarded, run, slide_bars, up_to_date
from engine.slide import SlideError
from engine.store import Codec, PatchStore


def job(work, sid="a") -> SlideJob:
    return SlideJob(sid, f"slides/{sid}.svs", work)


def test_what_the_work_returns_becomes_the_result():
    assert guarded(job(lambda: 7)) == SlideResult("a", "done", 7)
    assert guarded(job(lambda: None)) == SlideResult("a", "skipped")
    written = Written(9, n_rejected=3, rejected_by={"ink": 2, "blur": 1})
    assert guarded(job(lambda: written)) == SlideResult("a", "done", 9, n_rejected=3, rejected_by={"ink": 2, "blur": 1})


def raising(e: Exception):
    def work():
        raise e
    return work


@pytest.mark.parametrize("error", [SlideError("tile 3 does not decode"), OSError("disk full"), ValueError("bad level")])
def test_a_known_failure_is_a_failed_result_that_names_the_slide(caplog, error):
    with caplog.at_level(logging.ERROR, "engine.jobs"):
        r = guarded(job(raising(error)))
    assert r == SlideResult("a", "failed", error=f"slides/a.svs: {error}")
    assert caplog.messages == [r.error]


def test_a_message_that_names_the_slide_is_not_prefixed_again():
    r = guarded(job(raising(SlideError("slides/a.svs: the file is cut short"))))
    assert r.error == "slides/a.svs: the file is cut short"


def test_an_unexpected_error_is_a_failed_result_too(caplog):
    with caplog.at_level(logging.ERROR, "engine.jobs"):
        r = guarded(job(raising(KeyError("level"))))
    assert r.status == "failed" and r.error == "slides/a.svs: unexpected KeyError: 'level'"
    assert "run with --debug for the traceback" in caplog.messages[0]


def test_run_keeps_job_order_and_goes_on_past_a_bad_slide():
    jobs = [job(lambda: 1, "a"), job(raising(SlideError("broken")), "b"), job(lambda: None, "c"), job(lambda: 4, "d")]
    results, ran_on = run(jobs, "tiling", show_progress=False)
    assert ran_on == ""
    assert [(r.slide_id, r.status, r.n_patches) for r in results] == [("a", "done", 1), ("b", "failed", 0),
                                                                       ("c", "skipped", 0), ("d", "done", 4)]
    assert run([], "tiling", show_progress=False) == ([], "")


def test_a_full_disk_undoes_the_slide_in_flight_and_starts_no_other(caplog):
    undone = []

    def full():
        raise OSError(errno.ENOSPC, "No space left on device", "p.zarr/slides/b/images/c/0/0/0/0")

    jobs = [job(lambda: 3, "a"), SlideJob("b", "slides/b.svs", full, lambda: undone.append("b")),
            job(lambda: 5, "c"), job(lambda: 6, "d")]
    with caplog.at_level(logging.DEBUG, "engine.jobs"):
        results, _ = run(jobs, "tiling", show_progress=False)
    assert [(r.slide_id, r.status, r.disk_full) for r in results] == [
        ("a", "done", False), ("b", "failed", True), ("c", "not started", False), ("d", "not started", False)]
    assert undone == ["b"] and not [r for r in caplog.records if r.levelno >= logging.WARNING]
    text = Summary(results, 1.0, Path("p.zarr")).text().splitlines()
    assert text[0] == "slides: 1 done, 1 failed, 0 skipped (already complete), 2 not started"
    assert text[-1] == ("failed: p.zarr: no space left on the disk: b removed unfinished, 2 slide(s) not started, "
                        "1 complete kept; free space there or choose another --out, then run the same command "
                        "again to resume")


def test_a_quota_error_wrapped_in_another_is_a_full_disk_too():
    def wrapped():
        try:
            raise OSError(errno.EDQUOT, "Disk quota exceeded")
        except OSError as e:
            raise RuntimeError("the codec could not write its chunk") from e

    r = guarded(SlideJob("a", "slides/a.svs", wrapped))
    assert r.status == "failed" and r.disk_full


def test_slide_bars_only_where_the_slides_run_here():
    assert slide_bars(True, None) is True and slide_bars(None, None) is None
    assert slide_bars(True, Scheduler(n_local=2)) is False  # a bar on a worker would go to its log


@pytest.fixture
def store(tmp_path) -> PatchStore:
    """Slide 'a' complete from the file fingerprinted 'f1'; slide 'b' begun and never finished."""
    s = PatchStore.create_or_resume(tmp_path / "p.zarr", 8, {})
    w = s.begin_slide("a", {"fingerprint": "f1", "level": 0}, 2, Codec())
    w.append(np.zeros((2, 8, 8, 3), np.uint8), np.zeros((2, 2), np.int64), np.ones(2))
    w.finish(np.zeros((2, 2)), {}, {})
    s.begin_slide("b", {"fingerprint": "f2"}, 2, Codec())
    return s


def test_up_to_date_only_when_complete_from_the_same_input(store):
    assert up_to_date(store, "a", Path("a.svs"), {"fingerprint": "f1"})
    assert not up_to_date(store, "b", Path("b.svs"), {"fingerprint": "f2"})  # unfinished: written again
    assert not up_to_date(store, "new", Path("new.svs"), {"fingerprint": "f3"})
    with pytest.raises(SlideError, match=r"a.svs: changed since it was written into .*p.zarr \(fingerprint differ\)"):
        up_to_date(store, "a", Path("a.svs"), {"fingerprint": "f9", "level": 0})


def test_summary_text_counts_slides_patches_and_rejections():
    results = [SlideResult("a", "done", 10, n_rejected=2, rejected_by={"ink": 2, "blur": 0}),
               SlideResult("b", "done", 5, n_rejected=4, rejected_by={"tissue": 3, "ink": 1}),
               SlideResult("c", "skipped"), SlideResult("d", "failed", error="slides/d.svs: broken")]
    s = Summary(results, 2.0, store=Path("out.zarr"), ran_on="local:2")
    assert (s.done, s.skipped, s.failed, s.n_patches) == (["a", "b"], ["c"], ["slides/d.svs: broken"], 15)
    assert s.text() == "\n".join([
        "slides: 2 done, 1 failed, 1 skipped (already complete)",
        "patches: 15 in 2.0 s (7.5 patches/s)",
        "rejected: 6 (ink 3, tissue 3)",  # reasons summed over slides; none rejected for blur: left out
        "store: out.zarr",
        "ran on: local:2",
        "failed: slides/d.svs: broken",
    ])


def test_summary_of_a_run_without_the_check_and_in_no_time():
    s = Summary([SlideResult("a", "done", 3)], 0.0, done_as="embedded", skipped_as="already embedded")
    assert s.text() == "slides: 1 embedded, 0 failed, 0 skipped (already embedded)\npatches: 3 in 0.0 s (0.0 patches/s)"
