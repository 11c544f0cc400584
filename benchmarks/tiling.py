"""Tiling throughput: end-to-end patches/s of `engine.tile` on a large JPEG slide, against

1. a baseline written the common way: OpenSlide `read_region` per patch, a numpy tissue check on
   every pixel, one Zarr write per patch (same mask, same plan, same codec);
2. the decode ceiling: libjpeg-turbo (imagecodecs) decoding exactly the source tiles those patches
   cover, once each, on all cores, from bytes already in memory;

and the command as a user types it, cold (`python -m engine.tile`, process start and imports
included), with its peak RSS (the process's VmHWM: the README's memory bound is checked against it);
and the cost of the patch check (engine.check: tissue, ink, focus, fold, bubble): the same run with
the check and without it, both storing every readable patch (--keep-rejected, so that they write
the same patches), and check_patches alone on those decoded patches, on all cores.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from unittest import mock

import numpy as np

from benchmarks import report
import engine.tile
import histosynth as synth
from engine.check import check_patches
from engine.qc import SCORES, PatchQC
from engine.mask import tissue_mask_reference
from engine.plan import plan_tiles_reference
from engine.store import PatchStore
from engine.tile import TileConfig, tile_slides

ROOT = Path(__file__).resolve().parents[1]
CMU = ROOT.parent / "shared" / "data" / "slides" / "CMU-1-Small-Region.svs"


def make_slide(work: Path, size: int) -> Path:
    """A large Aperio-style SVS: the real CMU slide mosaicked where ../shared is there."""
    name = f"{'cmu-mosaic' if CMU.is_file() else 'synthetic'}-{size}.svs"
    path = work / "slides" / name
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        if CMU.is_file():
            synth.mosaic_svs(tmp, CMU, size, size)
        else:
            synth.write_svs(tmp, synth.SynthSpec(width=size, height=size, seed=11))
        tmp.rename(path)
    return path


def run_engine(slide: Path, work: Path, cfg: TileConfig) -> tuple[float, int]:
    out = work / f"store-{cfg.backend}.zarr"
    shutil.rmtree(out, ignore_errors=True)
    shutil.rmtree(out.with_suffix(".qa"), ignore_errors=True)
    t0 = time.perf_counter()
    summary = tile_slides(slide.parent, out, cfg, show_progress=False)
    seconds = time.perf_counter() - t0
    assert summary.count("done") == 1, summary.text()
    return seconds, summary.n_patches


# The tiling command in a fresh interpreter, which then reports its own VmHWM (kB): the parent cannot
# measure it, as a child's ru_maxrss counts the parent's resident memory at the fork.
COLD = """import sys, engine.tile
rc = engine.tile.main(sys.argv[1:])
print(next(line for line in open("/proc/self/status") if line.startswith("VmHWM")), file=sys.stderr)
sys.exit(rc)"""


def run_cold(slide: Path, work: Path, repeats: int) -> tuple[float, int, float]:
    """(seconds, patches, peak RSS MB) of the fastest of `repeats` runs of the tiling command in a fresh
    process with the default settings (QA picture included); the peak is the high-water mark of that
    process's resident memory (its VmHWM), the largest over the runs."""
    out = work / "store-cold.zarr"
    best, peak = float("inf"), 0.0
    for _ in range(repeats):
        shutil.rmtree(out, ignore_errors=True)
        shutil.rmtree(out.with_suffix(".qa"), ignore_errors=True)
        t0 = time.perf_counter()
        r = subprocess.run([sys.executable, "-c", COLD, "--slides", str(slide.parent), "--out", str(out), "--quiet"],
                           cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        best = min(best, time.perf_counter() - t0)
        assert r.returncode == 0, r.stderr
        peak = max(peak, int(r.stderr.split("VmHWM:")[-1].split()[0]) / 1024)
    store = PatchStore.open(out)
    return best, len(store.coords(store.slide_ids()[0])), peak


def run_baseline(slide: Path, work: Path, cfg: TileConfig) -> tuple[float, int]:
    import openslide
    import zarr

    out = work / "baseline.zarr"
    shutil.rmtree(out, ignore_errors=True)
    t0 = time.perf_counter()
    osr = openslide.OpenSlide(str(slide))
    w0, h0 = osr.dimensions
    thumb = np.asarray(osr.get_thumbnail((round(w0 / cfg.mask_downsample), round(h0 / cfg.mask_downsample))).convert("RGB"))
    mres = tissue_mask_reference(thumb, cfg.mask)
    p = cfg.plan.patch_size
    coords, _ = plan_tiles_reference(mres.mask, (w0, h0), p, p, cfg.plan.min_tissue)
    arr = zarr.create_array(str(out), shape=(len(coords), p, p, 3), chunks=(1, p, p, 3), dtype="uint8",
                            compressors=cfg.codec.compressors())
    n = 0
    for x, y in coords.tolist():
        patch = np.asarray(osr.read_region((x, y), 0, (p, p)).convert("RGB"))
        if check_patches(patch[None], mres.threshold, cfg.mask, cfg.check).passed[0]:
            arr[n] = patch
            n += 1
    return time.perf_counter() - t0, n


def source_tiles(slide: Path, coords: np.ndarray, patch: int):
    """Compressed bytes of every level-0 tile the patches cover (once each), the JPEG tables and
    the colour spaces to decode with."""
    import tifffile
    from tifffile.tifffile import jpeg_decode_colorspace

    with tifffile.TiffFile(slide) as tif:
        page = tif.pages[0]
        tw, th = page.tilewidth, page.tilelength
        across = -(-page.imagewidth // tw)
        idx = set()
        for x, y in coords.tolist():
            for r in range(y // th, (y + patch - 1) // th + 1):
                for c in range(x // tw, (x + patch - 1) // tw + 1):
                    idx.add(r * across + c)
        fh = tif.filehandle
        blobs = []
        for i in sorted(idx):
            fh.seek(page.dataoffsets[i])
            blobs.append(fh.read(page.databytecounts[i]))
        # The colour spaces tifffile itself would decode with (Aperio tiles are RGB or YCbCr).
        spaces = jpeg_decode_colorspace(page.photometric, page.planarconfig, page.extrasamples, False)
        return blobs, page.jpegtables, spaces


def run_ceiling(slide: Path, coords: np.ndarray, patch: int, repeats: int = 3) -> tuple[float, int]:
    import imagecodecs

    blobs, tables, (cs, out_cs) = source_tiles(slide, coords, patch)
    decode = lambda b: imagecodecs.jpeg8_decode(b, tables=tables, colorspace=cs, outcolorspace=out_cs)
    best = float("inf")
    with ThreadPoolExecutor(os.cpu_count()) as pool:
        for _ in range(repeats):
            t0 = time.perf_counter()
            for _ in pool.map(decode, blobs, chunksize=16):
                pass
            best = min(best, time.perf_counter() - t0)
    return best, len(blobs)


def run_write_ceiling(work: Path, n_patches: int, patch: int, repeats: int = 3) -> float:
    """Seconds to write the patches' raw bytes to the store's filesystem in 16-patch blocks:
    lossless patches can be stored no faster than this (it bounds the run where the disk is slow)."""
    block = np.random.default_rng(0).integers(0, 256, (16, patch, patch, 3), np.uint8).tobytes()
    path, best = work / "write-ceiling.bin", float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        with open(path, "wb") as f:
            for _ in range(-(-n_patches // 16)):
                f.write(block)
            f.flush()
        best = min(best, time.perf_counter() - t0)
        path.unlink()
    return best


def no_check(patches: np.ndarray, threshold: int, mask_params=None, check_params=None) -> PatchQC:
    """What the tiler would cost without the patch check: every patch passes, with zero scores."""
    zeros = np.zeros(len(patches), np.float32)
    return PatchQC({name: zeros for name in SCORES}, np.zeros(len(patches), np.uint8))


def run_check_only(store: PatchStore, cfg: TileConfig, repeats: int = 3) -> tuple[float, int]:
    """Seconds of check_patches alone over a store's decoded patches, in the tiler's batches on
    its worker threads (patches read into memory first)."""
    sid = store.slide_ids()[0]
    patches = store.read_patches(sid)
    threshold = store.attrs(sid)["mask_threshold"]
    batches = [patches[i : i + cfg.batch_size] for i in range(0, len(patches), cfg.batch_size)]
    best = float("inf")
    with ThreadPoolExecutor(cfg.workers) as pool:
        for _ in range(repeats):
            t0 = time.perf_counter()
            list(pool.map(lambda b: check_patches(b, threshold, cfg.mask, cfg.check), batches))
            best = min(best, time.perf_counter() - t0)
    return best, len(patches)


def qc_cost(slide: Path, work: Path, repeats: int) -> tuple[list[dict], dict]:
    """Rows and figures of the check's cost: tiling with and without it (both --keep-rejected),
    and the check alone."""
    cfg = TileConfig(keep_rejected=True)
    with_qc = min(run_engine(slide, work, cfg) for _ in range(repeats))
    rejected = PatchStore.open(work / "store-auto.zarr")
    check_s, n_checked = run_check_only(rejected, cfg)
    with mock.patch.object(engine.tile, "check_patches", no_check):
        without = min(run_engine(slide, work, cfg) for _ in range(repeats))
    rows = [{"name": "engine.tile --keep-rejected, full patch check", "patches": with_qc[1], "seconds": with_qc[0], "patches/s": with_qc[1] / with_qc[0]},
            {"name": "engine.tile --keep-rejected, no patch check", "patches": without[1], "seconds": without[0], "patches/s": without[1] / without[0]},
            {"name": "check_patches alone on the decoded patches, all cores", "patches": n_checked, "seconds": check_s, "patches/s": n_checked / check_s}]
    figures = {"check: throughput with / without (goal >= 0.85)": (with_qc[1] / with_qc[0]) / (without[1] / without[0]),
               "check alone: seconds / tiling seconds": check_s / with_qc[0]}
    return rows, figures


def main(argv, work: Path, out: Path) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks tiling")
    p.add_argument("--size", type=int, default=20480, help="slide side in pixels (>= 20000 for the reported figures)")
    p.add_argument("--repeats", type=int, default=2, help="timed runs per configuration (the best counts)")
    p.add_argument("--skip-baseline", action="store_true")
    a = p.parse_args(argv)
    work.mkdir(parents=True, exist_ok=True)
    slide = make_slide(work, a.size)
    rows = []
    results = {}
    # Warm-up, untimed: the slide into the page cache, and on a fresh VM the first touch of the
    # memory that stores and buffers use (measured 10x slower than reusing it).
    run_engine(slide, work, TileConfig())
    for backend in ("auto", "cucim", "openslide"):
        cfg = TileConfig(backend=backend)
        seconds, n = min(run_engine(slide, work, cfg) for _ in range(a.repeats))
        results[backend] = n / seconds
        rows.append({"name": f"engine.tile --backend {backend}", "patches": n, "seconds": seconds, "patches/s": n / seconds})
    seconds, n, peak = run_cold(slide, work, a.repeats)
    results["cold"] = n / seconds
    rows.append({"name": "engine.tile command, cold: process start, imports, QA picture", "patches": n, "seconds": seconds,
                 "patches/s": n / seconds, "peak RSS MB": peak})
    store = PatchStore.open(work / "store-auto.zarr")
    coords = store.coords(store.slide_ids()[0])
    cfg = TileConfig()
    if not a.skip_baseline:
        seconds, n = run_baseline(slide, work, cfg)
        results["baseline"] = n / seconds
        rows.append({"name": "baseline: OpenSlide per patch, numpy check, write per patch", "patches": n, "seconds": seconds, "patches/s": n / seconds})
    seconds, ntiles = run_ceiling(slide, coords, cfg.plan.patch_size)
    results["ceiling"] = len(coords) / seconds
    rows.append({"name": f"ceiling: imagecodecs decode of the {ntiles} source tiles, all cores", "patches": len(coords), "seconds": seconds, "patches/s": len(coords) / seconds})
    seconds = run_write_ceiling(work, len(coords), cfg.plan.patch_size)
    rows.append({"name": "write bound: the patches' raw bytes written to the same filesystem", "patches": len(coords), "seconds": seconds, "patches/s": len(coords) / seconds})
    for r in rows:
        r["x baseline"] = r["patches/s"] / results["baseline"] if "baseline" in results else ""
        r["of ceiling"] = r["patches/s"] / results["ceiling"]
    extra = {"slide": f"{slide.name} ({a.size}x{a.size}, 240 px JPEG tiles)"}
    if "baseline" in results:
        extra["goal x baseline >= 4"] = results["auto"] / results["baseline"]
    extra["goal of ceiling >= 0.6"] = results["auto"] / results["ceiling"]
    extra["peak RSS of the tiling command, MB (README bound)"] = peak
    qc_rows, qc_figures = qc_cost(slide, work, a.repeats)
    extra.update(qc_figures)
    extra["store folder"] = str(work.resolve())
    print(report.write(out, "tiling", rows + qc_rows, extra))
    return 0
