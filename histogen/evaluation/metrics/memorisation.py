"""Each generated patch's distance to its nearest training patch, against the same distance for
held-out real patches (A); the floor puts the real draw B in the generated patches' place. The
closest pairs are kept for the report."""
from __future__ import annotations

import numpy as np

from histogen import metrics
from histogen.evaluation.cache import cached_side
from histogen.evaluation.comparison import Comparison
from histogen.evaluation.patches import Patches
from histogen.evaluation.record import Evaluation


def measure(ev: Evaluation, c: Comparison) -> None:
    cfg, real, g, floor = c.cfg, c.real, c.generated, c.floor
    if not c.train:
        ev.skipped["memorisation"] = ("no training patches here (pass --run RUN, whose training stores are on this "
                                      "machine where its split.json says)")
        return
    train = Patches.draw(c.train, cfg.n, cfg.seed + 1)
    t = cached_side(train, c.resolution, c.encoder, cfg)
    d_real = metrics.nearest(real.features, t.features)[0] if real.n and not ev.info.get("real_is_training") else None

    def scores(d: np.ndarray) -> dict:
        m = {"space": c.encoder.key, "n_train": t.n, "generated_nn_median": float(np.median(d))}
        if d_real is not None:
            m.update(real_nn_median=float(np.median(d_real)), ratio=float(np.median(d) / max(np.median(d_real), 1e-12)),
                     share_below_real_p1=float((d < np.percentile(d_real, 1)).mean()))
        return m

    d_gen, j_gen = metrics.nearest(g.side.features, t.features)
    ev.record("memorisation", scores(d_gen),
              scores(metrics.nearest(floor.features, t.features)[0]) if floor is not None else None)
    closest = np.argsort(d_gen, kind="stable")[: cfg.pairs]
    nearest_train = train.subset(j_gen[closest]).images(c.resolution, cfg.batch_size, cfg.pipeline)
    ev.pictures["pairs"] = (np.stack([g.images[int(i)] for i in closest]), np.concatenate(list(nearest_train)),
                            d_gen[closest])
