"""cuCIM's GPU decode against its CPU decode on the same slide: random 512 px level-0 regions
through engine.readers.CuCIMSlide, device="cuda" against device="cpu" on every core, patches/s and
the largest pixel difference (nvJPEG against libjpeg-turbo).

    python -m benchmarks decode [--slide SLIDE]   (default: a synthetic Aperio SVS written here)

`--dry-run` reads with cuCIM's CPU path on both sides (no GPU): it checks the code only.
"""
from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np

from benchmarks import report


def synthetic_svs(work: Path, side: int) -> Path:
    import histosynth as synth

    path = work / f"decode-synthetic-{side}.svs"
    if not path.is_file():
        work.mkdir(parents=True, exist_ok=True)
        synth.write_svs(path, synth.SynthSpec(width=side, height=side * 3 // 4, seed=5, mpp=0.25, jpeg_quality=90),
                        levels=(1, 4))
    return path


def patches_per_s(slide, locs, size: int, repeats: int) -> tuple[float, np.ndarray]:
    got = slide.read_regions(locs[:4], 0, (size, size))  # warm-up: open, first decode, CUDA context
    t0 = time.perf_counter()
    for _ in range(repeats):
        got = slide.read_regions(locs, 0, (size, size))
    return repeats * len(locs) / (time.perf_counter() - t0), got


def main(argv, work: Path, out: Path) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks decode")
    p.add_argument("--slide", type=Path, help="a TIFF/SVS slide cuCIM reads (JPEG tiles)")
    p.add_argument("--n", type=int, default=256, help="regions per read")
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--dry-run", action="store_true", help="cuCIM's CPU path on both sides")
    a = p.parse_args(argv)
    from engine import runtime
    from engine.readers import CuCIMSlide

    if not a.dry_run and not runtime.cuda_available():
        print("decode: cuCIM's GPU decode needs a CUDA GPU and there is none (--dry-run checks the code)")
        return 2
    n, repeats = (8, 1) if a.dry_run else (a.n, a.repeats)
    slide_path = a.slide or synthetic_svs(work, 1024 if a.dry_run else 8192)
    cores = os.cpu_count() or 1
    fast = CuCIMSlide(slide_path, device="cpu" if a.dry_run else "cuda")
    cpu = CuCIMSlide(slide_path, device="cpu", workers=cores)
    w, h = cpu.dimensions
    rng = np.random.default_rng(0)
    locs = list(zip(rng.integers(0, w - a.size, n).tolist(), rng.integers(0, h - a.size, n).tolist()))
    rate_fast, got_fast = patches_per_s(fast, locs, a.size, repeats)
    rate_cpu, got_cpu = patches_per_s(cpu, locs, a.size, repeats)
    diff = np.abs(got_fast.astype(np.int16) - got_cpu)
    label = "cuCIM CPU (dry run)" if a.dry_run else "cuCIM GPU"
    rows = [{"name": f"{label} decode, {n} x {a.size} px", "patches/s": rate_fast, "x cpu": rate_fast / rate_cpu},
            {"name": f"cuCIM CPU decode, {cores} cores", "patches/s": rate_cpu, "x cpu": 1.0}]
    extra = {"slide": str(slide_path), "gpu x cpu": rate_fast / rate_cpu, "max abs pixel difference": int(diff.max()),
             "mean abs pixel difference": float(diff.mean())}
    print(report.write(out, "decode", rows, extra))
    return 0
