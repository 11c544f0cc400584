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


def sample_run(run: Path, n: int, out: Path, cond_from: Path | None = None, guidance: float = 1.0, steps: int = 50,
               seed: int = 0, batch_size: int = 16) -> np.ndarray:
    """n samples of the run's EMA network (autoencoders: reconstructions of validation patches)."""
    import zarr

    from histogen.data import Batches, DataError, SlideRef, embeddings_from
    from histogen.train import TrainError, ema_net, load_run

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    cfg, task, opts, step = load_run(run, device)
    net = ema_net(task, opts).to(device)
    nets = {**dict(task.nets), task.sample_net: net}
    cond = None
    if cfg.data.conditional:
        if cond_from is None:
            raise TrainError(f"{run} is conditioned on embeddings; pass --cond-from STORE with embeddings to draw them from")
        cond = embeddings_from(cond_from, n, seed).to(device)
    elif cond_from is not None:
        raise TrainError(f"{run} is unconditional; leave out --cond-from")
    images = None
    if task.kind == "ae":  # an autoencoder samples by reconstructing held-out patches
        import json

        split = json.loads((run / "split.json").read_text())
        refs = [SlideRef(**r) for r in (split["val"] or split["train"])]
        if not refs:
            raise DataError(f"{run}: no slides recorded to reconstruct")
        images = torch.cat([b["images"] for b in Batches(refs, cfg, device, train=False, steps=math.ceil(n / cfg.train.batch_size))])[:n]
        n = len(images)
    gen = torch.Generator(device).manual_seed(seed)
    outs = []
    for i in range(0, n, batch_size):
        j = min(n, i + batch_size)
        outs.append(task.sample(nets, j - i, gen, cond=None if cond is None else cond[i:j],
                                images=None if images is None else images[i:j], steps=steps, guidance=guidance).cpu())
    pixels = to_uint8(torch.cat(outs))
    out.mkdir(parents=True, exist_ok=True)
    for i, im in enumerate(pixels):
        Image.fromarray(im).save(out / f"sample-{i:05d}.png")
    arr = zarr.create_array(str(out / "samples.zarr"), shape=pixels.shape, chunks=(1, *pixels.shape[1:]), dtype="uint8", overwrite=True)
    arr[:] = pixels
    arr.attrs.update({"run": str(run), "step": step, "seed": seed, "guidance": guidance, "steps": steps,
                      "cond_from": str(cond_from) if cond_from else None})
    grid(pixels).save(out / "grid.png")
    return pixels
