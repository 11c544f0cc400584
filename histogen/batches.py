"""Training batches from patch stores, and the slides they come from.

Complete slide groups only, and of them the patches that pass the patch check (histogen.selection);
train/validation split by slide (neighbouring patches of one slide
leak into each other, so never split patches); each step's batch is a pure function of (seed,
step), so a resumed run sees the same batches as an uninterrupted one and the processes of a
distributed run take disjoint slices of the same global batch. Patches are read by DataLoader
workers, then resized and augmented by engine.pipeline (DALI on a GPU, torch on the CPU).
"""
from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from engine.encoder_registry import DEFAULT
from engine.errors import UserError
from engine.pipeline import Transform, make_resizer
from engine.runtime import cuda_available
from engine.store import PatchStore, SlideRef, StoreError
from histogen.config import RunConfig
from histogen.selection import select
from histogen.stain import stain_jitter

log = logging.getLogger("histogen.batches")


class DataError(UserError, ValueError):
    """Stores that cannot feed this run; the message says what to do."""


def open_store(path) -> PatchStore:
    try:
        return PatchStore.open(path)
    except StoreError as e:
        raise DataError(str(e)) from e


def list_slides(stores: list[Path], resolution: int | None = None, conditional: bool = False, qc: dict | None = None,
                strict: bool = True, embedding: str = DEFAULT) -> list[SlideRef]:
    """The complete slides of `stores` with patches that pass the check (tightened by `qc`, a
    run's data.qc; `strict`: a looser threshold is refused, else ignored), each ref holding the
    rows of those patches, for training and evaluation. `resolution`: refuse stores whose patches
    are smaller; `conditional`: refuse slides without `embedding`'s embeddings."""
    refs = []
    for path in stores:
        store = open_store(path)
        if resolution is not None and resolution > store.patch_size:
            raise DataError(f"{path}: resolution {resolution} is larger than its {store.patch_size} px patches; "
                            f"choose --set resolution={store.patch_size} or less (patches are never upsampled)")
        for ref in store.slide_refs(with_patches=True):
            if conditional and store.embeddings_attrs(ref.slide, embedding) is None:
                raise DataError(f"{path}: slide {ref.slide} has no {embedding} embeddings but the preset is "
                                f"conditional; run python -m engine.embed --store {path} --encoder {embedding}, "
                                "or --set data.conditional=false")
            ref = select(store, ref, qc or {}, strict)
            if ref.n:
                refs.append(ref)
    if not refs:
        raise DataError(f"{', '.join(map(str, stores))}: no complete slide with patches that pass the check; "
                        "tile slides first (python -m engine.tile), or loosen data.qc")
    return refs


def embedding_width(refs: list[SlideRef], embedding: str = DEFAULT) -> int:
    """The width of the slides' `embedding` embeddings (list_slides(..., conditional=True) checked they have them)."""
    stores = sorted({r.store for r in refs})
    widths = {open_store(s).embedding_width(embedding) for s in stores}
    if len(widths) > 1:
        raise DataError(f"{', '.join(stores)}: embeddings of different widths ({', '.join(map(str, sorted(widths)))}); "
                        "embed every store with one model (python -m engine.embed)")
    return widths.pop()


def split_slides(refs: list[SlideRef], val_fraction: float, seed: int) -> tuple[list[SlideRef], list[SlideRef]]:
    """A fixed pseudo-random share of the slides for validation (at least one where there are two
    slides or more and val_fraction > 0; none with a single slide). The draw is over slide ids: a
    slide tiled into several stores lands on one side, and re-tiling it into a store of another
    name does not move it."""
    ids = sorted({r.slide for r in refs}, key=lambda s: hashlib.sha256(f"{seed}:{s}".encode()).hexdigest())
    n_val = 0 if val_fraction <= 0 or len(ids) < 2 else min(len(ids) - 1, max(1, round(len(ids) * val_fraction)))
    if val_fraction > 0 and n_val == 0:
        log.warning("only one slide: no validation split (add slides to validate on unseen ones)")
    rank = {s: i for i, s in enumerate(ids)}
    order = sorted(refs, key=lambda r: (rank[r.slide], Path(r.store).name))
    n_refs = sum(rank[r.slide] < n_val for r in refs)
    return order[n_refs:], order[:n_refs]


class SlidePatches(Dataset):
    """Patch i of the concatenated slides' patches in use (each ref's `rows`) -> (uint8 (P, P, 3),
    float32 (D,) embedding or (0,), its slide's class id or -1). `labels`: a class id per ref, or
    None. Stores are opened lazily in each worker process."""

    def __init__(self, refs: list[SlideRef], conditional: bool, labels: list[int] | None = None,
                 embedding: str = DEFAULT):
        self.refs, self.conditional, self.embedding = refs, conditional, embedding
        self.labels = labels if labels is not None else [-1] * len(refs)
        self.starts = np.cumsum([0] + [r.n for r in refs])
        self._images: dict = {}
        self._emb: dict = {}

    def __len__(self) -> int:
        return int(self.starts[-1])

    def _open(self, k: int):
        if k not in self._images:
            r = self.refs[k]
            store = PatchStore.open(r.store)
            self._images[k] = store.images(r.slide)
            self._emb[k] = (store.embeddings(r.slide, name=self.embedding) if self.conditional
                            else np.zeros((store.n_patches(r.slide), 0), np.float32))
        return self._images[k], self._emb[k]

    def __getitem__(self, i: int):
        k = int(np.searchsorted(self.starts, i, side="right") - 1)
        images, emb = self._open(k)
        j = int(self.refs[k].store_rows(i - int(self.starts[k])))
        return images[j], emb[j], self.labels[k]


class StepSampler(Sampler):
    """Batch s is items [s*B, (s+1)*B) of an endless stream of per-epoch permutations seeded by
    (seed, epoch); this process takes its `rank`-th slice of it."""

    def __init__(self, n: int, batch_size: int, seed: int, start_step: int = 0, rank: int = 0, world: int = 1,
                 steps: int | None = None, shuffle: bool = True):
        if batch_size % world:
            raise DataError(f"train.batch_size {batch_size} must be divisible by the number of processes ({world})")
        self.n, self.b, self.seed, self.start, self.rank, self.world = n, batch_size, seed, start_step, rank, world
        self.steps, self.shuffle = steps, shuffle
        self._perm: dict[int, np.ndarray] = {}

    def _order(self, epoch: int) -> np.ndarray:
        if epoch not in self._perm:
            self._perm = {epoch: np.random.default_rng((self.seed, epoch)).permutation(self.n) if self.shuffle
                          else np.arange(self.n)}
        return self._perm[epoch]

    def batch(self, step: int) -> list[int]:
        local = self.b // self.world
        first = step * self.b + self.rank * local
        return [int(self._order(j // self.n)[j % self.n]) for j in range(first, first + local)]

    def __iter__(self):
        step = self.start
        while self.steps is None or step < self.start + self.steps:
            yield self.batch(step)
            step += 1

    def __len__(self) -> int:
        return self.steps if self.steps is not None else 2**62


def derive_seed(*parts: int) -> int:
    """A 31-bit seed that is a fixed function of `parts` (Python's hash() of mixed tuples is not)."""
    return int(np.random.SeedSequence(list(parts)).generate_state(1)[0] >> 1)


def _collate(items):
    images = np.stack([np.asarray(i) for i, _, _ in items])
    cond = np.stack([e for _, e, _ in items]).astype(np.float32)
    return images, cond, np.array([c for _, _, c in items], np.int64)


class Batches:
    """An iterator of {"images": float (b, 3, R, R) in [-1, 1], "cond": (b, D) embeddings or None,
    "label": int64 (b,) class ids or None, "seeds": int64 (b,)} on `device` (seeds on the CPU), for
    steps start_step, start_step + 1, ... (b = global batch / world). `labels`: the class id of each
    ref's slide, for runs conditioned on labels (histogen.labels)."""

    def __init__(self, refs: list[SlideRef], cfg: RunConfig, device: torch.device, start_step: int = 0,
                 rank: int = 0, world: int = 1, train: bool = True, steps: int | None = None,
                 labels: list[int] | None = None):
        d, t = cfg.data, cfg.train
        self.cfg, self.device, self.train, self.step, self.rank = cfg, device, train, start_step, rank
        self.labelled = labels is not None
        self.dataset = SlidePatches(refs, d.conditional, labels, d.embedding)
        self.sampler = StepSampler(len(self.dataset), t.batch_size, t.seed, start_step, rank, world, steps,
                                   shuffle=train)
        backend = d.pipeline
        if backend == "auto":
            backend = "dali-gpu" if device.type == "cuda" and cuda_available() else "torch"
        self.transform = Transform(cfg.resolution, mean=(0.5,) * 3, std=(0.5,) * 3, layout="NCHW",
                                   flip=train and d.flip, rot90=train and d.rot90)
        self.resize = make_resizer(self.transform, backend, max_batch=t.batch_size // world,
                                   device_id=device.index or 0)
        self.loader = DataLoader(self.dataset, batch_sampler=self.sampler, num_workers=d.workers, collate_fn=_collate,
                                 persistent_workers=d.workers > 0, prefetch_factor=4 if d.workers else None)
        self._it = iter(self.loader)

    def __iter__(self):
        return self

    def __next__(self) -> dict:
        images, cond, labels = next(self._it)
        # Augmentation is drawn from (seed, step, rank): a resumed run draws what an
        # uninterrupted one did.
        seed = self.cfg.train.seed
        x = self.resize(images, seed=derive_seed(seed, self.step, self.rank, 0)).to(self.device, non_blocking=True)
        if self.train and self.cfg.data.stain_jitter > 0:
            x = stain_jitter(x, self.cfg.data.stain_jitter,
                             torch.Generator().manual_seed(derive_seed(seed, self.step, self.rank, 1)))
        # One seed per sample from its place in the global batch: the model's random draws for a
        # sample do not depend on how the batch is split over processes.
        first = self.rank * len(x)
        seeds = torch.tensor([derive_seed(seed, self.step, first + i, 3) for i in range(len(x))])
        self.step += 1
        return {"images": x, "cond": torch.from_numpy(cond).to(self.device) if self.cfg.data.conditional else None,
                "label": torch.from_numpy(labels).to(self.device) if self.labelled else None, "seeds": seeds}


def embeddings_from(store_path: Path, n: int, seed: int, embedding: str = DEFAULT) -> torch.Tensor:
    """n `embedding` embeddings drawn (seeded) from a store's patches: conditions for sampling."""
    store = open_store(store_path)
    embs = [store.embeddings(s, name=embedding) for s in store.slide_ids()
            if store.embeddings_attrs(s, embedding) is not None]
    if not embs or not sum(len(e) for e in embs):
        raise DataError(f"{store_path}: no {embedding} embeddings to condition on; "
                        f"run python -m engine.embed --store {store_path} --encoder {embedding}")
    allv = np.concatenate(embs)
    pick = np.random.default_rng(seed).choice(len(allv), n, replace=len(allv) < n)
    return torch.from_numpy(allv[pick])
