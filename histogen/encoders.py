"""Feature extractors for evaluation: uint8 patches -> float32 (n, width) features.

Every encoder sees its input through the same engine.pipeline resize (antialiased bilinear to its
input size, then its normalisation), so real and generated patches are preprocessed identically.
The encoders of engine.encoder_registry load by name (`NAME`, or `NAME=WEIGHTS` for local
weights), exactly as engine.embed loads them; Path Foundation is the default. A SavedModel with
its interface, or any torch module (`TorchEncoder`, or a TorchScript file on the command line),
can be plugged in too. Without a learned model,
`PixelEncoder` gives downsampled pixels: enough for nearest-neighbour memorisation checks, not for
Fréchet distance or precision/recall.

A model that carries the untrained marker (UNTRAINED_MARKER: a JSON file in a SavedModel's
assets.extra/ folder, or an extra file of a TorchScript archive, as histosynth.standin_model
writes) loads as usual with `untrained` set to what the marker says, so evaluation can say that
numbers in its space mean nothing.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from engine import torch_encoder
from engine.embed import EmbedError, load_model
from engine.encoder_registry import named, spec
from engine.pipeline import Transform, make_resizer

UNTRAINED_MARKER = "untrained.json"  # {"what": "a stand-in with random weights (...)"}; any content marks it


class Encoder:
    """`forward` takes the resized batch (torch float32 in [0, 1], `transform.layout`)."""

    learned = True  # features from a model (not pixels): Fréchet distance and precision/recall are computed
    untrained: str | None = None  # what the model's untrained marker says: its learned-space numbers mean nothing

    def __init__(self, id: str, revision: str, transform: Transform, forward: Callable, width: int,
                 pipeline: str = "auto", batch_size: int = 64):
        self.id, self.revision, self.transform, self.forward, self.width = id, revision, transform, forward, width
        self.name = id  # what reports call it: the registry's name where it has one
        self.batch_size = batch_size
        self.resize = make_resizer(transform, pipeline, max_batch=batch_size)

    @property
    def key(self) -> str:
        """What identifies the features this encoder makes (for caches and reports)."""
        return f"{self.id}@{self.revision}"

    def __call__(self, images: np.ndarray) -> np.ndarray:
        """uint8 (n, H, W, 3) -> float32 (n, width)."""
        out = [np.asarray(self.forward(self.resize(images[i : i + self.batch_size])), np.float32)
               for i in range(0, len(images), self.batch_size)]
        return np.concatenate(out) if out else np.zeros((0, self.width), np.float32)


def path_foundation(model: str, revision: str | None = None, pipeline: str = "auto", batch_size: int = 64) -> Encoder:
    """Path Foundation or a SavedModel with its interface (engine.embed.load_model; raises EmbedError)."""
    m = load_model(model, revision)
    enc = Encoder(m.id, m.revision, m.spec.transform, m, m.width, pipeline, batch_size)
    marker = Path(m.id) / "assets.extra" / UNTRAINED_MARKER  # a local folder's id is its path
    if marker.is_file():
        enc.untrained = _marker_says(marker.read_bytes())
    return enc


def _marker_says(content: bytes) -> str:
    try:
        return str(json.loads(content).get("what") or "marked untrained")
    except (ValueError, AttributeError):
        return "marked untrained"


class TorchEncoder(Encoder):
    """Any torch module taking float32 NCHW in [0, 1] at `input_size` and returning (n, width)."""

    def __init__(self, module: torch.nn.Module, id: str, revision: str = "", input_size: int = 224,
                 pipeline: str = "auto", batch_size: int = 64):
        module = module.eval()
        device = next(iter(module.parameters()), torch.zeros(0)).device
        with torch.no_grad():
            width = int(module(torch.zeros(1, 3, input_size, input_size, device=device)).shape[-1])

        @torch.no_grad()
        def forward(x):
            return module(x.to(device)).float().reshape(len(x), -1).cpu().numpy()

        super().__init__(id, revision, Transform(input_size, layout="NCHW"), forward, width, pipeline, batch_size)


def torchscript(path: Path, input_size: int = 224, pipeline: str = "auto", batch_size: int = 64) -> TorchEncoder:
    """A TorchScript file (torch.jit.save of any module): loads without pickled Python code."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    digest = "sha256:" + hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]
    extra = {UNTRAINED_MARKER: ""}
    enc = TorchEncoder(torch.jit.load(str(path), map_location=device, _extra_files=extra), str(Path(path).resolve()),
                       digest,
                       input_size, pipeline, batch_size)
    if extra[UNTRAINED_MARKER]:
        enc.untrained = _marker_says(extra[UNTRAINED_MARKER])
    return enc


class PixelEncoder(Encoder):
    """Pixels downsampled to `size` x `size`, in [0, 1]: a model-free stand-in for memorisation."""

    learned = False

    def __init__(self, size: int = 32, pipeline: str = "auto", batch_size: int = 256):
        super().__init__("pixels", f"{size}px", Transform(size), lambda x: x.reshape(len(x), -1).cpu().numpy(),
                         size * size * 3, pipeline, batch_size)


def registry_encoder(name: str, weights: str | None = None, revision: str | None = None, pipeline: str = "auto",
                     batch_size: int = 64, allow_pickle: bool = False) -> Encoder:
    """engine.encoder_registry's `name`, from local `weights` or the hub (raises EncoderError)."""
    e = spec(name)
    if e.framework == "tensorflow":
        enc = path_foundation(weights or e.repo, revision, pipeline, batch_size)
    else:
        m = torch_encoder.load(e, weights, revision, allow_pickle=allow_pickle)
        enc = Encoder(m.id, m.revision, e.transform, m, m.width, pipeline, batch_size)
        if m.marker is not None:
            enc.untrained = _marker_says(m.marker.encode())
        elif not e.trained:
            enc.untrained = f"{name}: random weights"
    enc.name = name
    return enc


def load_encoder(ref: str, revision: str | None = None, pipeline: str = "auto", batch_size: int = 64,
                 allow_pickle: bool = False) -> Encoder:
    """A registry name (`NAME` or `NAME=WEIGHTS`), a TorchScript file (.pt/.ts), or a SavedModel
    directory / Hugging Face repo id with Path Foundation's interface."""
    if named(ref):
        return registry_encoder(*named(ref), revision, pipeline, batch_size, allow_pickle)
    path = Path(ref).expanduser()
    if path.is_file() and path.suffix in (".pt", ".ts", ".pth"):
        try:
            return torchscript(path, pipeline=pipeline, batch_size=batch_size)
        except RuntimeError as e:
            raise EmbedError(f"{path}: not a TorchScript module ({str(e).splitlines()[0]})",
                             "save one with torch.jit.save(torch.jit.script(module), path)") from e
    return path_foundation(ref, revision, pipeline, batch_size)
