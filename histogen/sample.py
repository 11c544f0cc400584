"""Sampling a trained run to a samples folder (histogen.samples_folder): PNG files, a Zarr array and a grid picture.

    histogen sample --run runs/NAME --n 64 --out DIR [--cond-from STORE] [--label lung] [--guidance 2.0] [--steps 50]
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from histogen.batches import Batches, DataError, embeddings_from
from histogen.run import RunSampler
from histogen.run_folder import RunFolder, TrainError
from histogen.samples_folder import SamplesFolder
from histogen.sampling import Sampling


def sample_run(run: Path, n: int, out: Path, cond_from: Path | None = None, guidance: float = Sampling().guidance,
               steps: int = Sampling().steps, seed: int = 0, batch_size: int = 16,
               label: str | None = None) -> np.ndarray:
    """n samples of the run's EMA network (reconstructing runs: reconstructions of validation
    patches). Runs conditioned on labels sample `label`, or without one every class in turn.
    Writes a samples folder with each sample's condition (conditional runs) and label (labelled runs)."""
    folder = RunFolder(run)
    sampler = RunSampler(folder)
    cfg, device, vocab = folder.cfg, sampler.device, folder.vocabulary
    labels = None
    if label is not None:
        labels = sampler.class_ids([label]).repeat(n)
    elif vocab is not None:
        labels = torch.arange(n) % len(vocab.classes)
    cond = None
    if sampler.conditional:
        if cond_from is None:
            raise TrainError(f"{run} is conditioned on embeddings; "
                             "pass --cond-from STORE with embeddings to draw them from")
        cond = embeddings_from(cond_from, n, seed, cfg.data.embedding)
    elif cond_from is not None:
        raise TrainError(f"{run} is unconditional; leave out --cond-from")
    images = None
    if sampler.reconstructs:  # held-out patches to reconstruct
        refs = folder.split["val"] or folder.split["train"]
        if not refs:
            raise DataError(f"{run}: no slides recorded to reconstruct")
        real = Batches(refs, cfg, device, train=False, steps=math.ceil(n / cfg.train.batch_size))
        images = torch.cat([b["images"] for b in real])[:n]
        n = len(images)
    gen = torch.Generator(device).manual_seed(seed)
    writer = SamplesFolder(out).writer(n, cfg.resolution, pictures=True)
    part = lambda v, i: None if v is None else v[i : i + batch_size]  # noqa: E731
    pixels = []
    for i in range(0, n, batch_size):
        cond_b, labels_b = part(cond, i), part(labels, i)
        pixels.append(sampler(min(n, i + batch_size) - i, gen, steps=steps, guidance=guidance, cond=cond_b,
                              images=part(images, i), label=labels_b))
        writer.add(pixels[-1], None if cond_b is None else cond_b.numpy(),
                   None if labels_b is None else [vocab.classes[c] for c in labels_b.tolist()])
    writer.close({"run": str(run), "step": sampler.step, "seed": seed, "guidance": guidance, "steps": steps,
                  "cond_from": str(cond_from) if cond_from else None, "label": label})
    return np.concatenate(pixels)
