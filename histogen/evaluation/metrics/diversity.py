"""The generated patches' mean pairwise distance, and its ratio to the real draw A's: 1 is the
real spread, near 0 one repeated image (mode collapse). The floor puts draw B in their place."""
from __future__ import annotations

from histogen import metrics
from histogen.evaluation.comparison import Comparison
from histogen.evaluation.record import Evaluation
from histogen.evaluation.side import Side


def measure(ev: Evaluation, c: Comparison) -> None:
    if min(len(c.real.sample), len(c.generated.side.sample)) < 2:
        ev.skipped["diversity"] = "needs at least 2 patches on each side"
        return
    spread = metrics.pairwise_l1(c.real.sample)

    def score(side: Side) -> dict:
        d = metrics.pairwise_l1(side.sample)
        return {"pairwise_l1": d, "ratio": d / spread, "real_pairwise_l1": spread}

    # a floor draw exists only with 2 patches or more, and keeps as many as A: no second check
    ev.record("diversity", score(c.generated.side), score(c.floor) if c.floor is not None else None)
