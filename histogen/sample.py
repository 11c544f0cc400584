"""Sampling a trained run to files: PNG files, a Zarr array and a grid picture.

    histogen sample --run runs/NAME --n 64 --out DIR [--cond-from STORE] [--label lung] [--guidance 2.0] [--steps 50]
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch
import zarr
from PIL import Image

from histogen.batches import Batches, DataError, embeddings_from
from histogen.images import grid
from histogen.run import RunSampler, TrainError


def sample_run(run: Path, n: int, out: Path, cond_from: Path | None = None, guidance: float = 1.0, steps: int = 50,
               seed: int = 0, batch_size: int = 16, label: str | None = None) -> np.ndarray:
    """n samples of the run's EMA network (reconstructing runs: reconstructions of validation
    patches). Runs conditioned on labels sample `label`, or without one every class in turn.
    Writes sample-*.png, samples.zarr, grid.png, for conditional runs conditions.npy, and for
    labelled runs sample_labels.json (each sample's label)."""
    sampler = RunSampler(run)
    cfg, device = sampler.cfg, sampler.device
    labels = None
    if label is not None:
        labels = sampler.class_ids([label]).repeat(n)
    elif sampler.vocabulary is not None:
        labels = torch.arange(n) % len(sampler.vocabulary.classes)
    cond = None
    if sampler.conditional:
        if cond_from is None:
            raise TrainError(f"{run} is conditioned on embeddings; pass --cond-from STORE with embeddings to draw them from")
        cond = embeddings_from(cond_from, n, seed)
    elif cond_from is not None:
        raise TrainError(f"{run} is unconditional; leave out --cond-from")
    images = None
    if sampler.reconstructs:  # held-out patches to reconstruct
        split = sampler.split()
        refs = split["val"] or split["train"]
        if not refs:
            raise DataError(f"{run}: no slides recorded to reconstruct")
        images = torch.cat([b["images"] for b in Batches(refs, cfg, device, train=False, steps=math.ceil(n / cfg.train.batch_size))])[:n]
        n = len(images)
    gen = torch.Generator(device).manual_seed(seed)
    part = lambda v, i: None if v is None else v[i : i + batch_size]  # noqa: E731
    pixels = np.concatenate([sampler(min(n, i + batch_size) - i, gen, part(cond, i), part(images, i), steps, guidance, part(labels, i))
                             for i in range(0, n, batch_size)])
    out.mkdir(parents=True, exist_ok=True)
    for i, im in enumerate(pixels):
        Image.fromarray(im).save(out / f"sample-{i:05d}.png")
    arr = zarr.create_array(str(out / "samples.zarr"), shape=pixels.shape, chunks=(1, *pixels.shape[1:]), dtype="uint8", overwrite=True)
    arr[:] = pixels
    arr.attrs.update({"run": str(run), "step": sampler.step, "seed": seed, "guidance": guidance, "steps": steps,
                      "cond_from": str(cond_from) if cond_from else None, "label": label})
    if cond is not None:  # what each sample was conditioned on, for histogen eval --samples
        np.save(out / "conditions.npy", cond.numpy())
    if labels is not None:
        names = [sampler.vocabulary.classes[i] for i in labels.tolist()]
        (out / "sample_labels.json").write_text(json.dumps(names))
    grid(pixels).save(out / "grid.png")
    return pixels
