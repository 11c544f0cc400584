"""Nuclear size per folder of H&E images, and the µm/px it implies: checks the scale assumed for
folders whose files carry none (benchmarks.quality.ASSUMED_MPP).

    python -m benchmarks nuclear-scale [--data DIR] [--images 12] [--crop 256]

Per folder: random crops at the files' own pixels, nuclei segmented by histogen.nuclei (the
folder's own haematoxylin threshold, Otsu over its tissue pixels: staining differs between
publishers far more than within a folder), the median equivalent diameter
of the nuclei wholly inside a crop (touching nuclei merge, so a median and not a mean). Folders
whose magnification the publisher states (ANCHORS) give the nuclear diameter in µm; every
folder's implied scale is that diameter over its own median in pixels. Tissues differ in nuclear
size (lymphocytes about 7 µm, tumour nuclei larger), so the estimate is good to about 30 %: enough
to catch a folder assumed at 2x its scale, not to set a scale to two digits.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from benchmarks import report
from benchmarks.quality import ASSUMED_MPP, DEFAULT_DATA, folders
from engine.discover import find_slides

ANCHORS = {"glas": 0.62, "gbm": 0.25}  # µm/px stated by the publishers (GlaS 20x, GBM40 40x)


def crops(folder: Path, n_images: int, crop: int, rng: np.random.Generator) -> np.ndarray:
    """Up to four random crop x crop RGB crops of each of n_images files of the folder."""
    from PIL import Image

    paths = find_slides(folder)[0]
    out = []
    for p in rng.permutation(len(paths))[:n_images]:
        a = np.asarray(Image.open(paths[p]).convert("RGB"))
        h, w = a.shape[:2]
        for _ in range(4):
            y, x = rng.integers(0, h - crop + 1), rng.integers(0, w - crop + 1)
            out.append(a[y : y + crop, x : x + crop])
    return np.stack(out)


def median_diameter(images: np.ndarray, threshold: float, min_area: int) -> tuple[float, int]:
    """(median equivalent diameter in px, nuclei measured) of the nuclei wholly inside the crops."""
    from histogen.nuclei import NucleiParams, measure

    nuc = measure(images, threshold, NucleiParams(threshold, min_area))
    return float(np.median(np.sqrt(4 * nuc.area / np.pi))) if len(nuc.area) else float("nan"), len(nuc.area)


def measure_folders(data: Path, n_images: int = 12, crop: int = 256, seed: int = 0) -> list[dict]:
    from histogen.nuclei import haematoxylin, otsu_threshold

    rng = np.random.default_rng(seed)
    rows = []
    for folder in folders(data):
        images = crops(folder, n_images, crop, rng)
        h = haematoxylin(images).ravel()
        counts, edges = np.histogram(h[h > 0.05], bins=256)  # tissue pixels: glass has next to no haematoxylin
        threshold = otsu_threshold(counts, (edges[:-1] + edges[1:]) / 2)
        d, n = median_diameter(images, threshold, min_area=12)
        rows.append({"name": folder.name, "nuclei": n, "median diameter px": d, "threshold": threshold})
    anchor_um = [r["median diameter px"] * ANCHORS[r["name"]] for r in rows if r["name"] in ANCHORS]
    um = float(np.mean(anchor_um)) if anchor_um else float("nan")
    for r in rows:
        r["implied mpp"] = um / r["median diameter px"]
        r["assumed mpp"] = ASSUMED_MPP.get(r["name"], "")
        r["stated mpp"] = ANCHORS.get(r["name"], "")
    return rows, um


def main(argv, work: Path, out: Path) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks nuclear-scale", description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, default=DEFAULT_DATA,
                   help="folder of image folders (default ../shared/data/he)")
    p.add_argument("--images", type=int, default=12, help="files per folder (four crops each)")
    p.add_argument("--crop", type=int, default=256, help="crop side, in the files' pixels")
    a = p.parse_args(argv)
    rows, um = measure_folders(a.data, a.images, a.crop)
    print(report.write(out, "nuclear-scale", rows, {"nuclear diameter um (anchors)": um,
                                                    "anchors": ", ".join(f"{k} {v}" for k, v in ANCHORS.items())}))
    return 0
