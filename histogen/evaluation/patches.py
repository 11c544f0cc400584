"""A seeded draw of stored patches, and reading it in batches as training reads them: the only
place evaluation reads patch stores."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from engine.encoder_registry import DEFAULT
from engine.pipeline import Transform, make_resizer
from engine.store import SlideRef
from histogen.batches import open_store
from histogen.evaluation.settings import EvalError


@dataclass
class Patches:
    """A seeded draw of patches from slides: rows of (slide index, store row), in read order; their
    stored embeddings are `embedding`'s (the run's data.embedding)."""

    refs: list[SlideRef]
    rows: np.ndarray
    embedding: str = DEFAULT

    @classmethod
    def draw(cls, refs: list[SlideRef], n: int, seed: int, embedding: str = DEFAULT) -> "Patches":
        starts = np.cumsum([0] + [r.n for r in refs])
        flat = np.sort(np.random.default_rng(seed).choice(starts[-1], min(n, int(starts[-1])), replace=False))
        k = np.searchsorted(starts, flat, side="right") - 1  # then each ref's i-th patch in use to its store row
        rows = [(s, refs[s].store_rows(i)) for s, i in zip(k, flat - starts[k])]
        return cls(refs, np.array(rows, np.int64).reshape(-1, 2), embedding)

    def split(self, seed: int) -> tuple["Patches", "Patches"]:
        """Two disjoint halves (the larger first when odd), each in read order, chosen by the seed."""
        perm = np.random.default_rng(seed).permutation(len(self.rows))
        half = (len(perm) + 1) // 2
        a, b = (Patches(self.refs, self.rows[np.sort(p)], self.embedding) for p in (perm[:half], perm[half:]))
        if {tuple(r) for r in a.rows} & {tuple(r) for r in b.rows}:
            raise AssertionError("the floor's real draws overlap")  # cannot happen: the draw has no repeats
        return a, b

    def subset(self, idx: np.ndarray) -> "Patches":
        return Patches(self.refs, self.rows[idx], self.embedding)

    def classes(self, slide_classes: np.ndarray) -> np.ndarray:
        """Each drawn patch's class id, from its slide's (slide_classes[i]: the class of refs[i])."""
        return slide_classes[self.rows[:, 0]]

    def embeddings(self) -> np.ndarray:
        """The stored embeddings of the drawn patches, in read order."""
        slides = self.rows[:, 0]
        return np.concatenate([open_store(self.refs[k].store).embeddings(self.refs[k].slide, self.rows[slides == k, 1],
                                                                         self.embedding) for k in np.unique(slides)])

    def embedded_by(self) -> dict:
        """How the slides' stored embeddings were made ({encoder, model, revision, ...}; the first slide's)."""
        ref = self.refs[0]
        return open_store(ref.store).embeddings_attrs(ref.slide, self.embedding) or {}

    def key(self) -> list:
        """What identifies the slides drawn from: a store re-tiled in place is another key."""
        out = []
        for r in self.refs:
            attrs = open_store(r.store).attrs(r.slide)
            out.append([str(Path(r.store).resolve()), r.slide, r.n, attrs.get("fingerprint")])
        return out

    def _open(self, k: int, with_cond: bool) -> tuple:
        """Slide k's store, and its embeddings when `with_cond`."""
        ref = self.refs[k]
        store = open_store(ref.store)
        if not with_cond:
            return store, None
        if store.embeddings_attrs(ref.slide, self.embedding) is None:
            raise EvalError(f"{ref.store}: slide {ref.slide} has no {self.embedding} embeddings to condition on; "
                            f"run python -m engine.embed --store {ref.store} --encoder {self.embedding}")
        return store, store.embeddings(ref.slide, name=self.embedding)

    def batches(self, resolution: int, batch_size: int, with_cond: bool = False, cycle_to: int | None = None,
                pipeline: str = "auto") -> Iterator[tuple[np.ndarray, np.ndarray | None]]:
        """(uint8 (b, R, R, 3), embeddings (b, D) or None), resized as training resizes (no
        augmentation); `cycle_to` repeats the draw up to that many rows."""
        resize = make_resizer(Transform(resolution), pipeline, max_batch=batch_size)
        rows = self.rows if cycle_to is None else self.rows[np.arange(cycle_to) % len(self.rows)]
        current, store, emb = None, None, None  # one slide open at a time: rows are sorted by slide
        for i in range(0, len(rows), batch_size):
            chunk = rows[i : i + batch_size]
            images, conds = None, None
            for k in np.unique(chunk[:, 0]):
                if k != current:
                    current, store, emb = k, *self._open(k, with_cond)
                sel = chunk[:, 0] == k
                got = store.read_patches(self.refs[k].slide, chunk[sel, 1])
                if images is None:
                    images = np.empty((len(chunk),) + got.shape[1:], np.uint8)
                images[sel] = got
                if with_cond:
                    if conds is None:
                        conds = np.empty((len(chunk), emb.shape[1]), np.float32)
                    conds[sel] = emb[chunk[sel, 1]]
            x = resize(images)
            yield (x * 255).round().clamp(0, 255).to(torch.uint8).numpy(), conds

    def images(self, resolution: int, batch_size: int, pipeline: str = "auto") -> Iterator[np.ndarray]:
        """The drawn patches' pixels only, batch by batch."""
        return (b for b, _ in self.batches(resolution, batch_size, pipeline=pipeline))
