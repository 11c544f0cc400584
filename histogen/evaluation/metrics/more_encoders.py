"""Fréchet distance and precision/recall in the space of every further encoder (`histogen eval
--encoder NAME` given more than once, as PixCell reports them in UNI, CONCH, Phikon and GigaPath
space): the frechet and precision_recall measures themselves, run on those encoders' features of
the same real draws and generated patches, recorded as `frechet_distance[NAME]` and
`precision_recall[NAME]` with their floors. An encoder that cannot be loaded is skipped, with why."""
from __future__ import annotations

import dataclasses

from engine.encoder_registry import named
from engine.errors import UserError
from histogen.encoders import load_encoder
from histogen.evaluation.cache import cached_side
from histogen.evaluation.comparison import Comparison
from histogen.evaluation.metrics import frechet, precision_recall
from histogen.evaluation.record import Evaluation
from histogen.evaluation.settings import encoder_flags
from histogen.evaluation.side import summarise

MEASURES = (frechet, precision_recall)
NAMES = ("frechet_distance", "precision_recall")


def measure(ev: Evaluation, c: Comparison) -> None:
    cfg = c.cfg
    for ref in cfg.more_encoders:
        try:
            encoder = load_encoder(ref, cfg.revision, cfg.pipeline, allow_pickle=cfg.allow_pickle)
        except UserError as e:
            for name in NAMES:
                ev.skipped[f"{name}[{(named(ref) or (ref,))[0]}]"] = f"no encoder: {e.message(encoder_flags(ref))}"
            continue
        images = c.generated.images
        batches = (images[i : i + cfg.batch_size] for i in range(0, len(images), cfg.batch_size))
        generated = summarise(batches, encoder, len(images), cfg.grid, cfg.two_sample.max_per_class, cfg.seed)
        space = dataclasses.replace(
            c, encoder=encoder, real=cached_side(c.real_patches, c.resolution, encoder, cfg),
            floor=cached_side(c.floor_patches, c.resolution, encoder, cfg) if c.floor is not None else None,
            generated=dataclasses.replace(c.generated, side=generated))
        found = Evaluation({})
        for metric in MEASURES:
            metric.measure(found, space)
        suffix = f"[{encoder.name}]"
        for part, into in ((found.metrics, ev.metrics), (found.floor, ev.floor),
                           (found.floor_skipped, ev.floor_skipped), (found.skipped, ev.skipped)):
            into.update({k + suffix: v for k, v in part.items()})
        if encoder.untrained:
            ev.info.setdefault("meaningless", []).extend(k + suffix for k in found.metrics)
