"""A table of the study's format into a patch store: a group per slide_name, its patches re-read
from the slide at the table's coordinates, then the table's embeddings."""
from __future__ import annotations

import functools
import time
from pathlib import Path

from engine import cluster, jobs, location
from engine.dataset.table import Table, TableSlide
from engine.discover import fingerprint, match_names, slide_files
from engine.encoder_registry import spec
from engine.patch_plan import GivenPlan
from engine.slide import SlideError
from engine.store import PatchStore
from engine.tile import TileConfig, qa_folder, tile_file


def _import_one(entry: TableSlide, matches: list[Path], sid: str, store: PatchStore, cfg: TileConfig,
                slides_dir: Path, qa_dir, progress) -> jobs.Written | None:
    name, label = entry.name, entry.label
    if not matches:
        raise SlideError(f"slide {name} of {label} is not under {slides_dir} (no file named {name} or {name}.<suffix>)",
                         "copy it there or point {slides} at the folder that holds it")
    if len(matches) > 1:
        raise SlideError(f"slide {name} of {label} matches {len(matches)} files under {slides_dir} "
                         f"({', '.join(str(m) for m in matches[:3])})",
                         "point {slides} at a folder holding only one of them")
    path = matches[0]
    rows = entry.read()
    encoder = spec(rows.encoder)  # an unknown name stops the slide here, before it is read
    identity = {"fingerprint": fingerprint(path), "table_rows": rows.digest}
    # Patches and embeddings are written one after the other: a group left without its embeddings
    # by an interrupted run is redone.
    if jobs.up_to_date(store, sid, path, identity) and store.embeddings_attrs(sid, rows.encoder) is not None:
        return None
    provenance = {**identity, "table": label, **({"organ": rows.organ} if rows.organ else {})}
    plan = GivenPlan(rows.coords, rows.level, rows.read_size, cfg.plan.patch_size)
    kept, written = tile_file(path, sid, store, cfg, plan, provenance, qa_dir, progress)
    # An unreadable patch is left out with its embedding (and recorded in failed_patches, as the
    # tiler does): the store's patches and embeddings stay row for row.
    store.write_embeddings(sid, rows.embeddings[kept], {"model": encoder.repo or encoder.name,
                                                        "source": f"imported from {label}",
                                                        "input_size": rows.input_size}, encoder.name)
    return written


def import_parquet(table_paths, slides_dir, out_store, cfg: TileConfig = TileConfig(), organ: str | None = None,
                   overwrite: bool = False, qa_dir: location.Location | None = None, show_progress: bool | None = None,
                   scheduler: cluster.Scheduler | None = None) -> jobs.Summary:
    """Make a patch store from a table of the study's format (parquet files, or folders of them):
    a group per slide_name, its patches read from the slide under `slides_dir` at the table's
    x, y, level and patch_size (resized to `cfg.plan.patch_size`), every row a patch in the table's
    order whatever its tissue, then the table's embeddings; here, or one Dask task per slide on
    `scheduler`. `organ` selects rows. One slide failing (absent, unreadable) never stops the
    others; complete groups are skipped when resumed. Raises a UserError (DatasetError,
    StoreError, SlideFolderError, ClusterError) for what stops the whole run."""
    table = Table(table_paths, organ)
    slides_dir, out = Path(slides_dir), location.location(out_store)
    found = match_names(table.names, slide_files(slides_dir), slides_dir)
    # the table sets where and what to read
    params = {k: v for k, v in cfg.store_params().items() if k not in ("plan", "mpp")}
    params.update(patch_size=cfg.plan.patch_size, coords="table")
    store = PatchStore.create_or_resume(out, cfg.plan.patch_size, params, overwrite=overwrite)
    qa_dir = qa_folder(out, cfg, qa_dir)
    bars = jobs.slide_bars(show_progress, scheduler)
    todo = []
    for name in table.names:
        sid = name.replace("/", "__")
        where = found[name][0] if len(found[name]) == 1 else Path(name)
        work = functools.partial(_import_one, table.slide(name), found[name], sid, store, cfg, slides_dir, qa_dir, bars)
        todo.append(jobs.SlideJob(sid, str(where), work, functools.partial(store.remove_slide, sid)))
    t0 = time.perf_counter()
    results, ran_on = jobs.run(todo, "importing", scheduler, show_progress)
    return jobs.Summary(results, time.perf_counter() - t0, out, qa_dir if cfg.qa else None, ran_on)
