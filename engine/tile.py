"""Tile a folder of slides into a patch store: open -> mask -> plan -> read (batched, prefetched)
-> check -> write. `python -m engine.tile --slides DIR --out STORE.zarr [--scheduler ADDRESS]`.

Memory stays bounded whatever the slide size: at most `2 * workers` batches of `batch_size`
patches are in flight, the reader's decoded-tile cache is capped (256 MiB), the thumbnail
is read in bands, and the store writer holds less than one shard.
"""
from __future__ import annotations

import argparse
import dataclasses
import functools
import logging
import os
import sys
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from engine import __version__, cluster
from engine.check import CheckParams, check_patches
from engine.discover import SLIDE_SUFFIXES, find_slides, fingerprint, slide_ids
from engine.location import Location, location, open_write, with_suffix
from engine.mask import MaskParams, tissue_mask
from engine.runtime import reuse_freed_memory
from engine.prefetch import ordered_map
from engine.plan import PlanParams, plan_tiles
from engine.qa import qa_picture
from engine.slide import BACKENDS, Slide, SlideError, open_slide
from engine.store import Codec, PatchStore, StoreError

log = logging.getLogger("engine.tile")


@dataclass(frozen=True)
class TileConfig:
    plan: PlanParams = field(default_factory=PlanParams)  # patch size, stride (output pixels), min tissue
    mpp: float | None = None  # target µm/px; None = level 0 as it is
    assume_mpp: float | None = None  # overrides the slide's own (missing or wrong) MPP
    mask_downsample: float = 16.0  # level-0 pixels per mask pixel
    mask: MaskParams = field(default_factory=MaskParams)
    check: CheckParams = field(default_factory=CheckParams)
    codec: Codec = field(default_factory=Codec)
    # How it runs (not part of the store's identity):
    backend: str = "auto"
    batch_size: int = 32  # 32 measured 11 % faster than 16 on 2 cores (fewer hand-offs per patch)
    workers: int = field(default_factory=lambda: os.cpu_count() or 1)
    qa: bool = True

    def store_params(self) -> dict:
        """What decides the store's content: a resumed run must match these."""
        d = dataclasses.asdict(self)
        for k in ("backend", "batch_size", "workers", "qa"):
            d.pop(k)
        return d


@dataclass(frozen=True)
class Geometry:
    """Where and how big to read, so that every patch covers the same physical area."""

    level: int
    read_size: int  # pixels read at `level` per patch (resized to patch_size if different)
    tile0: int  # patch side in level-0 pixels
    stride0: int
    downsample: float  # level-0 pixels per output pixel


def mpp_info(slide: Slide, cfg: TileConfig) -> dict:
    """The slide's MPP and where it came from, recorded in the store."""
    mpp = slide.mpp
    if cfg.assume_mpp is not None:
        mpp_x = mpp_y = cfg.assume_mpp
        source = "--assume-mpp"
    elif mpp is not None:
        mpp_x, mpp_y, source = mpp.x, mpp.y, mpp.source
    else:
        mpp_x = mpp_y = None
        source = "missing"
    return {"mpp_x": mpp_x, "mpp_y": mpp_y, "mpp_source": source}


def geometry(slide: Slide, cfg: TileConfig) -> tuple[Geometry, dict]:
    """The read geometry and the MPP provenance recorded in the store."""
    info = mpp_info(slide, cfg)
    mpp_x, mpp_y = info["mpp_x"], info["mpp_y"]
    size = cfg.plan.patch_size
    stride = cfg.plan.stride or size
    if cfg.mpp is None:
        return Geometry(0, size, size, stride, 1.0), info
    if mpp_x is None:
        raise SlideError(f"{slide.path}: no usable MPP in its metadata, but --mpp {cfg.mpp} was asked; pass --assume-mpp VALUE if you know the scan resolution")
    ds = cfg.mpp / ((mpp_x + mpp_y) / 2)
    level = slide.best_level_for_downsample(ds)
    read = round(size * ds / slide.level_downsamples[level])
    return Geometry(level, read, round(size * ds), round(stride * ds), ds), info


@dataclass(frozen=True)
class GivenPatches:
    """Patches to read as they are, instead of planning them: `read_size` px at `level` from each
    level-0 top-left corner in `coords` (N, 2)."""

    coords: np.ndarray
    level: int
    read_size: int

    def geometry(self, slide: Slide, patch_size: int) -> Geometry:
        if not 0 <= self.level < slide.level_count:
            raise SlideError(f"{slide.path}: has no pyramid level {self.level} (levels 0..{slide.level_count - 1})")
        tile0 = round(self.read_size * slide.level_downsamples[self.level])
        return Geometry(self.level, self.read_size, tile0, tile0, tile0 / patch_size)


@dataclass
class SlideResult:
    path: Path
    slide_id: str
    status: str  # done | skipped | failed
    n_patches: int = 0
    seconds: float = 0.0
    error: str = ""


@dataclass
class Summary:
    results: list[SlideResult]
    seconds: float
    store: Location
    qa_dir: Location | None
    ran_on: str = ""  # the Dask cluster, where there was one

    def count(self, status: str) -> int:
        return sum(r.status == status for r in self.results)

    @property
    def n_patches(self) -> int:
        return sum(r.n_patches for r in self.results if r.status == "done")

    def text(self) -> str:
        rate = self.n_patches / self.seconds if self.seconds > 0 else 0.0
        lines = [
            f"slides: {self.count('done')} done, {self.count('failed')} failed, "
            f"{self.count('skipped')} skipped (already complete)",
            f"patches: {self.n_patches} in {self.seconds:.1f} s ({rate:.1f} patches/s)",
            f"store: {self.store}",
        ]
        if self.ran_on:
            lines.append(f"ran on: {self.ran_on}")
        if self.qa_dir is not None:
            lines.append(f"QA pictures: {self.qa_dir}")
        lines += [f"failed: {r.error}" for r in self.results if r.status == "failed"]
        return "\n".join(lines)


def _resize(patches: np.ndarray, size: int) -> np.ndarray:
    from PIL import Image

    out = np.empty((len(patches), size, size, 3), np.uint8)
    for i, p in enumerate(patches):
        out[i] = np.asarray(Image.fromarray(p).resize((size, size), Image.Resampling.LANCZOS))
    return out


def read_batch(slide: Slide, coords: np.ndarray, geom: Geometry, patch_size: int):
    """(patches, ok, errors): a batch read at once; if that fails, patch by patch, so one corrupt
    tile costs only the patches that cover it."""
    locs = [tuple(c) for c in coords.tolist()]
    size = (geom.read_size, geom.read_size)
    try:
        patches, ok, errors = slide.read_regions(locs, geom.level, size), np.ones(len(locs), bool), []
    except SlideError:
        patches = np.full((len(locs), *size, 3), 255, np.uint8)
        ok, errors = np.zeros(len(locs), bool), []
        for i, loc in enumerate(locs):
            try:
                patches[i] = slide.read_region(loc, geom.level, size)
                ok[i] = True
            except SlideError as e:
                errors.append({"x": loc[0], "y": loc[1], "error": str(e).removeprefix(f"{slide.path}: ")})
    if geom.read_size != patch_size:
        patches = _resize(patches, patch_size)
    return patches, ok, errors


def tile_slide(slide: Slide, slide_id: str, store: PatchStore, cfg: TileConfig, provenance: dict,
               qa_dir: Location | None = None, progress=None, given: GivenPatches | None = None) -> np.ndarray:
    """Tile one open slide into its group of `store`; returns the indices, among the patches
    planned (or given), of those written, in order.

    With `given`, exactly those patches are read and every readable one is kept whatever its
    tissue, so that they stay matched to what the caller holds for them (imported embeddings)."""
    if given is None:
        geom, info = geometry(slide, cfg)
    else:
        geom, info = given.geometry(slide, cfg.plan.patch_size), mpp_info(slide, cfg)
    thumb = slide.thumbnail(cfg.mask_downsample)
    mres = tissue_mask(thumb, cfg.mask)
    if given is None:
        coords, _ = plan_tiles(mres.mask, slide.dimensions, geom.tile0, geom.stride0, cfg.plan.min_tissue)
    else:
        coords = np.asarray(given.coords, np.int64).reshape(-1, 2)
    attrs = {
        **provenance,
        "backend": slide.backend,
        "size": list(slide.dimensions),
        **info,
        "level": geom.level,
        "downsample": geom.downsample,
        "read_size": geom.read_size,
        "tile0": geom.tile0,
        "stride0": geom.stride0,
        "params": cfg.store_params(),
        "mask_threshold": int(mres.threshold),
        "pen_fraction": float(mres.pen_fraction),
        "n_candidates": int(len(coords)),
    }
    writer = store.begin_slide(slide_id, attrs, capacity=len(coords), codec=cfg.codec)
    kept, rejected, failed = [], [], []

    def work(start):
        idx = np.arange(start, min(start + cfg.batch_size, len(coords)))
        patches, ok, errors = read_batch(slide, coords[idx], geom, cfg.plan.patch_size)
        fractions, keep = check_patches(patches, mres.threshold, cfg.mask, cfg.check)
        keep = ok if given is not None else keep & ok
        return idx, writer.encode(patches[keep]), fractions, keep, ok, errors

    # Batches are read, checked and compressed on worker threads (decoders, the native check and
    # the codec release the GIL) while this thread writes finished ones in order as whole shards;
    # at most 2 x workers batches are in flight.
    with ThreadPoolExecutor(cfg.workers, thread_name_prefix="read") as pool:
        for idx, encoded, fractions, keep, ok, errors in ordered_map(pool, work, range(0, len(coords), cfg.batch_size), 2 * cfg.workers):
            writer.append(encoded, coords[idx[keep]], fractions[keep])
            kept.append(idx[keep])
            rejected.append(idx[ok & ~keep])
            failed += errors
            if progress is not None:
                progress.update(len(idx))
    kept = np.concatenate(kept) if kept else np.zeros(0, np.int64)
    rejected = np.concatenate(rejected) if rejected else np.zeros(0, np.int64)
    writer.finish(
        mres.mask,
        {"downsample": [slide.dimensions[0] / mres.mask.shape[1], slide.dimensions[1] / mres.mask.shape[0]], "params": dataclasses.asdict(cfg.mask)},
        {"n_rejected": len(rejected), "n_failed": len(failed), "failed_patches": failed[:1000]},
    )
    if failed:
        log.warning("%s: %d patch(es) skipped: %s", slide.path, len(failed), failed[0]["error"])
    if qa_dir is not None:
        pic = qa_picture(thumb, mres.mask, cfg.mask_downsample, geom.tile0, coords[kept], coords[rejected], [(f["x"], f["y"]) for f in failed])
        with open_write(qa_dir, f"{slide_id}.png") as f:
            pic.save(f, format="PNG", compress_level=1)  # zlib's default costs 0.15 s a slide
    return kept


def tile_file(path: Path, slide_id: str, store: PatchStore, cfg: TileConfig, provenance: dict,
              qa_dir: Location | None = None, show_progress: bool | None = None, given: GivenPatches | None = None) -> np.ndarray:
    """`tile_slide` on the slide file at `path`, with a progress bar."""
    from tqdm import tqdm

    reuse_freed_memory()  # here, so that it holds in every process that tiles (Dask workers too)
    disable = None if show_progress is None else not show_progress
    with open_slide(path, cfg.backend) as slide, tqdm(desc=slide_id, unit="patch", leave=False, disable=disable) as bar:
        provenance = {"source": str(path.resolve()), "created_by": f"histogen {__version__}", **provenance}
        return tile_slide(slide, slide_id, store, cfg, provenance, qa_dir, bar, given)


def up_to_date(store: PatchStore, slide_id: str, path: Path, identity: dict) -> bool:
    """Whether the store holds the slide complete from the same input (`identity`: attributes such
    as the file's fingerprint). A complete group made from other input is never replaced silently."""
    if store.status(slide_id) != "complete":
        return False
    old = store.attrs(slide_id)
    changed = [k for k, v in identity.items() if old.get(k) != v]
    if not changed:
        return True
    raise SlideError(f"{path}: changed since it was written into {store.path} ({', '.join(changed)} differ); "
                     "write it into a new --out, or pass --overwrite")


def guarded(path: Path, slide_id: str, job) -> SlideResult:
    """`job()` -> SlideResult for one slide, timed; a bad slide becomes a failed result and one
    log line, never an exception, so that the other slides go on."""
    ts = time.perf_counter()
    try:
        result = job()
    except (SlideError, OSError, ValueError) as e:
        msg = str(e) if str(path) in str(e) else f"{path}: {e}"
        log.error("%s", msg)
        return SlideResult(path, slide_id, "failed", error=msg)
    except Exception as e:  # a bug or an unforeseen file: report it, keep going
        log.error("%s: unexpected %s: %s (run with --debug for the traceback)", path, type(e).__name__, e)
        log.debug("%s", traceback.format_exc())
        return SlideResult(path, slide_id, "failed", error=f"{path}: unexpected {type(e).__name__}: {e}")
    result.seconds = time.perf_counter() - ts
    if result.status == "done":
        log.info("%s: %d patches in %.1f s", slide_id, result.n_patches, result.seconds)
    return result


def slide_files(slides_dir: Path) -> list[Path]:
    """The slides under `slides_dir`; no such folder or no slide in it stops the run."""
    if not slides_dir.is_dir():
        raise FileNotFoundError(f"{slides_dir}: no such folder; point --slides at a folder of slides")
    paths, ignored = find_slides(slides_dir)
    if ignored:
        log.warning("ignoring %d file(s) without a slide suffix: %s", len(ignored), ", ".join(p.name for p in ignored[:5]))
    if not paths:
        raise FileNotFoundError(
            f"{slides_dir}: no slides found (looked for {', '.join(sorted(SLIDE_SUFFIXES))}); point --slides at a folder of slides"
        )
    return paths


def _tile_one(path: Path, slide_id: str, store: PatchStore, cfg: TileConfig, qa_dir, show_progress) -> SlideResult:
    identity = {"fingerprint": fingerprint(path)}
    if up_to_date(store, slide_id, path, identity):
        return SlideResult(path, slide_id, "skipped")
    kept = tile_file(path, slide_id, store, cfg, identity, qa_dir, show_progress)
    return SlideResult(path, slide_id, "done", len(kept))


def tile_slides(slides_dir, out, cfg: TileConfig = TileConfig(), overwrite: bool = False,
                qa_dir: Location | None = None, show_progress: bool | None = None,
                scheduler: cluster.Scheduler | None = None) -> Summary:
    """Tile every slide under `slides_dir` into the store `out` (a path or a URL), here or with one
    Dask task per slide on `scheduler`; one bad slide never stops the others. Raises
    StoreError/FileNotFoundError/ClusterError only for problems that stop the whole run."""
    from tqdm import tqdm

    slides_dir, out = Path(slides_dir), location(out)
    paths = slide_files(slides_dir)
    store = PatchStore.create_or_resume(out, cfg.plan.patch_size, cfg.store_params(), overwrite=overwrite)
    if qa_dir is None and cfg.qa:
        qa_dir = with_suffix(out, ".qa")
    ids = slide_ids(paths, slides_dir)
    by_id = {ids[p]: p for p in paths}
    bars = show_progress if scheduler is None else False  # a worker's per-slide bars would go to its log
    jobs = {sid: functools.partial(guarded, p, sid, functools.partial(_tile_one, p, sid, store, cfg, qa_dir, bars))
            for sid, p in by_id.items()}
    t0, ran_on = time.perf_counter(), ""
    if scheduler is None:
        disable = None if show_progress is None else not show_progress
        results = [job() for job in tqdm(jobs.values(), desc="slides", unit="slide", disable=disable)]
    else:
        def died(sid: str, why: str) -> SlideResult:
            return SlideResult(by_id[sid], sid, "failed", error=f"{by_id[sid]}: {why} while tiling it (out of memory, or killed); "
                               "check the workers' logs, then run the same command again to retry it")

        with cluster.connect(scheduler) as client:
            ran_on = cluster.describe(client, scheduler)
            done = cluster.run(client, scheduler, jobs, died, show_progress)
        results = [done[sid] for sid in jobs]
    return Summary(results, time.perf_counter() - t0, out, qa_dir if cfg.qa else None, ran_on)


def add_run_options(p: argparse.ArgumentParser) -> None:
    """The options of every command that reads slides into a store (the tiler, the table import)."""
    d = TileConfig()
    p.add_argument("--assume-mpp", type=float, default=None, help="µm/px to use where a slide's metadata has none or a wrong one")
    p.add_argument("--backend", choices=BACKENDS, default=d.backend)
    p.add_argument("--codec", choices=("zstd", "lz4", "none"), default=d.codec.name)
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--workers", type=int, default=None, help="reader threads per slide (default: all cores, or their share with --scheduler local:N)")
    p.add_argument("--qa-dir", type=location, default=None, help="where QA pictures go, a folder or a URL (default: next to the store)")
    p.add_argument("--no-qa", action="store_true")
    p.add_argument("--overwrite", action="store_true", help="replace a store made with other parameters")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--debug", action="store_true")


def run_config(a: argparse.Namespace, plan: PlanParams, **kw) -> TileConfig:
    """The TileConfig of `add_run_options`' arguments."""
    workers = TileConfig().workers if a.workers is None else max(1, a.workers)
    return TileConfig(plan=plan, assume_mpp=a.assume_mpp, codec=Codec(a.codec), backend=a.backend,
                      batch_size=a.batch_size, workers=workers, qa=not a.no_qa, **kw)


def parse_args(argv=None) -> argparse.Namespace:
    d = TileConfig()
    p = argparse.ArgumentParser(prog="python -m engine.tile", description=__doc__.split("\n\n")[0])
    p.add_argument("--slides", required=True, type=Path, help="folder of slides (searched recursively)")
    p.add_argument("--out", required=True, type=location, help="patch store to write or resume: STORE.zarr, or a URL (s3://BUCKET/STORE.zarr)")
    p.add_argument("--patch-size", type=int, default=d.plan.patch_size)
    p.add_argument("--stride", type=int, default=None, help="step between patches in output pixels (default: patch size)")
    p.add_argument("--min-tissue", type=float, default=d.plan.min_tissue, help="minimum tissue fraction of a patch on the mask")
    p.add_argument("--mpp", type=float, default=None, help="target µm/px: read the best level and resize (e.g. 0.5 for 20x)")
    add_run_options(p)
    cluster.add_option(p, local="one worker per core")
    return p.parse_args(argv)


def main(argv=None) -> int:
    a = parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if a.debug else logging.INFO, format="%(levelname)s %(message)s")
    try:
        cfg = run_config(a, PlanParams(a.patch_size, a.stride, a.min_tissue), mpp=a.mpp)
        scheduler = None if a.scheduler is None else cluster.Scheduler.parse(a.scheduler, default_local=lambda: os.cpu_count() or 1)
    except ValueError as e:
        log.error("%s", e)
        return 2
    if scheduler is not None and a.workers is None:  # local workers share this machine's cores
        cfg = dataclasses.replace(cfg, workers=scheduler.cores_per_worker())
    try:
        summary = tile_slides(a.slides, a.out, cfg, overwrite=a.overwrite, qa_dir=a.qa_dir,
                              show_progress=False if a.quiet else None, scheduler=scheduler)
    except (StoreError, FileNotFoundError, cluster.ClusterError) as e:
        log.error("%s", e)
        return 2
    except KeyboardInterrupt:
        log.error("interrupted: finished slides are kept; run the same command again to resume")
        return 130
    print(summary.text())
    return 1 if summary.count("failed") else 0


if __name__ == "__main__":
    sys.exit(main())
