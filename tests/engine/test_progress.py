"""engine.progress.Progress: its status line's figures, status lines logged every `every` seconds where
there is no terminal (HISTOGEN_PROGRESS_SECONDS), a tqdm bar where asked, nothing where not."""
from __future__ import annotations

import io
import logging

import pytest

from engine.progress import Progress


class Clock:
    def __init__(self):
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def test_status_gives_count_share_rate_figures_and_time_left():
    clock = Clock()
    p = Progress(300, "runs/x", "step", show=False, clock=clock)
    clock.t += 10
    p.update(120, loss=0.123456, lr="1e-4")
    assert p.status() == "runs/x: 120/300 step (40%), 12 step/s, loss 0.1235, lr 1e-4, 0:15 left"
    clock.t += 3600
    p.update(1)
    assert p.status().endswith(", 1:29:00 left")  # 179 steps at 121 per 3610 s: 5340 s, hours once past one
    assert "loss 0.1235" in p.status()  # figures stay until the next update that gives some


def test_status_without_total_and_rate_from_where_it_resumed():
    clock = Clock()
    p = Progress(None, "slides", "slide", show=False, clock=clock)
    assert p.status() == "slides: 0 slide, 0 slide/s"  # no time passed: no rate, no division by zero
    clock.t += 4
    p.update(2)
    assert p.status() == "slides: 2 slide, 0.5 slide/s"
    resumed = Progress(10, "runs/y", "step", initial=6, show=False, clock=clock)
    clock.t += 2
    resumed.update(2)
    assert resumed.status() == "runs/y: 8/10 step (80%), 1 step/s, 0:02 left"  # 2 steps in 2 s, not 8


def status_lines(caplog, clock, p, times):
    with caplog.at_level(logging.INFO, "histogen.progress"):
        for t in times:
            clock.t = 100.0 + t
            p.update(1)
    return [r.getMessage() for r in caplog.records if r.name == "histogen.progress"]


def test_without_a_terminal_a_status_line_every_interval(caplog):
    clock = Clock()
    p = Progress(10, "tile", "patch", stream=io.StringIO(), every=30, clock=clock)  # a log file: no tty
    assert p.bar is None and p.lines
    lines = status_lines(caplog, clock, p, [10, 31, 40, 62])
    assert lines == ["tile: 2/10 patch (20%), 0.0645 patch/s, 2:04 left",
                     "tile: 4/10 patch (40%), 0.0645 patch/s, 1:33 left"]


@pytest.mark.parametrize("env, logged", [("5", 2), ("junk", 1)])
def test_interval_from_the_environment(caplog, monkeypatch, env, logged):
    monkeypatch.setenv("HISTOGEN_PROGRESS_SECONDS", env)  # junk: the default 30 s
    clock = Clock()
    p = Progress(10, "tile", "patch", stream=io.StringIO(), clock=clock)
    assert len(status_lines(caplog, clock, p, [3, 6, 9, 31])) == logged  # 5 s: at 6 and 31


def test_a_bar_where_asked_and_nothing_where_not(caplog):
    stream = io.StringIO()
    with Progress(3, "embed", "slide", show=True, stream=stream) as p:
        p.update(3, loss=0.5)
    assert p.bar is None  # closed on leaving
    assert "embed" in stream.getvalue() and "3/3" in stream.getvalue()
    quiet, clock = io.StringIO(), Clock()
    p = Progress(3, "embed", "slide", show=False, stream=quiet, every=0, clock=clock)
    assert status_lines(caplog, clock, p, [1, 2, 3]) == [] and quiet.getvalue() == ""
