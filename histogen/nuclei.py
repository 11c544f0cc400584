"""Nuclear morphology of H&E patches, model-free: nuclei segmented on the haematoxylin channel of
the colour deconvolution (histogen.stain), measured, and compared between two sets of patches.

Segmentation: a pixel is nucleus when its haematoxylin optical density exceeds one threshold
(by default Otsu's, on the haematoxylin histogram of the reference set's tissue pixels, so one rule
is applied to every set compared with that reference); holes are filled; connected components
(4-connected) smaller than `min_area` pixels are noise. Touching nuclei are not split.

Per patch: the nucleus count. Per nucleus wholly inside its patch (a nucleus cut by the border
has a cut shape): area (pixels), eccentricity, solidity (area / convex hull area) and mean
haematoxylin optical density. Two sets are compared per feature by the 1-d Wasserstein distance
divided by the standard deviation of the reference set's feature (a scale-free "in units of the
real spread")."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from histogen.stain import to_hed

_CROSS = np.array([[0, 1, 0], [1, 1, 1], [0, 1, 0]], bool)  # 4-connected
FEATURES = ("count", "area", "eccentricity", "solidity", "intensity")  # count is per patch, the rest per nucleus


@dataclass(frozen=True)
class NucleiParams:
    threshold: float | None = None  # haematoxylin optical density (natural log); None = Otsu of the reference set
    min_area: int = 4  # pixels; smaller components are noise (at 32-64 px a nucleus covers ~10-100)


def haematoxylin(images: np.ndarray) -> np.ndarray:
    """float32 (n, H, W) haematoxylin optical density of uint8 (n, H, W, 3) images (v -> (v + 1) / 256,
    as histogen.metrics.stain_histograms maps them)."""
    rgb = (torch.from_numpy(np.ascontiguousarray(images, np.uint8)).double() + 1) / 256
    return to_hed(rgb.float())[..., 0].numpy()


def otsu_threshold(counts: np.ndarray, centres: np.ndarray) -> float:
    """Otsu's threshold of a histogram (counts on bin centres)."""
    from skimage.filters import threshold_otsu

    return float(threshold_otsu(hist=(np.asarray(counts), np.asarray(centres))))


@dataclass
class Nuclei:
    """Measurements of one set of patches."""

    count: np.ndarray  # (n_patches,) nuclei per patch (border nuclei included)
    area: np.ndarray  # (n_nuclei,) per nucleus wholly inside its patch
    eccentricity: np.ndarray
    solidity: np.ndarray
    intensity: np.ndarray
    patch: np.ndarray  # (n_nuclei,) the patch each measured nucleus lies in

    def feature(self, name: str) -> np.ndarray:
        return getattr(self, name)


def measure(images: np.ndarray, threshold: float, params: NucleiParams = NucleiParams()) -> Nuclei:
    """Segment and measure the nuclei of uint8 (n, R, R, 3) patches. The patches are laid out in one
    mosaic, one background pixel apart, so labelling and measuring are one call each."""
    from scipy import ndimage  # here, not at import: `histogen train` never needs scipy

    images = np.asarray(images, np.uint8)
    n, r = len(images), images.shape[1]
    if n == 0:
        return Nuclei(*(np.zeros(0) for _ in range(5)), np.zeros(0, np.int64))
    h = haematoxylin(images)
    cols = int(np.ceil(np.sqrt(n)))
    rows = -(-n // cols)
    step = r + 1

    def mosaic(a, fill):
        m = np.full((rows * step, cols * step), fill, a.dtype)
        for i in range(n):
            y, x = divmod(i, cols)
            m[y * step : y * step + r, x * step : x * step + r] = a[i]
        return m

    # the gaps are background: per patch
    mask = ndimage.binary_fill_holes(mosaic(h > threshold, False), structure=_CROSS)
    labels, k = ndimage.label(mask, structure=_CROSS)
    props = _regions(labels, k, mosaic(h, np.float32(0)))
    keep = props["area"] >= params.min_area
    y0, x0, y1, x1 = (props[b][keep] for b in ("y0", "x0", "y1", "x1"))
    patch = (y0 // step) * cols + x0 // step
    count = np.bincount(patch, minlength=n)
    inside = (y0 % step > 0) & (x0 % step > 0) & (y1 % step < r - 1) & (x1 % step < r - 1)
    pick = lambda k: props[k][keep][inside]  # noqa: E731
    return Nuclei(count, pick("area"), pick("eccentricity"), pick("solidity"), pick("intensity"), patch[inside])


def _regions(labels: np.ndarray, k: int, intensity: np.ndarray) -> dict:
    """Per label 1..k: area, bounding box (inclusive), eccentricity and mean intensity from pixel
    moments in one pass (eccentricity as scikit-image defines it: sqrt(1 - l2 / l1) of the
    coordinates' covariance), and solidity: area / area of the convex hull of the pixel squares."""
    from scipy.spatial import ConvexHull, QhullError

    ys, xs = np.nonzero(labels)
    lab = labels[ys, xs] - 1
    order = np.argsort(lab, kind="stable")
    ys, xs, lab = ys[order], xs[order], lab[order]
    area = np.bincount(lab, minlength=k).astype(np.float64)
    s = lambda v: np.bincount(lab, v.astype(np.float64), minlength=k) / area  # noqa: E731  per-label mean
    my, mx = s(ys), s(xs)
    vy, vx, cxy = s(ys * ys) - my**2, s(xs * xs) - mx**2, s(ys * xs) - my * mx
    root = np.sqrt(np.maximum(((vy - vx) / 2) ** 2 + cxy**2, 0))
    l1, l2 = (vy + vx) / 2 + root, (vy + vx) / 2 - root
    ecc = np.where(l1 > 0, np.sqrt(np.clip(1 - l2 / np.where(l1 > 0, l1, 1), 0, 1)), 0.0)
    ends = np.cumsum(area.astype(np.int64))
    hull = np.empty(k)
    corners = np.array([[0, 0], [0, 1], [1, 0], [1, 1]])
    for i, (a, b) in enumerate(zip(ends - area.astype(np.int64), ends)):
        pts = (np.stack([ys[a:b], xs[a:b]], 1)[:, None] + corners).reshape(-1, 2)
        try:
            hull[i] = ConvexHull(pts).volume  # in 2-d, the area
        except QhullError:  # collinear squares cannot happen (squares have area); kept for safety of qhull's precision
            hull[i] = area[i]
    first = lambda v, f: f.reduceat(v, np.r_[0, ends[:-1]]) if k else v[:0]  # noqa: E731
    return {"area": area, "eccentricity": ecc, "solidity": area / hull, "intensity": s(intensity[ys, xs]),
            "y0": first(ys, np.minimum), "x0": first(xs, np.minimum), "y1": first(ys, np.maximum),
            "x1": first(xs, np.maximum)}


def normalised_w1(reference: np.ndarray, other: np.ndarray) -> float:
    """1-d Wasserstein distance between two samples, divided by the reference's standard deviation;
    NaN when either is empty or the reference does not vary."""
    import scipy.stats

    if len(reference) == 0 or len(other) == 0:
        return float("nan")
    sd = float(np.std(reference))
    return float(scipy.stats.wasserstein_distance(reference, other) / sd) if sd > 0 else float("nan")


def compare(reference: Nuclei, other: Nuclei) -> dict:
    """{FEATURE_w1: normalised distance} for every feature, and the means of `other`; None where
    undefined (no nuclei on a side, or no spread in the reference)."""
    defined = lambda v: v if np.isfinite(v) else None  # noqa: E731  (metrics.json holds no NaN)
    out = {f"{f}_w1": defined(normalised_w1(reference.feature(f), other.feature(f))) for f in FEATURES}
    out.update({f"{f}_mean": defined(float(np.mean(other.feature(f)))) if len(other.feature(f)) else None
                for f in FEATURES})
    out["nuclei_measured"] = int(len(other.area))
    return out
