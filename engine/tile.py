"""Tile a folder of slides into a patch store: open -> mask -> plan -> read (batched, prefetched)
-> check -> write. `python -m engine.tile --slides DIR --out STORE.zarr`.

Memory stays bounded whatever the slide size: at most `2 * workers` batches of `batch_size`
patches are in flight, the reader's decoded-tile cache is capped (256 MiB), the thumbnail
is read in bands, and the store writer holds less than one shard.
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
import time
import traceback
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from engine import __version__
from engine.check import CheckParams, check_patches
from engine.discover import SLIDE_SUFFIXES, find_slides, fingerprint, slide_ids
from engine.mask import MaskParams, tissue_mask
from engine.memory import reuse_freed_memory
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


def geometry(slide: Slide, cfg: TileConfig) -> tuple[Geometry, dict]:
    """The read geometry and the MPP provenance recorded in the store."""
    mpp = slide.mpp
    if cfg.assume_mpp is not None:
        mpp_x = mpp_y = cfg.assume_mpp
        source = "--assume-mpp"
    elif mpp is not None:
        mpp_x, mpp_y, source = mpp.x, mpp.y, mpp.source
    else:
        mpp_x = mpp_y = None
        source = "missing"
    info = {"mpp_x": mpp_x, "mpp_y": mpp_y, "mpp_source": source}
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
    store: Path
    qa_dir: Path | None

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
               qa_dir: Path | None = None, progress=None) -> int:
    """Tile one open slide into its group of `store`; returns the number of patches written."""
    geom, mpp_info = geometry(slide, cfg)
    thumb = slide.thumbnail(cfg.mask_downsample)
    mres = tissue_mask(thumb, cfg.mask)
    coords, _ = plan_tiles(mres.mask, slide.dimensions, geom.tile0, geom.stride0, cfg.plan.min_tissue)
    attrs = {
        **provenance,
        "backend": slide.backend,
        "size": list(slide.dimensions),
        **mpp_info,
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
    batches = [coords[i : i + cfg.batch_size] for i in range(0, len(coords), cfg.batch_size)]
    kept, rejected, failed = [], [], []

    def work(batch):
        patches, ok, errors = read_batch(slide, batch, geom, cfg.plan.patch_size)
        fractions, keep = check_patches(patches, mres.threshold, cfg.mask, cfg.check)
        keep &= ok
        return batch, writer.encode(patches[keep]), fractions, keep, ok, errors

    # Batches are read, checked and compressed on worker threads (decoders, the native check and
    # the codec release the GIL) while this thread writes finished ones in order as whole shards;
    # the deque bounds what is in flight.
    with ThreadPoolExecutor(cfg.workers, thread_name_prefix="read") as pool:
        pending: deque = deque()
        it = iter(batches)
        for b in it:
            pending.append(pool.submit(work, b))
            if len(pending) >= 2 * cfg.workers:
                break
        while pending:
            batch, encoded, fractions, keep, ok, errors = pending.popleft().result()
            nxt = next(it, None)
            if nxt is not None:
                pending.append(pool.submit(work, nxt))
            writer.append(encoded, batch[keep], fractions[keep])
            kept.append(batch[keep])
            rejected.append(batch[ok & ~keep])
            failed += errors
            if progress is not None:
                progress.update(len(batch))
    n = writer.finish(
        mres.mask,
        {"downsample": [slide.dimensions[0] / mres.mask.shape[1], slide.dimensions[1] / mres.mask.shape[0]], "params": dataclasses.asdict(cfg.mask)},
        {"n_rejected": int(sum(len(r) for r in rejected)), "n_failed": len(failed), "failed_patches": failed[:1000]},
    )
    if failed:
        log.warning("%s: %d patch(es) skipped: %s", slide.path, len(failed), failed[0]["error"])
    if qa_dir is not None:
        qa_dir.mkdir(parents=True, exist_ok=True)
        pic = qa_picture(thumb, mres.mask, cfg.mask_downsample, geom.tile0, np.concatenate(kept) if kept else [],
                         np.concatenate(rejected) if rejected else [], [(f["x"], f["y"]) for f in failed])
        pic.save(qa_dir / f"{slide_id}.png", compress_level=1)  # zlib's default costs 0.15 s a slide
    return n


def tile_slides(slides_dir, out, cfg: TileConfig = TileConfig(), overwrite: bool = False,
                qa_dir: Path | None = None, show_progress: bool | None = None) -> Summary:
    """Tile every slide under `slides_dir` into the store `out`; one bad slide never stops the
    others. Raises StoreError/FileNotFoundError only for problems that stop the whole run."""
    from tqdm import tqdm

    slides_dir, out = Path(slides_dir), Path(out)
    if not slides_dir.is_dir():
        raise FileNotFoundError(f"{slides_dir}: no such folder; point --slides at a folder of slides")
    paths, ignored = find_slides(slides_dir)
    if ignored:
        log.warning("ignoring %d file(s) without a slide suffix: %s", len(ignored), ", ".join(p.name for p in ignored[:5]))
    if not paths:
        raise FileNotFoundError(
            f"{slides_dir}: no slides found (looked for {', '.join(sorted(SLIDE_SUFFIXES))}); point --slides at a folder of slides"
        )
    store = PatchStore.create_or_resume(out, cfg.plan.patch_size, cfg.store_params(), overwrite=overwrite)
    reuse_freed_memory()
    if qa_dir is None and cfg.qa:
        qa_dir = out.with_suffix(".qa")
    ids = slide_ids(paths, slides_dir)
    disable = None if show_progress is None else not show_progress
    results, t0 = [], time.perf_counter()
    for path in tqdm(paths, desc="slides", unit="slide", disable=disable):
        sid, ts = ids[path], time.perf_counter()
        try:
            fp = fingerprint(path)
            if store.status(sid) == "complete":
                if store.attrs(sid).get("fingerprint") == fp:
                    results.append(SlideResult(path, sid, "skipped", 0))
                    continue
                raise SlideError(f"{path}: changed since it was tiled into {out}; tile it into a new --out, or pass --overwrite")
            with open_slide(path, cfg.backend) as slide, tqdm(desc=sid, unit="patch", leave=False, disable=disable) as bar:
                provenance = {"source": str(path.resolve()), "fingerprint": fp, "created_by": f"histogen {__version__}"}
                n = tile_slide(slide, sid, store, cfg, provenance, qa_dir, bar)
            results.append(SlideResult(path, sid, "done", n, time.perf_counter() - ts))
            log.info("%s: %d patches in %.1f s", sid, n, time.perf_counter() - ts)
        except (SlideError, OSError, ValueError) as e:
            msg = str(e) if str(path) in str(e) else f"{path}: {e}"
            log.error("%s", msg)
            results.append(SlideResult(path, sid, "failed", error=msg))
        except Exception as e:  # a bug or an unforeseen file: report it, keep going
            log.error("%s: unexpected %s: %s (run with --debug for the traceback)", path, type(e).__name__, e)
            log.debug("%s", traceback.format_exc())
            results.append(SlideResult(path, sid, "failed", error=f"{path}: unexpected {type(e).__name__}: {e}"))
    return Summary(results, time.perf_counter() - t0, out, qa_dir if cfg.qa else None)


def parse_args(argv=None) -> argparse.Namespace:
    d = TileConfig()
    p = argparse.ArgumentParser(prog="python -m engine.tile", description=__doc__.split("\n\n")[0])
    p.add_argument("--slides", required=True, type=Path, help="folder of slides (searched recursively)")
    p.add_argument("--out", required=True, type=Path, help="patch store to write or resume (STORE.zarr)")
    p.add_argument("--patch-size", type=int, default=d.plan.patch_size)
    p.add_argument("--stride", type=int, default=None, help="step between patches in output pixels (default: patch size)")
    p.add_argument("--min-tissue", type=float, default=d.plan.min_tissue, help="minimum tissue fraction of a patch on the mask")
    p.add_argument("--mpp", type=float, default=None, help="target µm/px: read the best level and resize (e.g. 0.5 for 20x)")
    p.add_argument("--assume-mpp", type=float, default=None, help="µm/px to use where a slide's metadata has none or a wrong one")
    p.add_argument("--backend", choices=BACKENDS, default=d.backend)
    p.add_argument("--codec", choices=("zstd", "lz4", "none"), default=d.codec.name)
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--workers", type=int, default=d.workers)
    p.add_argument("--qa-dir", type=Path, default=None, help="where QA pictures go (default: next to the store)")
    p.add_argument("--no-qa", action="store_true")
    p.add_argument("--overwrite", action="store_true", help="replace a store made with other parameters")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--debug", action="store_true")
    return p.parse_args(argv)


def main(argv=None) -> int:
    a = parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if a.debug else logging.INFO, format="%(levelname)s %(message)s")
    try:
        plan = PlanParams(a.patch_size, a.stride, a.min_tissue)
    except ValueError as e:
        log.error("%s", e)
        return 2
    cfg = TileConfig(
        plan=plan, mpp=a.mpp, assume_mpp=a.assume_mpp,
        codec=Codec(a.codec), backend=a.backend, batch_size=a.batch_size, workers=max(1, a.workers), qa=not a.no_qa,
    )
    try:
        summary = tile_slides(a.slides, a.out, cfg, overwrite=a.overwrite, qa_dir=a.qa_dir, show_progress=False if a.quiet else None)
    except (StoreError, FileNotFoundError) as e:
        log.error("%s", e)
        return 2
    except KeyboardInterrupt:
        log.error("interrupted: finished slides are kept; run the same command again to resume")
        return 130
    print(summary.text())
    return 1 if summary.count("failed") else 0


if __name__ == "__main__":
    sys.exit(main())
