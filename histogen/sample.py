"""Sampling a trained run: PNG files, a Zarr array and a grid picture.

    histogen sample --run runs/NAME --n 64 --out DIR [--cond-from STORE] [--guidance 2.0] [--steps 50]
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """float (n, 3, H, W) in [-1, 1] -> uint8 (n, H, W, 3)."""
    x = ((images.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).numpy()


def grid(images: np.ndarray) -> Image.Image:
    n, h, w, _ = images.shape
    cols = math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    canvas = np.full((rows * (h + 2) + 2, cols * (w + 2) + 2, 3), 255, np.uint8)
    for i, im in enumerate(images):
        r, c = divmod(i, cols)
        canvas[2 + r * (h + 2) : 2 + r * (h + 2) + h, 2 + c * (w + 2) : 2 + c * (w + 2) + w] = im
    return Image.fromarray(canvas)


def save_grid(images: torch.Tensor, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    grid(to_uint8(images)).save(path)
    return path


class RunSampler:
    """A trained run's EMA network, ready to sample batches: uint8 (n, R, R, 3) per call."""

    def __init__(self, run: Path, device: torch.device | None = None):
        from histogen.train import ema_net, load_run

        self.run = Path(run)
        self.device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.cfg, self.task, opts, self.step = load_run(self.run, self.device)
        self.nets = {**dict(self.task.nets), self.task.sample_net: ema_net(self.task, opts).to(self.device)}

    @property
    def conditional(self) -> bool:
        return self.cfg.data.conditional

    def __call__(self, n: int, gen: torch.Generator, cond: torch.Tensor | None = None, images: torch.Tensor | None = None,
                 steps: int = 50, guidance: float = 1.0) -> np.ndarray:
        """n samples; `cond` (n, 384) for conditional runs; autoencoders reconstruct `images`
        (n, 3, R, R) in [-1, 1]."""
        to = lambda t: None if t is None else t.to(self.device)  # noqa: E731
        return to_uint8(self.task.sample(self.nets, n, gen, cond=to(cond), images=to(images), steps=steps, guidance=guidance))

    def split(self) -> dict[str, list]:
        """The run's {"train": [SlideRef], "val": [SlideRef]}."""
        import json

        from histogen.data import SlideRef

        split = json.loads((self.run / "split.json").read_text())
        return {k: [SlideRef(**r) for r in v] for k, v in split.items()}


def sample_run(run: Path, n: int, out: Path, cond_from: Path | None = None, guidance: float = 1.0, steps: int = 50,
               seed: int = 0, batch_size: int = 16) -> np.ndarray:
    """n samples of the run's EMA network (autoencoders: reconstructions of validation patches).
    Writes sample-*.png, samples.zarr, grid.png and, for conditional runs, conditions.npy."""
    import zarr

    from histogen.data import Batches, DataError, embeddings_from
    from histogen.train import TrainError

    sampler = RunSampler(run)
    cfg, device = sampler.cfg, sampler.device
    cond = None
    if sampler.conditional:
        if cond_from is None:
            raise TrainError(f"{run} is conditioned on embeddings; pass --cond-from STORE with embeddings to draw them from")
        cond = embeddings_from(cond_from, n, seed)
    elif cond_from is not None:
        raise TrainError(f"{run} is unconditional; leave out --cond-from")
    images = None
    if sampler.task.kind == "ae":  # an autoencoder samples by reconstructing held-out patches
        split = sampler.split()
        refs = split["val"] or split["train"]
        if not refs:
            raise DataError(f"{run}: no slides recorded to reconstruct")
        images = torch.cat([b["images"] for b in Batches(refs, cfg, device, train=False, steps=math.ceil(n / cfg.train.batch_size))])[:n]
        n = len(images)
    gen = torch.Generator(device).manual_seed(seed)
    pixels = np.concatenate([sampler(min(n, i + batch_size) - i, gen, None if cond is None else cond[i : i + batch_size],
                                     None if images is None else images[i : i + batch_size], steps, guidance)
                             for i in range(0, n, batch_size)])
    out.mkdir(parents=True, exist_ok=True)
    for i, im in enumerate(pixels):
        Image.fromarray(im).save(out / f"sample-{i:05d}.png")
    arr = zarr.create_array(str(out / "samples.zarr"), shape=pixels.shape, chunks=(1, *pixels.shape[1:]), dtype="uint8", overwrite=True)
    arr[:] = pixels
    arr.attrs.update({"run": str(run), "step": sampler.step, "seed": seed, "guidance": guidance, "steps": steps,
                      "cond_from": str(cond_from) if cond_from else None})
    if cond is not None:  # what each sample was conditioned on, for histogen eval --samples
        np.save(out / "conditions.npy", cond.numpy())
    grid(pixels).save(out / "grid.png")
    return pixels
