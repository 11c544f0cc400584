"""histogen eval: how real a run's samples are, against real held-out patches.

    histogen eval --run runs/NAME --real patches.zarr --n 10000 --out report/
    histogen eval --samples DIR --real patches.zarr --out report/     (images made elsewhere)

Real patches come from the --real stores' slides that the run did not train on, drawn at random
(seeded) and resized to the run's resolution exactly as training resized them (without --run, the
samples' own size is the resolution); generated patches are the run's EMA samples (autoencoders:
reconstructions of those real patches; conditional models: conditioned on those patches' stored
embeddings). Both sides then go through the same encoder preprocessing. Features of the real side
are cached per store, slides, encoder, resolution and draw. Metrics that need a learned encoder
are skipped, with the reason, when none can be loaded; the rest still run.

Every metric has a noise floor: the same number computed between two disjoint draws of real
patches (A, the real side of every comparison, and B, of A's size), in metrics.json's "floor"
beside "metrics", key for key. Model-free measures lead: the classifier two-sample test
(histogen.two_sample), nuclear morphology (histogen.nuclei), stain distributions and diversity;
Fréchet distance and precision/recall are flagged as meaningless when the encoder is untrained
(the stand-in of the demo).

This module is the command's flow; its parts are in histogen.evaluation.
"""
from __future__ import annotations

import json
import logging
from dataclasses import asdict
from pathlib import Path

from engine.embed import EmbedError
from histogen.encoders import Encoder, PixelEncoder, load_encoder
from histogen.evaluation.cache import cached_side
from histogen.evaluation.comparison import Comparison
from histogen.evaluation.generated import given, sampled
from histogen.evaluation.metrics import METRICS
from histogen.evaluation.real import real_draws
from histogen.evaluation.record import Evaluation
from histogen.evaluation.settings import EvalConfig, EvalError, encoder_flags
from histogen.report import write_report
from histogen.run import RunSampler
from histogen.run_folder import RunFolder
from histogen.samples_folder import SamplesFolder

log = logging.getLogger("histogen.evaluate")
LEARNED_SPACE = ("frechet_distance", "precision_recall")  # meaningless in an untrained encoder's space


def evaluate(real: list[Path], out: Path, run: Path | None = None, samples: Path | None = None,
             cfg: EvalConfig = EvalConfig(), encoder: Encoder | None = None) -> Evaluation:
    """Evaluate a run's samples (or images in `samples`) against the real stores; writes
    out/samples.zarr (when sampling), out/metrics.json and out/report.html."""
    if run is None and samples is None:
        raise EvalError("nothing to evaluate: pass --run RUN, --samples DIR, or both")
    if cfg.n < 2:
        raise EvalError("--n must be at least 2")
    folder = RunFolder(run) if run is not None else None
    sampler = RunSampler(folder) if folder is not None else None
    made_elsewhere = SamplesFolder(samples).read(cfg.n) if samples is not None else None
    resolution = int(made_elsewhere.images.shape[1]) if made_elsewhere is not None else folder.cfg.resolution
    conditional = sampler.conditional if sampler else made_elsewhere.cond is not None
    ev = Evaluation({"run": str(run) if run else None, "step": sampler.step if sampler else None,
                     "kind": sampler.task.kind if sampler else None, "samples": str(samples) if samples else None,
                     "real": [str(s) for s in real], "resolution": resolution,
                     "config": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(cfg).items()}})

    draws = real_draws(real, folder, cfg, ev)
    features = feature_encoder(encoder, cfg, conditional, ev)
    r = cached_side(draws.a, resolution, features, cfg)
    b = cached_side(draws.b, resolution, features, cfg) if len(draws.b.rows) >= 2 else None
    vocab = folder.vocabulary if folder else None
    g = (given(made_elsewhere, vocab, features, cfg) if made_elsewhere is not None
         else sampled(sampler, draws.a, resolution, features, cfg, out, draws.classes.get("real")))
    ev.info.update(n_real=r.n, n_generated=g.side.n, n_real_floor=b.n if b else 0)
    ev.pictures.update(real=r.grid, generated=g.side.grid)
    ev.hists.update(real=r.hist, generated=g.side.hist, **({"real_b": b.hist} if b else {}))

    train = folder.split["train"] if folder and folder.stores_here else []
    c = Comparison(r, draws.a, g, b, draws.b, features, cfg, resolution, conditional, train, vocab, draws.classes)
    for metric in METRICS:
        metric.measure(ev, c)
    if features.learned and features.untrained:
        ev.info["meaningless"] = [m for m in LEARNED_SPACE if m in ev.metrics]

    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(ev.to_json(), indent=1, allow_nan=False, default=float))
    write_report(ev, out / "report.html")
    return ev


def feature_encoder(encoder: Encoder | None, cfg: EvalConfig, conditional: bool, ev: Evaluation) -> Encoder:
    """The encoder given, else cfg.encoder if it loads; without a learned one, pixels (and the
    metrics that need a learned one are skipped, with the reason)."""
    if encoder is None:
        try:
            encoder = load_encoder(cfg.encoder, cfg.revision, cfg.pipeline, allow_pickle=cfg.allow_pickle)
        except EmbedError as e:
            reason = f"no encoder: {e.message(encoder_flags(cfg.encoder))}"
            for m in LEARNED_SPACE + (("conditioning",) if conditional else ()):
                ev.skipped[m] = reason
            log.warning("%s; the metrics that need it are skipped", reason)
    features = encoder if encoder is not None and encoder.learned else PixelEncoder(pipeline=cfg.pipeline)
    ev.info["encoder"] = features.key
    ev.info["encoder_untrained"] = features.untrained
    if features.learned and features.untrained:
        ev.notes.insert(0, f"the encoder {features.key} is {features.untrained}: Fréchet distance and precision/recall "
                           "in its space mean nothing here, whatever their values; judge by the classifier two-sample "
                           "test, nuclei and stain")
    return features
