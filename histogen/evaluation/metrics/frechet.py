"""Fréchet distance of Gaussians fitted to the encoder's features (a learned encoder only)."""
from __future__ import annotations

from histogen import metrics
from histogen.evaluation.comparison import Comparison
from histogen.evaluation.record import Evaluation


def measure(ev: Evaluation, c: Comparison) -> None:
    if not c.encoder.learned:
        return  # skipped with the reason the encoder did not load
    real, gen, floor = c.real, c.generated.side, c.floor
    if min(real.n, gen.n) < 2:  # a covariance needs two samples
        ev.skipped["frechet_distance"] = f"needs at least 2 patches on each side (real {real.n}, generated {gen.n})"
        return
    ev.record("frechet_distance", metrics.frechet_of(real.stats, gen.stats),
              metrics.frechet_of(real.stats, floor.stats) if floor is not None and floor.n >= 2 else None)
