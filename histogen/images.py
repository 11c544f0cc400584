"""Generated images as pictures: float tensors to uint8 arrays, and grids of them."""
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
    """uint8 (n, H, W, 3) in a near-square grid on white, 2 px apart."""
    n, h, w, _ = images.shape
    cols = math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    canvas = np.full((rows * (h + 2) + 2, cols * (w + 2) + 2, 3), 255, np.uint8)
    for i, im in enumerate(images):
        r, c = divmod(i, cols)
        canvas[2 + r * (h + 2) : 2 + r * (h + 2) + h, 2 + c * (w + 2) : 2 + c * (w + 2) + w] = im
    return Image.fromarray(canvas)


def beside(left: Image.Image, right: Image.Image, gap: int = 16) -> Image.Image:
    """left | right on white, `gap` px apart, tops aligned (a real grid beside a generated one)."""
    canvas = Image.new("RGB", (left.width + gap + right.width, max(left.height, right.height)), (255, 255, 255))
    canvas.paste(left.convert("RGB"), (0, 0))
    canvas.paste(right.convert("RGB"), (left.width + gap, 0))
    return canvas


def save_grid(images: torch.Tensor, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    grid(to_uint8(images)).save(path)
    return path
