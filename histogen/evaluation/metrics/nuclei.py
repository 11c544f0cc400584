"""Nuclear morphology of the pixel-level subsets, segmented with one threshold (set on the real draw)."""
from __future__ import annotations

from histogen import metrics, nuclei
from histogen.evaluation.comparison import Comparison
from histogen.evaluation.record import Evaluation


def measure(ev: Evaluation, c: Comparison) -> None:
    params = c.cfg.nuclei
    threshold = params.threshold
    if threshold is None:
        if c.real.hist[0].sum() == 0:
            ev.skipped["nuclei"] = "the real patches have no tissue pixels to set the nucleus threshold on"
            return
        threshold = nuclei.otsu_threshold(c.real.hist[0], metrics.bin_centres())
    sides = {"real": c.real, "generated": c.generated.side, **({"real_b": c.floor} if c.floor is not None else {})}
    ev.nuclei = {k: nuclei.measure(s.sample, threshold, params) for k, s in sides.items()}
    ev.info["nucleus_threshold_od"] = threshold
    cmp = lambda k: {**nuclei.compare(ev.nuclei["real"], ev.nuclei[k]), "patches": len(sides[k].sample)}  # noqa: E731
    ev.record("nuclei", cmp("generated"), cmp("real_b") if c.floor is not None else None)
