"""The run's own training patches in the generated patches' place (`histogen eval --train-floor`), by
the model-free measures: how far the tissue the run learned from is from the held-out draw. The
real-vs-real floor draws both its sides from the held-out slides; tissue of other slides, the training
slides among them, is further apart, and no model of the training data can be expected to come closer
than the data itself does."""
from __future__ import annotations

from dataclasses import replace

from histogen.evaluation.cache import cached_side
from histogen.evaluation.comparison import Comparison
from histogen.evaluation.generated import Generated
from histogen.evaluation.metrics import c2st, diversity, nuclei, stain
from histogen.evaluation.patches import Patches
from histogen.evaluation.record import Evaluation

MEASURES = (c2st, nuclei, stain, diversity)  # the model-free ones (histogen.report.MODEL_FREE)


def measure(ev: Evaluation, c: Comparison) -> None:
    if not c.cfg.train_floor:
        return
    if not c.train:
        ev.notes.append("--train-floor: no training patches here (pass --run RUN, whose training stores are on this "
                        "machine where its split.json says)")
        return
    # The draw memorisation compares with (the same seed): read once, from the cache.
    side = cached_side(Patches.draw(c.train, c.cfg.n, c.cfg.seed + 1), c.resolution, c.encoder, c.cfg)
    data = Evaluation(dict(ev.info))
    as_generated = replace(c, generated=Generated(side, side.sample, None, None), floor=None, train=[])
    for m in MEASURES:
        m.measure(data, as_generated)
    ev.train_floor = data.metrics
    ev.info["n_train_floor"] = side.n
