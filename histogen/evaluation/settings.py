"""What `histogen eval` can be told, and the error it raises for inputs it cannot evaluate."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from engine.encoder_registry import DEFAULT, named
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
    encoder: str = DEFAULT  # a registry name (NAME or NAME=WEIGHTS), a SavedModel dir / hub id, or a TorchScript file
    more_encoders: tuple[str, ...] = ()  # Fréchet distance and precision/recall in these spaces too
    revision: str | None = None
    allow_pickle: bool = False  # NAME=WEIGHTS may be a pickled checkpoint (tensors only)
    pipeline: str = "auto"
    pairs: int = 8  # closest generated/training pairs shown
    grid: int = 64  # patches per picture grid
    cache: Path | None = None  # default: $HISTOGEN_CACHE or ~/.cache/histogen
    two_sample: TwoSampleConfig = TwoSampleConfig()  # its max_per_class is also how many patches nuclei are measured on
    nuclei: NucleiParams = NucleiParams()
    extremes: int = 16  # patches shown per side of the classifier's most confident calls
    train_floor: bool = False  # the model-free measures of the run's training patches against the held-out draw too


def encoder_flags(ref: str) -> dict[str, str]:
    """engine's settings as eval spells them: a model and its local weights are given with --encoder."""
    return {"model": "--encoder", "weights": f"--encoder {named(ref)[0] if named(ref) else 'NAME'}=PATH",
            "allow_pickle": "--allow-pickle"}
