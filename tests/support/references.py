"""Independent references for the tests: a resize with explicit triangle-filter weights (widened by
the downscale factor, edge pixels replicated) applied as two matrix products in float64, and
precision/recall by brute force."""
from __future__ import annotations

import numpy as np


def weights(n: int, m: int) -> np.ndarray:
    """(m, n): output pixel i is weights[i] @ input pixels."""
    s = n / m
    r = max(s, 1.0)
    w = np.zeros((m, n))
    for i in range(m):
        c = (i + 0.5) * s - 0.5
        for j in range(int(np.floor(c - r)), int(np.ceil(c + r)) + 1):
            w[i, min(max(j, 0), n - 1)] += max(0.0, 1.0 - abs(j - c) / r)
        w[i] /= w[i].sum()
    return w


def resize_reference(images: np.ndarray, size: int) -> np.ndarray:
    """uint8 (N, P, P, 3) -> float32 (N, size, size, 3) in [0, 1]."""
    w = weights(images.shape[1], size)
    n, p, _, c = images.shape
    rows = np.matmul(w, images.astype(np.float64).reshape(n, p, p * c)).reshape(n, size, p, c)
    out = np.matmul(rows.transpose(0, 1, 3, 2), w.T).transpose(0, 1, 3, 2)  # (n, size, size, c)
    return (out / 255).astype(np.float32)


def brute_precision_recall(real, fake, k):
    def radii(x):
        d = np.linalg.norm(x[:, None] - x[None], axis=-1)
        return np.sort(d, axis=1)[:, k]

    def cov(points, centres, rad):
        d = np.linalg.norm(points[:, None] - centres[None], axis=-1)
        return (d <= rad[None]).any(1).mean()

    return cov(fake, real, radii(real)), cov(real, fake, radii(fake))
