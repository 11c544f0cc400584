"""How a trained run is sampled unless told otherwise: the one statement of these defaults, which
`histogen sample`, `histogen eval` (histogen.evaluation.settings.EvalConfig) and the training's
sample grids (histogen.config.TrainConfig) all take theirs from."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Sampling:
    steps: int = 50  # DDIM steps (diffusion; the other kinds sample in one pass)
    guidance: float = 1.0  # classifier-free guidance scale; 1 = none
