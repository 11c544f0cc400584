"""The feature cache of stored patches: a draw's Side is kept per store, slides, encoder,
resolution and draw, so that evaluating another run against the same real patches encodes them once."""
from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

import numpy as np

from histogen import metrics
from histogen.encoders import Encoder
from histogen.evaluation.patches import Patches
from histogen.evaluation.settings import EvalConfig
from histogen.evaluation.side import Side, summarise

log = logging.getLogger("histogen.evaluation.cache")
CACHE_VERSION = 3


def cache_dir(cfg: EvalConfig) -> Path:
    return Path(cfg.cache or os.environ.get("HISTOGEN_CACHE") or Path.home() / ".cache" / "histogen") / "eval"


def cached_side(patches: Patches, resolution: int, encoder: Encoder, cfg: EvalConfig) -> Side:
    """The Side of stored patches, from the cache when the same draw of the same slides was
    already encoded by the same encoder at the same resolution."""
    rows = hashlib.sha256(patches.rows.tobytes()).hexdigest()
    key = json.dumps({"v": CACHE_VERSION, "slides": patches.key(), "rows": rows, "resolution": resolution,
                      "encoder": encoder.key, "grid": cfg.grid, "keep": cfg.two_sample.max_per_class, "seed": cfg.seed},
                     sort_keys=True)
    path = cache_dir(cfg) / f"{hashlib.sha256(key.encode()).hexdigest()[:24]}.npz"
    if path.is_file():
        try:
            with np.load(path) as z:
                if str(z["key"]) == key:
                    log.info("real-patch features from the cache (%s)", path)
                    stats = metrics.GaussianStats.from_arrays({k: z[k] for k in ("n", "mean", "m2")})
                    return Side(z["features"], stats, z["hist"], z["grid"], z["sample"], z["sample_idx"])
        except (OSError, ValueError, KeyError) as e:
            log.warning("%s: unreadable cache entry (%s); recomputing", path, e)
    images = patches.images(resolution, cfg.batch_size, cfg.pipeline)
    side = summarise(images, encoder, len(patches.rows), cfg.grid, cfg.two_sample.max_per_class, cfg.seed)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp.npz")
        np.savez(tmp, key=key, features=side.features, hist=side.hist, grid=side.grid, sample=side.sample,
                 sample_idx=side.sample_idx, **side.stats.to_arrays())
        tmp.replace(path)  # atomic: a killed run never leaves half an entry
    except OSError as e:
        log.warning("cannot cache real-patch features in %s (%s)", path.parent, e)
    return side
