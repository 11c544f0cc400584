"""How real generated patches look, as numbers: the maths only (histogen.evaluate feeds it).

- Fréchet distance between Gaussians fitted to two feature sets (streaming mean/covariance).
- Improved precision and recall (Kynkäänniemi et al. 2019): k-nearest-neighbour balls around each
  real (generated) feature; precision is the share of generated features inside some real ball,
  recall the share of real features inside some generated ball.
- Nearest-neighbour distances (memorisation) and cosine similarity of matched pairs (conditioning).
- Stain fidelity: histograms of haematoxylin and eosin optical density on tissue pixels, and the
  1-d Wasserstein distance between two such histograms.
- Diversity: the mean pairwise distance within a set of patches (mode collapse drives it to 0).
- PSNR and SSIM of reconstructions.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from histogen.models.ssim import ssim
from histogen.stain import to_hed

CHUNK = 1024  # rows of a pairwise-distance block: 1024 x 10k float32 = 40 MB


def _unit(images: np.ndarray) -> torch.Tensor:
    """uint8 (n, H, W, 3) images as float (n, 3, H, W) on [0, 1]."""
    return torch.from_numpy(np.asarray(images)).permute(0, 3, 1, 2).float() / 255


# -- Fréchet distance ---------------------------------------------------------------------------


@dataclass
class GaussianStats:
    """Mean and covariance of a stream of feature batches (Chan et al.'s pairwise update, float64),
    so 10k+ features never need to be held at once."""

    dim: int
    n: int = 0
    mean: np.ndarray = field(default=None)
    m2: np.ndarray = field(default=None)  # sum of outer products of deviations from the mean

    def __post_init__(self):
        if self.mean is None:
            self.mean = np.zeros(self.dim)
            self.m2 = np.zeros((self.dim, self.dim))

    def update(self, x: np.ndarray) -> "GaussianStats":
        x = np.asarray(x, np.float64).reshape(-1, self.dim)
        nb = len(x)
        if nb == 0:
            return self
        mb = x.mean(0)
        d = x - mb
        delta = mb - self.mean
        total = self.n + nb
        self.m2 += d.T @ d + np.outer(delta, delta) * (self.n * nb / total)
        self.mean = self.mean + delta * (nb / total)
        self.n = total
        return self

    @property
    def cov(self) -> np.ndarray:
        if self.n < 2:
            raise ValueError("a covariance needs at least 2 samples")
        return self.m2 / (self.n - 1)

    def to_arrays(self) -> dict:
        return {"n": np.array(self.n), "mean": self.mean, "m2": self.m2}

    @classmethod
    def from_arrays(cls, a) -> "GaussianStats":
        return cls(a["mean"].shape[0], int(a["n"]), np.array(a["mean"]), np.array(a["m2"]))


def _sqrt_psd(a: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh((a + a.T) / 2)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def frechet_distance(mu1, cov1, mu2, cov2) -> float:
    """||mu1 - mu2||^2 + tr(S1 + S2 - 2 (S1 S2)^1/2). tr (S1 S2)^1/2 is computed as the sum of the
    square roots of the eigenvalues of S1^1/2 S2 S1^1/2, which is symmetric: no complex parts,
    stable for the singular covariances of small sets."""
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    cov1, cov2 = np.asarray(cov1, np.float64), np.asarray(cov2, np.float64)
    s1 = _sqrt_psd(cov1)
    m = s1 @ cov2 @ s1
    tr_sqrt = np.sqrt(np.clip(np.linalg.eigvalsh((m + m.T) / 2), 0, None)).sum()
    d = float(((mu1 - mu2) ** 2).sum() + np.trace(cov1) + np.trace(cov2) - 2 * tr_sqrt)
    return max(d, 0.0)  # identical sets give -1e-12-ish from rounding


def frechet_of(a: GaussianStats, b: GaussianStats) -> float:
    return frechet_distance(a.mean, a.cov, b.mean, b.cov)


# -- neighbourhoods -----------------------------------------------------------------------------


def _blocks(a: np.ndarray, b: np.ndarray):
    """(start row, distances (rows, len(b))) blocks of the Euclidean distance matrix a -> b."""
    tb = torch.from_numpy(np.ascontiguousarray(b, np.float32))
    for i in range(0, len(a), CHUNK):
        ta = torch.from_numpy(np.ascontiguousarray(a[i : i + CHUNK], np.float32))
        yield i, torch.cdist(ta.double(), tb.double())


def kth_neighbour_radius(x: np.ndarray, k: int) -> np.ndarray:
    """Distance of each row of x to its k-th nearest other row."""
    if len(x) <= k:
        raise ValueError(f"precision/recall with k={k} needs more than {k} samples per set, got {len(x)}")
    out = np.empty(len(x))
    for i, d in _blocks(x, x):
        out[i : i + len(d)] = d.kthvalue(k + 1, dim=1).values.numpy()  # the 1st is the point itself
    return out


def coverage(points: np.ndarray, centres: np.ndarray, radii: np.ndarray) -> float:
    """Share of `points` inside at least one ball (centre, radius)."""
    r = torch.from_numpy(radii)
    inside = np.concatenate([(d <= r[None]).any(dim=1).numpy() for _, d in _blocks(points, centres)])
    return float(inside.mean())


def precision_recall(real: np.ndarray, fake: np.ndarray, k: int = 3) -> tuple[float, float]:
    """Improved precision and recall of `fake` against `real` (rows are features)."""
    precision = coverage(fake, real, kth_neighbour_radius(real, k))
    recall = coverage(real, fake, kth_neighbour_radius(fake, k))
    return precision, recall


def nearest(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each row of a: the distance to its nearest row of b, and that row's index."""
    dist, idx = np.empty(len(a)), np.empty(len(a), np.int64)
    for i, d in _blocks(a, b):
        v, j = d.min(dim=1)
        dist[i : i + len(d)], idx[i : i + len(d)] = v.numpy(), j.numpy()
    return dist, idx


def cosine_pairs(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine similarity of row i of a with row i of b."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    den = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return (a * b).sum(1) / np.maximum(den, 1e-12)


# -- stain fidelity -----------------------------------------------------------------------------

OD_RANGE = (0.0, 3.0)  # natural-log optical density; H&E tissue lies well inside
OD_BINS = 600  # 0.005 wide: the Wasserstein distance is exact to half a bin
TISSUE_OD = 0.3  # a pixel is tissue when its summed RGB optical density exceeds this (~ mean RGB < 230)


def stain_histograms(images: np.ndarray) -> np.ndarray:
    """Counts (2, OD_BINS) of haematoxylin and eosin optical density over the tissue pixels of
    uint8 (n, H, W, 3) images. Pixel values v map to (v + 1) / 256 so white is finite."""
    rgb = (torch.from_numpy(np.asarray(images, np.uint8)).reshape(-1, 3).double() + 1) / 256
    tissue = (-torch.log(rgb)).sum(1) > TISSUE_OD
    hed = to_hed(rgb[tissue].float())
    lo, hi = OD_RANGE
    return np.stack([torch.histc(hed[:, c].clamp(lo, hi), OD_BINS, lo, hi).numpy().astype(np.int64) for c in (0, 1)])


def bin_centres() -> np.ndarray:
    lo, hi = OD_RANGE
    w = (hi - lo) / OD_BINS
    return lo + w * (np.arange(OD_BINS) + 0.5)


def wasserstein_hist(p: np.ndarray, q: np.ndarray) -> float:
    """1-d Wasserstein (earth mover's) distance between two histograms on the same bins."""
    if p.sum() == 0 or q.sum() == 0:
        return float("nan")
    w = (OD_RANGE[1] - OD_RANGE[0]) / OD_BINS
    return float(np.abs(np.cumsum(p / p.sum()) - np.cumsum(q / q.sum())).sum() * w)


# -- diversity ----------------------------------------------------------------------------------


def pairwise_l1(images: np.ndarray, side: int = 16) -> float:
    """Mean L1 distance (per value, on [0, 1]) between every two of uint8 (n, H, W, 3) images, each
    area-averaged to side x side first: the spread of colour and layout in a set. A generator that
    draws one image for every input scores 0; pixel noise barely moves it (the averaging removes it)."""
    if len(images) < 2:
        return float("nan")
    x = torch.nn.functional.adaptive_avg_pool2d(_unit(images), side).flatten(1)
    return float(torch.cdist(x, x, p=1).sum() / (len(x) * (len(x) - 1) * x.shape[1]))


# -- reconstructions ----------------------------------------------------------------------------


def psnr(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Per-image PSNR in dB of uint8 (n, H, W, 3) images; identical images give 100 dB (not inf)."""
    mse = ((np.asarray(x, np.float64) - np.asarray(y, np.float64)) ** 2).reshape(len(x), -1).mean(1)
    return np.minimum(10 * np.log10(255.0**2 / np.maximum(mse, 1e-30)), 100.0)


def ssim_uint8(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Per-image SSIM of uint8 (n, H, W, 3) images (histogen.models.ssim, on [0, 1])."""
    return ssim(_unit(x), _unit(y), data_range=1.0).numpy()
