"""A folder of generated samples, and the only code that knows its layout:

    DIR/samples.zarr          uint8 (n, R, R, 3); its attributes say how the samples were made
    DIR/sample-00000.png ...  each sample as a PNG, and DIR/grid.png of them all (histogen sample)
    DIR/conditions.npy        (n, D): the embedding each sample was conditioned on (conditional runs)
    DIR/sample_labels.json    each sample's class name (runs conditioned on labels)
    DIR/beside.png            a given picture (a grid of real patches) | grid.png (histogen sample --beside)

`histogen sample` and `histogen eval --run` write one with SamplesWriter; `histogen eval --samples`
reads one with SamplesFolder.read, which also takes a folder of PNG files made elsewhere (with a
sample_labels.json or conditions.npy beside them when they have labels or conditions).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import zarr
from PIL import Image

from engine.errors import UserError
from histogen.images import beside, grid


class SamplesError(UserError):
    """A samples folder that cannot be read; the message says what to do."""


@dataclass
class Samples:
    images: np.ndarray | zarr.Array  # uint8 (n, R, R, 3)
    cond: np.ndarray | None  # (n, D): what each sample was conditioned on
    labels: list[str] | None  # each sample's class name


class SamplesFolder:
    """DIR of samples: its one reader, and its one writer (`writer`)."""

    def __init__(self, path: Path | str):
        self.path = Path(path)

    @property
    def array(self) -> Path:
        return self.path / "samples.zarr"

    @property
    def grid(self) -> Path:
        return self.path / "grid.png"

    def write_beside(self, picture: Path) -> Path:
        """`picture` | the samples' grid, in one PNG (the real grid of a model card beside samples)."""
        try:
            left = Image.open(picture)
        except OSError as e:
            raise SamplesError(f"{picture}: not a picture ({e}); give a PNG or JPEG to --beside") from e
        out = self.path / "beside.png"
        beside(left, Image.open(self.grid)).save(out)
        return out

    def read(self, n: int) -> Samples:
        """The first n samples: from samples.zarr, else from the folder's PNG files (in name order)."""
        if self.array.exists():
            images = np.asarray(zarr.open_array(str(self.array), mode="r")[:n])
        else:
            files = sorted(p for p in self.path.glob("*.png") if p != self.grid)[:n]
            if not files:
                raise SamplesError(f"{self.path}: no samples.zarr and no PNG files; "
                                   "point --samples at the --out of histogen sample")
            try:
                images = np.stack([np.asarray(Image.open(f).convert("RGB")) for f in files])
            except ValueError as e:
                raise SamplesError(f"{self.path}: the PNG files differ in size ({e}); "
                                   "evaluate images of one size") from e
        if images.ndim != 4 or images.shape[-1] != 3 or images.shape[1] != images.shape[2] or images.dtype != np.uint8:
            raise SamplesError(f"{self.path}: samples must be square uint8 RGB images, "
                               f"got {images.dtype} {images.shape}")
        cond_file, labels_file = self.path / "conditions.npy", self.path / "sample_labels.json"
        cond = np.load(cond_file)[: len(images)] if cond_file.is_file() else None
        labels = json.loads(labels_file.read_text())[: len(images)] if labels_file.is_file() else None
        if labels is not None and len(labels) != len(images):
            raise SamplesError(f"{labels_file}: {len(labels)} labels for {len(images)} samples; "
                               "give each sample its label")
        return Samples(images, cond, labels)

    def writer(self, n: int, resolution: int, pictures: bool = False) -> "SamplesWriter":
        return SamplesWriter(self, n, resolution, pictures)


class SamplesWriter:
    """Writes n samples batch by batch, so that no more than a batch is held; `pictures`: each one
    as a PNG too, and the grid."""

    def __init__(self, folder: SamplesFolder, n: int, resolution: int, pictures: bool):
        folder.path.mkdir(parents=True, exist_ok=True)
        self.folder, self.pictures, self.done = folder, pictures, 0
        self.images = zarr.create_array(str(folder.array), shape=(n, resolution, resolution, 3),
                                        chunks=(1, resolution, resolution, 3), dtype="uint8", overwrite=True)
        self.cond: list[np.ndarray] = []
        self.labels: list[str] = []

    def add(self, images: np.ndarray, cond: np.ndarray | None = None, labels: list[str] | None = None) -> None:
        end = self.done + len(images)
        self.images[self.done : end] = images
        if self.pictures:
            for i, im in enumerate(images, self.done):
                Image.fromarray(im).save(self.folder.path / f"sample-{i:05d}.png")
        if cond is not None:
            self.cond.append(cond)
        self.labels += labels or []
        self.done = end

    def close(self, attrs: dict) -> Samples:
        """Writes what the batches brought besides pixels, and `attrs` (how they were made) on the array."""
        self.images.attrs.update(attrs)
        cond = np.concatenate(self.cond) if self.cond else None
        if cond is not None:
            np.save(self.folder.path / "conditions.npy", cond)
        labels = self.labels or None
        if labels is not None:
            (self.folder.path / "sample_labels.json").write_text(json.dumps(labels))
        if self.pictures:
            grid(self.images[:]).save(self.folder.grid)
        return Samples(self.images, cond, labels)
