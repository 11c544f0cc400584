"""Realism against training images seen: a run's kept checkpoints, each evaluated on the run's
held-out slides (histogen.evaluate, the same real draw and floor at every point), as a table and a
PNG plot, with a power-law fit of each measure's excess over its floor to extrapolate.

    python -m benchmarks scaling --run RUN --real STORE [STORE ...] [--at 500 1000 2000 4000 8000]
                                 [--n 500] [--sample-steps 25] [--predict 1280000]

A point is the run folder as it was at that step: its config, split and that one checkpoint, linked
into WORK/scaling/ (nothing of the run is copied or changed). --predict: images seen to extrapolate
to (default: the gpu budget of benchmarks quality, 20 000 steps of 64).
"""
from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np

from benchmarks import plot, report
from benchmarks.quality import flat
from engine.embed import DEFAULT_MODEL
from histogen.evaluate import EvalConfig, evaluate
from histogen.run_folder import RunFolder

# The measures of the curve, as benchmarks.quality's table names them.
MEASURES = ("c2st.accuracy", "nuclei.count_w1", "nuclei.area_w1", "nuclei.solidity_w1", "stain.haematoxylin_w1",
            "stain.eosin_w1", "diversity.ratio")
GPU_IMAGES = 20_000 * 64


def kept_steps(run: Path) -> list[int]:
    return sorted(int(p.stem.split("-")[1]) for p in (run / "checkpoints").glob("step-*.json"))


def at_step(run: Path, step: int, work: Path) -> Path:
    """A folder that reads as `run` did at `step`: links to its files and to that one checkpoint."""
    view = work / "scaling" / f"{run.name}-step-{step:08d}"
    (view / "checkpoints").mkdir(parents=True, exist_ok=True)
    for p in run.iterdir():
        if p.is_file() and not (view / p.name).exists():
            (view / p.name).symlink_to(p.resolve())
    for p in (run / "checkpoints").glob(f"step-{step:08d}.*"):
        link = view / "checkpoints" / p.name
        if not link.exists():
            link.symlink_to(p.resolve())
    return view


def power_fit(images: list[float], excess: list[float]) -> tuple[float, float] | None:
    """(a, b) of excess = a * images**b by least squares in log-log; None with under 3 positive points."""
    pts = [(math.log(x), math.log(y)) for x, y in zip(images, excess) if y is not None and y > 0]
    if len(pts) < 3:
        return None
    b, log_a = np.polyfit([p[0] for p in pts], [p[1] for p in pts], 1)
    return math.exp(log_a), float(b)


def curve(run: Path, real: list[Path], steps: list[int], work: Path, out: Path, n: int, sample_steps: int,
          encoder: str) -> tuple[list[dict], dict]:
    """One row per step: images seen and each measure with its floor; evaluations reused when done."""
    batch = RunFolder(run).cfg.train.batch_size
    rows = []
    for step in steps:
        report_dir = out / "scaling" / f"step-{step:08d}"
        metrics_file = report_dir / "metrics.json"
        if not metrics_file.is_file():
            cfg = EvalConfig(n=n, steps=sample_steps, encoder=encoder)
            evaluate(real, report_dir, run=at_step(run, step, work), cfg=cfg)
        m = json.loads(metrics_file.read_text())
        values, floors = flat(m["metrics"]), flat(m["floor"])
        row = {"name": f"step {step}", "images seen": step * batch}
        for k in MEASURES:
            row[k] = values.get(k)
            row[f"{k} floor"] = floors.get(k)
        rows.append(row)
    return rows, {"batch": batch}


def predict(rows: list[dict], images: float) -> dict:
    """Each measure's excess over its floor fitted as a power law of images seen, at `images`."""
    out = {}
    for k in MEASURES:
        floors = [r.get(f"{k} floor") for r in rows]
        if None in floors or any(r.get(k) is None for r in rows):
            continue  # a measure some point lacks (no nuclei found, say): no fit
        floor = float(np.mean(floors))
        sign = -1 if k == "diversity.ratio" else 1  # diversity approaches its floor from below
        excess = [sign * (r[k] - floor) for r in rows]
        fit = power_fit([r["images seen"] for r in rows], excess)
        if fit is not None:
            a, b = fit
            out[f"{k} at {images:.0f} images"] = floor + sign * a * images**b
            out[f"{k} exponent"] = b
    return out


def draw(rows: list[dict], path: Path) -> None:
    x = [r["images seen"] for r in rows]
    acc_floor = np.mean([r["c2st.accuracy floor"] for r in rows])
    ratio = lambda k: [r[k] / r[f"{k} floor"] if r[k] is not None and r[f"{k} floor"] else None for r in rows]  # noqa: E731
    plot.panels([
        plot.Panel("two-sample accuracy (dashed: real vs real)", x, {"accuracy": [r["c2st.accuracy"] for r in rows]},
                   "training images seen", reference=float(acc_floor)),
        plot.Panel("distance / its real-vs-real floor (dashed: 1)", x,
                   {k.split(".")[1].removesuffix("_w1"): ratio(k) for k in MEASURES[1:6]}, "training images seen",
                   logy=True, reference=1.0),
        plot.Panel("diversity ratio (dashed: real)", x, {"diversity": [r["diversity.ratio"] for r in rows]},
                   "training images seen", reference=float(np.mean([r["diversity.ratio floor"] for r in rows]))),
    ], path)


def main(argv, work: Path, out: Path) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks scaling", description=__doc__.split("\n\n")[0])
    p.add_argument("--run", type=Path, required=True, help="a run folder whose checkpoints were kept (train.keep)")
    p.add_argument("--real", type=Path, nargs="+", required=True, help="the stores it trained on")
    p.add_argument("--at", type=int, nargs="+", default=None, help="steps to evaluate (default: five kept ones, "
                                                                   "doubling up to the last)")
    p.add_argument("--n", type=int, default=500, help="generated and real patches per point")
    p.add_argument("--sample-steps", type=int, default=25, help="DDIM steps")
    p.add_argument("--predict", type=float, default=GPU_IMAGES, help="images seen to extrapolate to")
    p.add_argument("--encoder", default=DEFAULT_MODEL, help="encoder for the learned-space metrics (skipped when it "
                                                              "cannot load); default %(default)s")
    a = p.parse_args(argv)
    kept = kept_steps(a.run)
    steps = a.at or sorted({min(kept, key=lambda s: abs(s - kept[-1] / 2**i)) for i in range(5)})
    missing = sorted(set(steps) - set(kept))
    if missing:
        print(f"{a.run}: no checkpoint kept at step(s) {', '.join(map(str, missing))}; "
              f"kept: {', '.join(map(str, kept))}")
        return 1
    rows, extra = curve(a.run, a.real, steps, work, out, a.n, a.sample_steps, a.encoder)
    extra.update(predict(rows, a.predict))
    draw(rows, out / "scaling.png")
    extra["plot"] = str(out / "scaling.png")
    print(report.write(out, "scaling", rows, extra))
    return 0
