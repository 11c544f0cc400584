"""Tile a folder of slides into a patch store: open -> mask -> plan -> read (batched, prefetched)
-> check -> write. `python -m engine.tile --slides DIR --out STORE.zarr [--scheduler ADDRESS]`.

Memory stays bounded whatever the slide size: at most `2 * workers` batches of `batch_size`
patches are in flight, the reader's decoded-tile cache holds four tile rows across the slide
(at most 256 MiB), the thumbnail is read in bands, and the store writer holds less than one shard.
The imports leave out what tiling never calls (cupy, scipy): the first slide starts within 0.5 s
(tests/engine/test_startup.py guards it).
"""
from __future__ import annotations

import argparse
import dataclasses
import functools
import logging
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from engine import __version__, cluster, jobs
from engine.check import check_patches
from engine.qc import REASONS, CheckParams
from engine.discover import fingerprint, slide_files, slide_ids, slide_organs
from engine.errors import run_command, setup_logging
from engine.location import Location, location, open_write, with_suffix
from engine.ink import INK_FAMILIES
from engine.mask import INK, TISSUE, MaskParams, tissue_mask
from engine.patch_plan import Geometry, GridPlan, PatchPlan, mpp_info
from engine.plan import PlanParams
from engine.prefetch import ordered_map
from engine.progress import Progress
from engine.qa import qa_picture
from engine.runtime import reuse_freed_memory
from engine.readers import BACKENDS, open_slide
from engine.slide import Slide, SlideError
from engine.store import Codec, PatchStore

log = logging.getLogger("engine.tile")


@dataclass(frozen=True)
class TileConfig:
    plan: PlanParams = field(default_factory=PlanParams)  # patch size, stride (output pixels), min tissue
    mpp: float | None = None  # target µm/px; None = level 0 as it is
    dct_scaling: bool = True  # with mpp: JPEG tiles decoded at 1/2, 1/4, 1/8 where that is still as sharp
    assume_mpp: float | None = None  # overrides the slide's own (missing or wrong) MPP
    mask_downsample: float = 16.0  # level-0 pixels per mask pixel
    mask: MaskParams = field(default_factory=MaskParams)
    check: CheckParams = field(default_factory=CheckParams)
    keep_rejected: bool = False  # store the patches the check rejects too, with their reasons
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
        patches, ok, errors = slide.read_regions(locs, geom.level, size, geom.scale), np.ones(len(locs), bool), []
    except SlideError:
        patches = np.full((len(locs), *size, 3), 255, np.uint8)
        ok, errors = np.zeros(len(locs), bool), []
        for i, loc in enumerate(locs):
            try:
                patches[i] = slide.read_regions([loc], geom.level, size, geom.scale)[0]
                ok[i] = True
            except SlideError as e:
                errors.append({"x": loc[0], "y": loc[1], "error": str(e).removeprefix(f"{slide.path}: ")})
    if geom.read_size != patch_size:
        patches = _resize(patches, patch_size)
    return patches, ok, errors


WIDE_INK = 0.25  # of a slide's tissue and ink on the mask: more than marker strokes usually cover


def warn_wide_ink(path, mask: np.ndarray) -> None:
    """One line where the mask takes a large part of a slide's tissue for ink: bone, osteoid and blood
    have red ink's colour, and what the mask calls ink is never tiled."""
    ink, tissue = int((mask == INK).sum()), int((mask == TISSUE).sum())
    if ink > WIDE_INK * (ink + tissue):
        log.warning("%s: the mask reads %.0f %% of the tissue as marker ink and tiles none of it; if that is "
                    "dense bone, osteoid or blood rather than ink (see its QA picture), tile with "
                    "--inks green,black,blue", path, 100 * ink / (ink + tissue))


def tile_slide(slide: Slide, slide_id: str, store: PatchStore, cfg: TileConfig, plan: PatchPlan, provenance: dict,
               qa_dir: Location | None = None, progress: bool | None = False) -> tuple[np.ndarray, jobs.Written]:
    """Tile one open slide into its group of `store` as `plan` (engine.patch_plan) says; returns the
    indices, among the patches planned, of those written, in order, and what was written and
    rejected. `progress`: a patch bar (or status lines) as engine.progress.Progress's `show`."""
    info = mpp_info(slide, cfg.assume_mpp)
    geom = plan.geometry(slide, info)
    thumb = slide.thumbnail(cfg.mask_downsample)
    mres = tissue_mask(thumb, cfg.mask)
    warn_wide_ink(slide.path, mres.mask)
    coords = plan.coords(slide, mres.mask, geom)
    attrs = {
        **provenance,
        "backend": slide.backend,
        "size": list(slide.dimensions),
        **info,
        "level": geom.level,
        "downsample": geom.downsample,
        "read_size": geom.read_size,
        "decode_scale": geom.scale,
        "tile0": geom.tile0,
        "stride0": geom.stride0,
        "params": cfg.store_params(),
        "mask_threshold": int(mres.threshold),
        "pen_fraction": float(mres.pen_fraction),
        "n_candidates": int(len(coords)),
    }
    writer = store.begin_slide(slide_id, attrs, capacity=len(coords), codec=cfg.codec, check=cfg.check.to_dict())
    kept, rejected, reasons, failed = [], [], [], []

    def work(start):
        idx = np.arange(start, min(start + cfg.batch_size, len(coords)))
        patches, ok, errors = read_batch(slide, coords[idx], geom, cfg.plan.patch_size)
        qc = check_patches(patches, mres.threshold, cfg.mask, cfg.check)
        rejected = ok & ~plan.keep(qc.passed, ok)
        keep = plan.keep(qc.passed | cfg.keep_rejected, ok)
        # Patch by patch, not patches[keep]: a copy of the batch per worker is 25 MB at the defaults.
        return idx, writer.encode(patches[i] for i in np.flatnonzero(keep)), qc, keep, rejected, errors

    # Batches are read, checked and compressed on worker threads (decoders, the native check and
    # the codec release the GIL) while this thread writes finished ones in order as whole shards;
    # at most 2 x workers batches are in flight.
    with ThreadPoolExecutor(cfg.workers, thread_name_prefix="read") as pool, \
            Progress(len(coords), slide_id, "patch", leave=False, show=progress) as bar:
        for idx, encoded, qc, keep, rej, errors in ordered_map(pool, work, range(0, len(coords), cfg.batch_size),
                                                               2 * cfg.workers):
            writer.append(encoded, coords[idx[keep]], qc.take(keep))
            kept.append(idx[keep])
            rejected.append(idx[rej])
            reasons.append(qc.reasons[rej])
            failed += errors
            bar.update(len(idx))
    # An empty start keeps the dtype where a slide has no batches.
    kept, rejected = np.concatenate([np.zeros(0, np.int64), *kept]), np.concatenate([np.zeros(0, np.int64), *rejected])
    reasons = np.concatenate([np.zeros(0, np.uint8), *reasons])
    # a patch counts under each of its reasons
    rejected_by = {name: int(np.count_nonzero(reasons & bit)) for name, bit in REASONS.items()}
    writer.finish(
        mres.mask,
        {"downsample": [slide.dimensions[0] / mres.mask.shape[1], slide.dimensions[1] / mres.mask.shape[0]],
         "params": dataclasses.asdict(cfg.mask)},
        {"n_rejected": len(rejected), "n_rejected_by": rejected_by, "n_failed": len(failed),
         "failed_patches": failed[:1000]},
    )
    if failed:
        log.warning("%s: %d patch(es) skipped: %s", slide.path, len(failed), failed[0]["error"])
    if qa_dir is not None:
        passed = np.setdiff1d(kept, rejected)  # --keep-rejected writes rejected patches too; they show their reason
        pic = qa_picture(thumb, mres.mask, cfg.mask_downsample, geom.tile0, coords[passed], coords[rejected], reasons,
                         [(f["x"], f["y"]) for f in failed])
        with open_write(qa_dir, f"{slide_id}.png") as f:
            pic.save(f, format="PNG", compress_level=1)  # zlib's default costs 0.15 s a slide
    return kept, jobs.Written(len(kept), len(rejected), rejected_by)


def tile_file(path: Path, slide_id: str, store: PatchStore, cfg: TileConfig, plan: PatchPlan, provenance: dict,
              qa_dir: Location | None = None, progress: bool | None = False) -> tuple[np.ndarray, jobs.Written]:
    """`tile_slide` on the slide file at `path`."""
    reuse_freed_memory()  # here, so that it holds in every process that tiles (Dask workers too)
    t0 = time.perf_counter()
    with open_slide(path, cfg.backend) as slide:
        provenance = {"source": str(path.resolve()), "created_by": f"histogen {__version__}", **provenance}
        kept, written = tile_slide(slide, slide_id, store, cfg, plan, provenance, qa_dir, progress)
    log.info("%s: %d patches in %.1f s", slide_id, len(kept), time.perf_counter() - t0)
    return kept, written


def qa_folder(out: Location, cfg: TileConfig, qa_dir: Location | None) -> Location | None:
    """Where a run's QA pictures go: `qa_dir`, else next to the store unless QA is off."""
    return with_suffix(out, ".qa") if qa_dir is None and cfg.qa else qa_dir


def _tile_one(path: Path, slide_id: str, store: PatchStore, cfg: TileConfig, qa_dir, progress,
              organ: str | None = None) -> jobs.Written | None:
    identity = {"fingerprint": fingerprint(path)}
    if jobs.up_to_date(store, slide_id, path, identity):
        return None
    # The organ (from the fetch's record) rides with the slide's group: the dataset export and
    # organ-conditioned training read it from there.
    provenance = {**identity, **({"organ": organ} if organ else {})}
    return tile_file(path, slide_id, store, cfg, GridPlan(cfg.plan, cfg.mpp, cfg.dct_scaling), provenance, qa_dir,
                     progress)[1]


def tile_slides(slides_dir, out, cfg: TileConfig = TileConfig(), overwrite: bool = False,
                qa_dir: Location | None = None, show_progress: bool | None = None,
                scheduler: cluster.Scheduler | None = None) -> jobs.Summary:
    """Tile every slide under `slides_dir` into the store `out` (a path or a URL), here or with one
    Dask task per slide on `scheduler`; one bad slide never stops the others. Raises a UserError
    (StoreError, SlideFolderError, ClusterError) only for problems that stop the whole run."""
    slides_dir, out = Path(slides_dir), location(out)
    paths = slide_files(slides_dir)
    store = PatchStore.create_or_resume(out, cfg.plan.patch_size, cfg.store_params(), overwrite=overwrite)
    qa_dir = qa_folder(out, cfg, qa_dir)
    bars = jobs.slide_bars(show_progress, scheduler)
    ids, organs = slide_ids(paths, slides_dir), slide_organs(paths, slides_dir)
    todo = [jobs.SlideJob(ids[p], str(p),
                          functools.partial(_tile_one, p, ids[p], store, cfg, qa_dir, bars, organs.get(p)),
                          functools.partial(store.remove_slide, ids[p]))
            for p in paths]
    t0 = time.perf_counter()
    results, ran_on = jobs.run(todo, "tiling", scheduler, show_progress)
    return jobs.Summary(results, time.perf_counter() - t0, out, qa_dir if cfg.qa else None, ran_on)


# -- command line -----------------------------------------------------------------------------------


def add_run_options(p: argparse.ArgumentParser) -> None:
    """The options of every command that reads slides into a store (the tiler, the table import)."""
    d = TileConfig()
    p.add_argument("--assume-mpp", type=float, default=None,
                   help="µm/px to use where a slide's metadata has none or a wrong one")
    p.add_argument("--backend", choices=BACKENDS, default=d.backend)
    p.add_argument("--codec", choices=("zstd", "lz4", "none"), default=d.codec.name)
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--workers", type=int, default=None,
                   help="reader threads per slide (default: all cores, or their share with --scheduler local:N)")
    p.add_argument("--qa-dir", type=location, default=None,
                   help="where QA pictures go, a folder or a URL (default: next to the store)")
    p.add_argument("--no-qa", action="store_true")
    p.add_argument("--overwrite", action="store_true", help="replace a store made with other parameters")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--debug", action="store_true")
    cluster.add_option(p, local="one worker per core")


def run_setup(a: argparse.Namespace, plan: PlanParams, **kw) -> tuple[TileConfig, cluster.Scheduler | None]:
    """The TileConfig and the scheduler of `add_run_options`' arguments."""
    scheduler = (None if a.scheduler is None
                 else cluster.Scheduler.parse(a.scheduler, default_local=lambda: os.cpu_count() or 1))
    if a.workers is not None:
        workers = max(1, a.workers)
    elif scheduler is not None:  # local workers share this machine's cores
        workers = scheduler.cores_per_worker()
    else:
        workers = TileConfig().workers
    cfg = TileConfig(plan=plan, assume_mpp=a.assume_mpp, codec=Codec(a.codec), backend=a.backend,
                     batch_size=a.batch_size, workers=workers, qa=not a.no_qa, **kw)
    return cfg, scheduler


INTERRUPTED = "finished slides are kept; run the same command again to resume"


def parse_args(argv=None) -> argparse.Namespace:
    d = TileConfig()
    p = argparse.ArgumentParser(prog="python -m engine.tile", description=__doc__.split("\n\n")[0])
    p.add_argument("--slides", required=True, type=Path,
                   help="folder of slides (searched recursively; a folder of .dcm files is one DICOM slide)")
    p.add_argument("--out", required=True, type=location,
                   help="patch store to write or resume: STORE.zarr, or a URL (s3://BUCKET/STORE.zarr)")
    p.add_argument("--patch-size", type=int, default=d.plan.patch_size)
    p.add_argument("--stride", type=int, default=None,
                   help="step between patches in output pixels (default: patch size)")
    p.add_argument("--min-tissue", type=float, default=d.plan.min_tissue,
                   help="minimum tissue fraction of a patch on the mask")
    p.add_argument("--mpp", type=float, default=None,
                   help="target µm/px: read the best level and resize (e.g. 0.5 for 20x)")
    p.add_argument("--no-dct-scaling", action="store_true",
                   help="with --mpp, decode JPEG tiles at full size and resize, "
                   "instead of decoding them at 1/2, 1/4 or 1/8 first (slower; same patches within a few grey levels)")
    p.add_argument("--keep-rejected", action="store_true",
                   help="store the patches the check rejects too, with their reasons")
    p.add_argument("--inks", type=ink_families, default=MaskParams().inks, metavar="FAMILIES",
                   help="marker ink families the mask and the check look for, comma-separated (default "
                   f"{','.join(INK_FAMILIES)}); leave red out where dense bone, osteoid or blood reads as red ink")
    add_check_options(p)
    add_run_options(p)
    return p.parse_args(argv)


def ink_families(text: str) -> tuple[str, ...]:
    """--inks: comma-separated families of engine.ink.INK_FAMILIES ('none' or '' for none)."""
    names = tuple(n.strip() for n in text.split(",") if n.strip() and n.strip() != "none")
    try:
        return MaskParams(inks=names).inks
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def add_check_options(p: argparse.ArgumentParser) -> None:
    """A flag per threshold of CheckParams (its min_* and max_* fields: --max-ink, --min-focus, ...),
    or --check-NAME where the plain name is taken (--min-tissue is the mask's)."""
    d = CheckParams()
    for f in dataclasses.fields(CheckParams):
        if not f.name.startswith(("min_", "max_")):
            continue
        kw = dict(type=float, default=None, metavar="VALUE", dest=f"check_{f.name}",
                  help=f"patch check threshold (default {getattr(d, f.name)})")
        try:
            p.add_argument(f"--{f.name.replace('_', '-')}", **kw)
        except argparse.ArgumentError:
            p.add_argument(f"--check-{f.name.replace('_', '-')}", **kw)


def check_params(a: argparse.Namespace) -> CheckParams:
    """The CheckParams of `add_check_options`' arguments (defaults where not given)."""
    given = {f.name: getattr(a, f"check_{f.name}", None) for f in dataclasses.fields(CheckParams)}
    return CheckParams(**{k: v for k, v in given.items() if v is not None})


def main(argv=None) -> int:
    a = parse_args(argv)
    setup_logging(a.debug)

    def job() -> int:
        cfg, scheduler = run_setup(a, PlanParams(a.patch_size, a.stride, a.min_tissue), mpp=a.mpp,
                                   dct_scaling=not a.no_dct_scaling, check=check_params(a),
                                   mask=MaskParams(inks=a.inks), keep_rejected=a.keep_rejected)
        summary = tile_slides(a.slides, a.out, cfg, overwrite=a.overwrite, qa_dir=a.qa_dir,
                              show_progress=False if a.quiet else None, scheduler=scheduler)
        print(summary.text())
        return 1 if summary.count("failed") else 0

    # ValueError: settings out of range (a patch size of 0, a malformed --scheduler)
    return run_command(job, log, INTERRUPTED, errors=(ValueError,))


if __name__ == "__main__":
    sys.exit(main())
