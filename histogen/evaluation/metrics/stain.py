"""Haematoxylin and eosin optical densities on tissue pixels: their 1-d Wasserstein distances."""
from __future__ import annotations

from histogen import metrics
from histogen.evaluation.comparison import Comparison
from histogen.evaluation.record import Evaluation
from histogen.evaluation.side import Side


def measure(ev: Evaluation, c: Comparison) -> None:
    real, gen = c.real, c.generated.side
    tissue = lambda s: {"tissue_pixels_real": int(real.hist[0].sum()), "tissue_pixels_generated": int(s.hist[0].sum())}  # noqa: E731
    if min(tissue(gen).values()) == 0:
        ev.skipped["stain"] = f"no tissue pixels to compare ({tissue(gen)})"
        return

    def score(s: Side) -> dict:
        w1 = {f"{name}_w1": metrics.wasserstein_hist(real.hist[i], s.hist[i])
              for i, name in enumerate(("haematoxylin", "eosin"))}
        return {**w1, **tissue(s)}

    ev.record("stain", score(gen), score(c.floor) if c.floor is not None else None)
