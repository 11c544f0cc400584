"""Cosine similarity of each sample's embedding with the one it was conditioned on, against random
pairs; only meaningful when the encoder is the model that made the conditions. Its floor: the real
draw B's patches with their own stored embeddings (a perfect generator)."""
from __future__ import annotations

import numpy as np

from engine.encoder_registry import ENCODERS
from histogen import metrics
from histogen.evaluation.comparison import Comparison
from histogen.evaluation.record import Evaluation


def measure(ev: Evaluation, c: Comparison) -> None:
    if not c.conditional or not c.encoder.learned:
        return  # unconditional; or skipped, with the reason the encoder did not load
    cond = c.generated.cond
    if cond is None:
        ev.skipped["conditioning"] = "no conditions.npy next to the samples"
        return
    made_by = c.floor_patches.embedded_by()
    made = f"{made_by.get('model')}@{made_by.get('revision')}"
    if made != c.encoder.key or cond.shape[1] != c.generated.side.features.shape[1]:
        name, model = made_by.get("encoder"), made_by.get("model")
        same = f"{name}" if name in ENCODERS and model == ENCODERS[name].repo else f"{name}={model}" if name else model
        ev.skipped["conditioning"] = (f"the conditions are embeddings by {made}, the encoder is {c.encoder.key}; "
                                      f"evaluate with --encoder {same}")
        return

    def scores(features: np.ndarray, cond: np.ndarray) -> dict:
        matched = metrics.cosine_pairs(features, cond)
        shift = int(np.random.default_rng(c.cfg.seed).integers(1, len(cond))) if len(cond) > 1 else 0
        random = metrics.cosine_pairs(features, np.roll(cond, shift, axis=0))
        return {"cosine_matched": float(matched.mean()), "cosine_random": float(random.mean()),
                "gap": float(matched.mean() - random.mean())}

    floor = scores(c.floor.features, c.floor_patches.embeddings()) if c.floor is not None else None
    ev.record("conditioning", scores(c.generated.side.features, cond), floor)
