"""The model kinds: each is one module (its config dataclass, networks and Task) and one entry
here. Everything that lists kinds (the config's `kind`, `histogen train --model`) reads KINDS."""
from __future__ import annotations

from dataclasses import dataclass

from histogen.models.autoencoder import AutoencoderConfig, AutoencoderTask
from histogen.models.diffusion import DiffusionConfig, DiffusionTask
from histogen.models.gan import GANConfig, GANTask
from histogen.models.task import Task


@dataclass(frozen=True)
class Kind:
    config: type  # the dataclass of the config's model section
    task: type[Task]  # built as task(config, resolution, cond_dim, autoencoder, n_labels=...)
    preset: str  # what `histogen train --model KIND` trains without --preset

    @property
    def name(self) -> str:
        return self.task.kind


KINDS: dict[str, Kind] = {k.name: k for k in (
    Kind(AutoencoderConfig, AutoencoderTask, "ae-f8"),
    Kind(GANConfig, GANTask, "gan-128"),
    Kind(DiffusionConfig, DiffusionTask, "diffusion-64"),
)}
