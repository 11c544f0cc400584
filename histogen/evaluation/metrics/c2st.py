"""The classifier two-sample test of real against generated, and of real against real (the floor);
the generated patches it found most fake and the real ones it found most real."""
from __future__ import annotations

from engine.progress import Progress
from histogen.evaluation.comparison import Comparison
from histogen.evaluation.record import Evaluation
from histogen.two_sample import two_sample_test


def measure(ev: Evaluation, c: Comparison) -> None:
    cfg, real, gen, floor = c.cfg.two_sample, c.real, c.generated.side, c.floor
    if min(len(real.sample), len(gen.sample)) < cfg.folds:
        ev.skipped["c2st"] = f"a {cfg.folds}-fold test needs at least {cfg.folds} patches per side"
        return
    sides = [gen] + ([floor] if floor is not None and len(floor.sample) >= cfg.folds else [])
    results = []
    with Progress(total=len(sides) * cfg.folds, desc="two-sample test", unit="fold") as bar:
        for side in sides:
            results.append(two_sample_test(real.sample, side.sample, cfg, progress=lambda _: bar.update(1)))
    ev.record("c2st", results[0].to_dict(), results[1].to_dict() if len(results) > 1 else None)
    lo, hi = results[0].ci95
    if hi - lo > 0.2:  # a coin's worth of evidence is not a verdict
        ev.notes.append(f"the two-sample test saw {results[0].n_per_class} patches a side: its 95 % interval "
                        f"({lo:.2f} to {hi:.2f}) is too wide to call the samples real or fake; evaluate more patches "
                        "(--n, more held-out slides)")
    fake, most_real = results[0].extremes(c.cfg.extremes)
    ev.pictures["c2st"] = (gen.sample[fake], real.sample[most_real])
