"""The generated side of an evaluation: the run's samples, drawn here and written to the report
folder as a samples folder (histogen.samples_folder), or samples made elsewhere; summarised as the
real side is."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import zarr

from engine.progress import Progress
from histogen import metrics
from histogen.encoders import Encoder
from histogen.evaluation.patches import Patches
from histogen.evaluation.settings import EvalConfig
from histogen.evaluation.side import Side, summarise
from histogen.labels import Vocabulary
from histogen.run import RunSampler
from histogen.samples_folder import Samples, SamplesFolder


@dataclass
class Generated:
    side: Side
    images: np.ndarray | zarr.Array  # uint8 (n, R, R, 3)
    cond: np.ndarray | None  # what each sample was conditioned on
    recon: tuple | None  # autoencoders: per-image (PSNR, SSIM)
    classes: np.ndarray | None = None  # each sample's class id (runs conditioned on labels)


def given(samples: Samples, vocab: Vocabulary | None, encoder: Encoder, cfg: EvalConfig) -> Generated:
    """Samples made elsewhere; with a run conditioned on labels, their labels are its class ids."""
    images = samples.images
    batches = (images[i : i + cfg.batch_size] for i in range(0, len(images), cfg.batch_size))
    side = summarise(batches, encoder, len(images), cfg.grid, cfg.two_sample.max_per_class, cfg.seed)
    if vocab is None or samples.labels is None:
        return Generated(side, images, samples.cond, None)
    return Generated(side, images, samples.cond, None, np.array(vocab.indices(samples.labels), np.int64))


def sampled(sampler: RunSampler, real: Patches, resolution: int, encoder: Encoder, cfg: EvalConfig, out: Path,
            real_classes: np.ndarray | None = None) -> Generated:
    """The run's samples, written to `out` as they come. Autoencoders reconstruct the real draw;
    conditional models take its patches' embeddings as conditions; a run conditioned on labels
    samples the classes of the real draw (`real_classes`, one per row), cycled, so both sides have
    one mix of classes."""
    recon = sampler.reconstructs
    n = len(real.rows) if recon else cfg.n
    source = real.batches(resolution, cfg.batch_size, with_cond=sampler.conditional, cycle_to=None if recon else n,
                          pipeline=cfg.pipeline) if sampler.conditional or recon else None
    writer = SamplesFolder(out).writer(n, resolution)
    gen = torch.Generator(sampler.device).manual_seed(cfg.seed)
    classes = None if real_classes is None else real_classes[np.arange(n) % len(real_classes)]
    names = None if classes is None else sampler.folder.vocabulary.classes
    psnrs, ssims = [], []
    as_tensor = lambda a: None if a is None else torch.from_numpy(a)  # noqa: E731

    def stream():
        done = 0
        with Progress(total=n, desc="sample", unit="sample") as bar:
            while done < n:
                m = min(cfg.batch_size, n - done)
                real_b, cond_b = next(source) if source is not None else (None, None)
                images = torch.from_numpy(real_b).permute(0, 3, 1, 2).float() / 127.5 - 1 if recon else None
                label = None if classes is None else classes[done : done + m]
                y = sampler(m, gen, steps=cfg.steps, guidance=cfg.guidance, cond=as_tensor(cond_b), images=images,
                            label=as_tensor(label))
                if recon:
                    psnrs.append(metrics.psnr(real_b, y))
                    ssims.append(metrics.ssim_uint8(real_b, y))
                writer.add(y, cond_b, None if label is None else [names[c] for c in label.tolist()])
                done += m
                bar.update(m)
                yield y

    side = summarise(stream(), encoder, n, cfg.grid, cfg.two_sample.max_per_class, cfg.seed)
    written = writer.close({"run": str(sampler.folder.path), "step": sampler.step, "seed": cfg.seed, "steps": cfg.steps,
                            "guidance": cfg.guidance})
    recon_scores = (np.concatenate(psnrs), np.concatenate(ssims)) if recon else None
    return Generated(side, written.images, written.cond, recon_scores, classes)
