"""The model-free measures (and Fréchet distance in the encoder's space) class by class, for a run
conditioned on labels: the real draw A's patches of a class against the samples of that class, and
against draw B's of it (the floor). Each uses the pixel subsets of the sides (and all features for
Fréchet)."""
from __future__ import annotations

import numpy as np

from histogen import metrics, nuclei
from histogen.evaluation.comparison import Comparison
from histogen.evaluation.record import Evaluation
from histogen.two_sample import two_sample_test


def measure(ev: Evaluation, c: Comparison) -> None:
    if c.vocab is None:
        return  # not conditioned on labels
    if c.generated.classes is None:
        ev.skipped["per_label"] = "the samples carry no labels (sample_labels.json)"
        return
    cfg, threshold = c.cfg, ev.info.get("nucleus_threshold_od")  # the nuclei metric's, set on the real draw
    sides = {"real": (c.real, c.classes["real"]), "generated": (c.generated.side, c.generated.classes),
             **({"real_b": (c.floor, c.classes["real_b"])} if c.floor is not None else {})}
    for class_id, name in enumerate(c.vocab.classes):
        part = {side: (s.sample[classes[s.sample_idx] == class_id], s.features[classes == class_id])
                for side, (s, classes) in sides.items()}
        real_px, real_feat = part.pop("real")
        real_nuclei = nuclei.measure(real_px, threshold, cfg.nuclei) if threshold is not None and len(real_px) else None
        real_hist = metrics.stain_histograms(real_px) if len(real_px) else None

        def measures(px: np.ndarray, feat: np.ndarray) -> dict:
            m = {"patches": len(px)}
            if min(len(px), len(real_px)) >= cfg.two_sample.folds:
                m["c2st"] = two_sample_test(real_px, px, cfg.two_sample).accuracy
            h = metrics.stain_histograms(px) if real_hist is not None and len(px) else None
            if h is not None and min(real_hist[0].sum(), h[0].sum()) > 0:
                m.update({f"{stain}_w1": metrics.wasserstein_hist(real_hist[i], h[i])
                          for i, stain in enumerate(("haematoxylin", "eosin"))})
            if real_nuclei is not None and len(px):
                compared = nuclei.compare(real_nuclei, nuclei.measure(px, threshold, cfg.nuclei))
                m.update({k: v for k, v in compared.items() if k.endswith("_w1")})
            if c.encoder.learned and min(len(feat), len(real_feat)) >= 2:
                stats = [metrics.GaussianStats(feat.shape[1]).update(f) for f in (real_feat, feat)]
                m["frechet_distance"] = metrics.frechet_of(*stats)
            return m

        ev.per_label[name] = {"metrics": measures(*part["generated"]),
                              "floor": measures(*part["real_b"]) if "real_b" in part else None}
