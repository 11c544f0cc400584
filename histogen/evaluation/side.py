"""What evaluation keeps of one set of patches (real or generated), summarised in one pass."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import numpy as np

from histogen import metrics
from histogen.encoders import Encoder
from histogen.evaluation.settings import EvalError


@dataclass
class Side:
    features: np.ndarray  # (n, D), D = the encoder's width
    stats: metrics.GaussianStats  # of the features, accumulated batch by batch
    hist: np.ndarray  # (2, OD_BINS) haematoxylin, eosin
    grid: np.ndarray  # uint8 (g, R, R, 3), spread over the set
    sample: np.ndarray  # uint8 (s, R, R, 3), a seeded random subset for the pixel-level tests (C2ST, nuclei, diversity)
    sample_idx: np.ndarray  # (s,) where the subset's patches are in the set (for evaluation per label)

    @property
    def n(self) -> int:
        return len(self.features)


def summarise(batches: Iterable[np.ndarray], encoder: Encoder, n: int, grid: int, keep: int, seed: int) -> Side:
    """Features, stain histograms, a spread-out grid and a random subset of `keep` of a stream of
    uint8 batches (n in all)."""
    show = set(np.linspace(0, max(n - 1, 0), min(grid, n)).astype(int).tolist())
    sample_idx = np.sort(np.random.default_rng(seed).choice(n, min(keep, n), replace=False))
    sample = set(sample_idx.tolist())
    feats, hist, shown, kept, seen = [], np.zeros((2, metrics.OD_BINS), np.int64), [], [], 0
    stats = metrics.GaussianStats(encoder.width)
    for b in batches:
        feats.append(encoder(b))
        stats.update(feats[-1])
        hist += metrics.stain_histograms(b)
        shown += [im for i, im in enumerate(b, seen) if i in show]
        kept += [im for i, im in enumerate(b, seen) if i in sample]
        seen += len(b)
    if not feats:
        raise EvalError("no patches to evaluate")
    return Side(np.concatenate(feats), stats, hist, np.stack(shown), np.stack(kept), sample_idx)
