"""What `histogen eval` can be told, and the error it raises for inputs it cannot evaluate."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from engine.embed import DEFAULT_MODEL
from engine.errors import UserError
from histogen.nuclei import NucleiParams
from histogen.sampling import Sampling
from histogen.two_sample import TwoSampleConfig


class EvalError(UserError):
    """Inputs that cannot be evaluated; the message says what to do."""


@dataclass(frozen=True)
class EvalConfig:
    n: int = 10000  # generated samples, and at most this many real and training patches
    k: int = 3  # neighbourhood size of precision/recall (the paper's default)
    batch_size: int = 32
    seed: int = 0
    steps: int = Sampling().steps
    guidance: float = Sampling().guidance
    encoder: str = DEFAULT_MODEL  # SavedModel dir / hub id, or a TorchScript file
    revision: str | None = None
    pipeline: str = "auto"
    pairs: int = 8  # closest generated/training pairs shown
    grid: int = 64  # patches per picture grid
    cache: Path | None = None  # default: $HISTOGEN_CACHE or ~/.cache/histogen
    two_sample: TwoSampleConfig = TwoSampleConfig()  # its max_per_class is also how many patches nuclei are measured on
    nuclei: NucleiParams = NucleiParams()
    extremes: int = 16  # patches shown per side of the classifier's most confident calls
