"""What every metric of histogen.evaluation.metrics is given: the two sides and the floor's, and
how they were made."""
from __future__ import annotations

from dataclasses import dataclass

from engine.store import SlideRef
from histogen.encoders import Encoder
from histogen.evaluation.generated import Generated
from histogen.evaluation.patches import Patches
from histogen.evaluation.settings import EvalConfig
from histogen.evaluation.side import Side
from histogen.labels import Vocabulary


@dataclass
class Comparison:
    real: Side  # the real draw A: the real side of every comparison
    real_patches: Patches  # A's patches
    generated: Generated
    floor: Side | None  # the real draw B, of A's size, in the generated patches' place (None: too few patches)
    floor_patches: Patches  # B's patches
    encoder: Encoder  # the features' (learned, or pixels)
    cfg: EvalConfig
    resolution: int
    conditional: bool  # the samples were conditioned on embeddings
    train: list[SlideRef]  # the run's training slides ([] without a run)
    vocab: Vocabulary | None  # the classes of a run conditioned on labels
    classes: dict  # "real" / "real_b" / "generated" -> each patch's class id (runs conditioned on labels; else empty)
