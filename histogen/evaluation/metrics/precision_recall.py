"""Precision and recall of the generated features against the real ones' k-nearest-neighbour
manifold (a learned encoder only)."""
from __future__ import annotations

from histogen import metrics
from histogen.evaluation.comparison import Comparison
from histogen.evaluation.record import Evaluation
from histogen.evaluation.side import Side


def measure(ev: Evaluation, c: Comparison) -> None:
    if not c.encoder.learned:
        return  # skipped with the reason the encoder did not load
    k, real, gen, floor = c.cfg.k, c.real, c.generated.side, c.floor
    if min(real.n, gen.n) <= k:
        ev.skipped["precision_recall"] = f"needs more than k={k} patches on each side"
        return

    def score(s: Side) -> dict:
        return dict(zip(("precision", "recall"), metrics.precision_recall(real.features, s.features, k)), k=k)

    ev.record("precision_recall", score(gen), score(floor) if floor is not None and floor.n > k else None)
