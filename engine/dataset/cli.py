"""`python -m engine.dataset export|import ...`: the command line of engine.dataset."""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

from engine import location
from engine.dataset import __doc__ as DOC
from engine.dataset.export import export_parquet
from engine.dataset.hub import push_to_hub
from engine.dataset.table_import import import_parquet
from engine.encoder_registry import DEFAULT
from engine.errors import run_command, setup_logging
from engine.plan import PlanParams
from engine.tile import INTERRUPTED, TileConfig, add_run_options, run_setup

log = logging.getLogger("engine.dataset")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m engine.dataset", description=DOC.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    e = sub.add_parser("export", help="a store's embeddings to parquet files and a dataset card")
    e.add_argument("--store", required=True, type=location.location,
                   help="patch store with embeddings (STORE.zarr or a URL)")
    e.add_argument("--out", required=True, type=Path, help="folder for data/train-*.parquet and README.md")
    e.add_argument("--organ", default=None,
                   help="organ of every row (default: each slide's own, recorded by engine.fetch or an import, "
                        "else 'unknown')")
    e.add_argument("--encoder", default=DEFAULT, metavar="NAME",
                   help="whose embeddings, a name of engine.encoder_registry (default: %(default)s)")
    e.add_argument("--with-images", action="store_true",
                   help="add an image column: each patch at the model's input size, PNG")
    e.add_argument("--rows-per-file", type=int, default=None,
                   help="rows per parquet file (default: about 500 MB a file)")
    e.add_argument("--push", metavar="REPO_ID", default=None, help="then upload to this Hugging Face dataset repo")
    e.add_argument("--token", default=None, help="Hugging Face token (default: the saved login or HF_TOKEN)")
    e.add_argument("--debug", action="store_true")
    i = sub.add_parser("import", help="a table of the study's format to a patch store, pixels read from the slides")
    i.add_argument("--table", required=True, type=Path, nargs="+", help="parquet file(s) or folder(s) of them")
    i.add_argument("--slides", required=True, type=Path,
                   help="folder holding the table's slides (searched recursively)")
    i.add_argument("--out", required=True, type=location.location,
                   help="patch store to write or resume (STORE.zarr or a URL)")
    i.add_argument("--organ", default=None, help="import only the rows of this organ")
    i.add_argument("--patch-size", type=int, default=TileConfig().plan.patch_size,
                   help="the store's patch size (patches are resized to it)")
    add_run_options(i)
    return p.parse_args(argv)


def export(a: argparse.Namespace) -> int:
    files = export_parquet(a.store, a.out, a.organ, a.with_images, a.rows_per_file, a.encoder)
    print(f"{len(files)} parquet file(s) in {a.out / 'data'}, dataset card {a.out / 'README.md'}")
    if a.push:
        print(f"pushed to {push_to_hub(a.out, a.push, a.token)}")
    return 0


def import_(a: argparse.Namespace) -> int:
    cfg, scheduler = run_setup(a, PlanParams(a.patch_size))
    summary = import_parquet(a.table, a.slides, a.out, cfg, organ=a.organ, overwrite=a.overwrite, qa_dir=a.qa_dir,
                             show_progress=False if a.quiet else None, scheduler=scheduler)
    print(summary.text())
    return 1 if summary.count("failed") else 0


def main(argv=None) -> int:
    a = parse_args(argv)
    setup_logging(a.debug)
    command = export if a.command == "export" else import_
    # OSError: files that cannot be read or written; ValueError: settings out of range
    return run_command(lambda: command(a), log, INTERRUPTED, errors=(OSError, ValueError))
