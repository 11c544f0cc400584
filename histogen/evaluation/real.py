"""The real side of an evaluation: the --real slides the run did not train on (of the run's
classes, for a run conditioned on labels), and two disjoint seeded draws of their patches: A, the
real side of every comparison, and B, of A's size, which measures the floor."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from engine.encoder_registry import DEFAULT
from engine.store import SlideRef
from histogen.batches import list_slides
from histogen.evaluation.patches import Patches
from histogen.evaluation.record import Evaluation
from histogen.evaluation.settings import EvalConfig, EvalError
from histogen.labels import Vocabulary, slide_labels
from histogen.run_folder import RunFolder


@dataclass
class RealDraws:
    a: Patches
    b: Patches
    classes: dict  # "real" / "real_b" -> each drawn patch's class id (runs conditioned on labels; else empty)


def real_draws(stores: list[Path], folder: RunFolder | None, cfg: EvalConfig, ev: Evaluation) -> RealDraws:
    """The draws A and B from the held-out slides of `stores`, each of their patches passing the
    run's check; what limits them is noted on `ev`."""
    refs = list_slides(stores, qc=folder.cfg.data.qc if folder else None, strict=False)
    vocab = folder.vocabulary if folder else None
    class_of = None
    if vocab is not None:  # a run conditioned on labels: real slides of its classes, samples of their classes
        refs, class_of = known_classes(refs, vocab, ev)
    # By id: the same slide in another store is not held out.
    trained = folder.slide_ids["train"] if folder else set()
    held = [r for r in refs if r.slide not in trained]
    ev.info["real_is_training"] = not held
    if not held:
        held = refs
        ev.notes.append("every --real slide was used in training: the real set is not held out, and memorisation has "
                        "no baseline")
    a, b = Patches.draw(held, 2 * cfg.n, cfg.seed, folder.cfg.data.embedding if folder else DEFAULT).split(cfg.seed)
    if len(a.rows) < cfg.n:
        ev.notes.append(f"the held-out real slides have {len(a.rows) + len(b.rows)} patches: "
                        f"{len(a.rows)} per real draw (two disjoint draws, for the floor), fewer than --n {cfg.n}")
    if class_of is None:
        return RealDraws(a, b, {})
    slide_classes = np.array([class_of[r] for r in held], np.int64)
    return RealDraws(a, b, {"real": a.classes(slide_classes), "real_b": b.classes(slide_classes)})


def known_classes(refs: list[SlideRef], vocab: Vocabulary, ev: Evaluation) -> tuple[list[SlideRef], dict]:
    """The --real slides whose label the run knows (the rest are left out, with a note), and each
    one's class id."""
    labels = slide_labels(refs, vocab.source)
    kept = {r: vocab.classes.index(lab) for r, lab in zip(refs, labels) if lab in vocab.classes}
    if not kept:
        raise EvalError(f"no --real slide has a label this run knows ({', '.join(vocab.classes)}) "
                        f"from {vocab.source}; give --real stores whose slides carry them")
    if len(kept) < len(refs):
        ev.notes.append(f"{len(refs) - len(kept)} --real slides have no label of the run's classes in {vocab.source} "
                        "and are left out")
    return list(kept), kept
