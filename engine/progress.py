"""Progress of long jobs (tiling, embedding, training), wherever their output goes.

On a terminal a tqdm bar; otherwise (a cluster job, `nohup`, `> log 2>&1`) tqdm turns itself off,
so a status line is logged every `every` seconds instead (30 by default, `HISTOGEN_PROGRESS_SECONDS`
overrides it): done/total, rate, the job's own figures (loss, ...) and the time left.

    with Progress(total=300, desc="runs/x", unit="step") as p:
        for ...:
            p.update(1, loss=0.12)
"""
from __future__ import annotations

import logging
import os
import sys
import time

log = logging.getLogger("histogen.progress")
DEFAULT_SECONDS = 30.0


def _interval() -> float:
    try:
        return max(0.0, float(os.environ.get("HISTOGEN_PROGRESS_SECONDS", DEFAULT_SECONDS)))
    except ValueError:
        return DEFAULT_SECONDS


def _duration(seconds: float) -> str:
    s = int(round(seconds))
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


class Progress:
    """show: True = a bar, False = nothing, None = a bar on a terminal and status lines elsewhere."""

    def __init__(self, total: int | None, desc: str, unit: str, initial: int = 0, show: bool | None = None,
                 every: float | None = None, leave: bool = True, stream=None, clock=time.monotonic):
        stream = stream or sys.stderr
        self.total, self.desc, self.unit, self.n = total, desc, unit, initial
        self._clock, self._every = clock, _interval() if every is None else every
        self._t0 = self._last = clock()
        self._start_n = initial
        self._figures: dict[str, str] = {}
        self.bar = None
        self.lines = show is None and not (hasattr(stream, "isatty") and stream.isatty())
        if show or (show is None and not self.lines):
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=initial, desc=desc, unit=unit, leave=leave, file=stream, disable=False)

    def update(self, n: int = 1, **figures) -> None:
        self.n += n
        if figures:
            self._figures = {k: f"{v:.4g}" if isinstance(v, float) else str(v) for k, v in figures.items()}
        if self.bar is not None:
            self.bar.update(n)
            if figures:
                self.bar.set_postfix(self._figures, refresh=False)
        elif self.lines and self._clock() - self._last >= self._every:
            self._last = self._clock()
            log.info("%s", self.status())

    def status(self) -> str:
        """'desc: 120/300 step (40%), 3.2 step/s, loss 0.12, 0:56 left'."""
        elapsed = self._clock() - self._t0
        rate = (self.n - self._start_n) / elapsed if elapsed > 0 else 0.0
        share = f" ({100 * self.n / self.total:.0f}%)" if self.total else ""
        parts = [f"{self.desc}: {self.n}/{self.total} {self.unit}{share}"
                 if self.total is not None else f"{self.desc}: {self.n} {self.unit}"]
        parts.append(f"{rate:.3g} {self.unit}/s")
        parts += [f"{k} {v}" for k, v in self._figures.items()]
        if self.total and rate > 0:
            parts.append(f"{_duration(max(0, self.total - self.n) / rate)} left")
        return ", ".join(parts)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
