"""A time-boxed diffusion run on real patches, then `histogen eval` and its grids.

    python -m benchmarks realism --patches STORE --minutes M --pictures DIR

Trains the preset (diffusion-64) on STORE for about M minutes through histogen.train, the same
loop and run folder as `histogen train`: a short first leg warms up (Triton compiles, cuDNN
picks its algorithms), a second measures the step rate, and the last resumes to the step count
that rate fits in the time left. Then histogen.evaluate.evaluate (what `histogen eval` runs)
samples the run and compares it with the store's held-out slides: every realism figure it returns
beside its real-vs-real floor (the table of benchmarks quality), and DIR/real-vs-generated.png,
the real grid beside the sample grid. `--dry-run`: the tiny preset for a few steps on the CPU.
"""
from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

from benchmarks import report
from benchmarks.quality import table

QUIET = ["train.log_every=1000000", "train.val_every=1000000", "train.sample_every=1000000", "train.ckpt_every=1000000"]


def train_for(preset: str, overrides: list[str], store: Path, run: Path, seconds: float,
              leg: int) -> tuple[int, float, dict]:
    """Train about `seconds`: two legs of `leg` steps (warm-up, then the rate), then the rest.
    Returns the steps, the images/s of the last leg and its metrics."""
    from histogen import config
    from histogen.train import train

    t0, step = time.perf_counter(), 0
    for _ in range(2):
        step += leg
        r = train(config.resolve(preset, overrides + [f"train.steps={step}"]), [store], run, show_progress=False)
    rate = leg / max(r.seconds, 1e-9)
    left = seconds - (time.perf_counter() - t0)
    if left * rate >= 1:
        step += int(left * rate)
        r = train(config.resolve(preset, overrides + [f"train.steps={step}"]), [store], run, show_progress=False)
    return step, r.images_per_s, r.metrics


def main(argv, work: Path, out: Path) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks realism")
    p.add_argument("--patches", type=Path, required=True,
                   help="patch store of real H&E at the training size (gpu-bundle's he-64.zarr)")
    p.add_argument("--minutes", type=float, default=2.0, help="training time")
    p.add_argument("--preset", default="diffusion-64")
    p.add_argument("--pictures", type=Path, help="where real-vs-generated.png goes (default: --out)")
    p.add_argument("--n-eval", type=int, default=1000, help="generated samples for histogen eval")
    p.add_argument("--sample-steps", type=int, default=50, help="DDIM steps")
    p.add_argument("--dry-run", action="store_true", help="the tiny preset for a few steps on the CPU")
    a = p.parse_args(argv)
    from histogen.evaluate import EvalConfig, evaluate
    from histogen.images import beside, grid

    pictures = a.pictures or out
    preset, overrides, leg, n_eval, steps, batch = a.preset, list(QUIET), 20, a.n_eval, a.sample_steps, 256
    if a.dry_run:
        preset, leg, n_eval, steps, batch = "diffusion-tiny", 1, 16, 2, 8
        overrides += ["model.channel_mult=[1]", "train.batch_size=2"]
    run = work / "realism-run"
    shutil.rmtree(run, ignore_errors=True)  # a fresh run each time: its figures belong to this check
    t0 = time.perf_counter()
    done, images_per_s, losses = train_for(preset, overrides, a.patches, run, 60 * a.minutes, leg)
    trained = time.perf_counter() - t0
    ev = evaluate([a.patches], work / "realism-eval", run=run, cfg=EvalConfig(n=n_eval, batch_size=batch, steps=steps))
    pictures.mkdir(parents=True, exist_ok=True)
    beside(grid(ev.pictures["real"]), grid(ev.pictures["generated"])).save(pictures / "real-vs-generated.png")
    extra = {"run": f"{preset} on {a.patches.name}", "steps": done, "images/s": images_per_s,
             "training minutes": trained / 60,
             **{f"last {k}": v for k, v in losses.items()}, "skipped": ev.skipped, "notes": ev.notes,
             "n real (held out)": ev.info.get("n_real"),
             "n generated": ev.info.get("n_generated"), "encoder": ev.info.get("encoder"),
             "pictures": str(pictures / "real-vs-generated.png")}
    print(report.write(out, "realism", table({"diffusion": ev}), extra))
    return 0
