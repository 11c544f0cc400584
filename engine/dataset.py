"""The Path Foundation study's dataset format, both ways: a patch store's embeddings out to parquet
files that `datasets` and the Hugging Face Hub read, and such a table into a patch store, the pixels
re-read from the slides at the table's coordinates.

    python -m engine.dataset export --store S.zarr --out DIR [--organ O] [--with-images] [--push REPO_ID]
    python -m engine.dataset import --table T.parquet|DIR --slides DIR --out S.zarr

One row per patch: organ, slide_name, x and y (level-0 top-left corner), level, patch_size ([w, h]
pixels read at that level), resize ([w, h] input of the model), image_embedding_vector ((1, D)
float32, nested as in the study); optionally image (the model input as PNG), otherwise no pixels.
"""
from __future__ import annotations

import argparse
import functools
import hashlib
import io
import json
import logging
import math
import os
import shutil
import sys
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from engine import location
from engine.discover import fingerprint, match_names
from engine.errors import UserError
from engine.plan import PlanParams
from engine.slide import SlideError
from engine.store import PatchStore, StoreError
from engine.tile import (
    GivenPatches,
    SlideResult,
    Summary,
    TileConfig,
    add_run_options,
    guarded,
    run_config,
    slide_files,
    tile_file,
    up_to_date,
)

log = logging.getLogger("engine.dataset")

MODEL = "google/path-foundation"
INPUT_SIZE = 224  # Path Foundation's input, where neither the embeddings nor a table say
REQUIRED = ("slide_name", "x", "y", "level", "patch_size")
EMBEDDING_COLUMNS = ("image_embedding_vector", "embedding_vector")  # the study's name, then some re-uploads'
# About 500 MB a file, as datasets' own push_to_hub shards: a row is ~1.6 KB, ~100 KB with its PNG.
ROWS_PER_FILE, ROWS_PER_FILE_WITH_IMAGES = 250_000, 5_000


class DatasetError(UserError, ValueError):
    """A table or an export that cannot be used or made as asked; the message says what to do."""


# -- the schema: Hugging Face features, and the arrow types and card YAML derived from them --------


def _value(dtype: str) -> dict:
    return {"dtype": dtype, "_type": "Value"}


def _list(feature: dict) -> dict:
    return {"feature": feature, "_type": "List"}


FEATURES = {
    "organ": _value("string"),
    "slide_name": _value("string"),
    "x": _value("int64"),
    "y": _value("int64"),
    "level": _value("int64"),
    "patch_size": _list(_value("int64")),
    "resize": _list(_value("int64")),
    "image_embedding_vector": _list(_list(_value("float32"))),
}
IMAGE = {"_type": "Image"}  # {"bytes": PNG, "path": None}; datasets decodes it to a PIL image
_ARROW = {"string": pa.string(), "int64": pa.int64(), "float32": pa.float32()}


def _arrow_type(f: dict) -> pa.DataType:
    if f["_type"] == "Value":
        return _ARROW[f["dtype"]]
    if f["_type"] == "List":
        return pa.list_(_arrow_type(f["feature"]))
    return pa.struct([("bytes", pa.binary()), ("path", pa.string())])


def _card_type(f: dict) -> dict:
    """A feature as a dataset card's `dataset_info.features` writes it (as datasets does)."""
    if f["_type"] == "Value":
        return {"dtype": f["dtype"]}
    if f["_type"] == "List":
        inner = _card_type(f["feature"])
        return {"list": inner.get("dtype", inner)}
    return {"dtype": "image"}


def features(with_images: bool) -> dict:
    return {**FEATURES, **({"image": IMAGE} if with_images else {})}


def schema(with_images: bool) -> pa.Schema:
    """The arrow schema, carrying the features where datasets looks for them (so that `image`
    decodes to a PIL image)."""
    feats = features(with_images)
    meta = {"huggingface": json.dumps({"info": {"features": feats}})}
    return pa.schema([(name, _arrow_type(f)) for name, f in feats.items()], metadata=meta)


# -- export -----------------------------------------------------------------------------------------


def _lists(a: np.ndarray) -> pa.Array:
    """An (n, k, ...) array as nested arrow lists of the same shape, without a Python object per value."""
    arr = pa.array(a.reshape(-1))
    for k in reversed(a.shape[1:]):
        arr = pa.ListArray.from_arrays(pa.array(np.arange(0, len(arr) + 1, k, dtype=np.int32)), arr)
    return arr


def _png(patch: np.ndarray, size: int) -> dict:
    from PIL import Image

    buf = io.BytesIO()
    # PIL's bilinear resize widens its kernel when it shrinks: antialiased, as the model's input is made.
    Image.fromarray(patch).resize((size, size), Image.Resampling.BILINEAR).save(buf, format="PNG")
    return {"bytes": buf.getvalue(), "path": None}


def _slide_batches(store: PatchStore, sid: str, organ: str | None, sch: pa.Schema, chunk: int, pool):
    """The slide's rows as record batches of at most `chunk` rows: one slide's embeddings and
    `chunk` patches in memory at a time."""
    g, attrs = store.slide(sid), store.attrs(sid)
    emb, coords = store.embeddings(sid), g["coords"][:]
    size = int(store.embeddings_attrs(sid).get("input_size", INPUT_SIZE))
    organ = organ or attrs.get("organ") or "unknown"
    n, d = emb.shape
    for i in range(0, n, chunk):
        j = min(n, i + chunk)
        m = j - i
        cols = {
            "organ": pa.array([organ] * m, pa.string()),
            "slide_name": pa.array([sid] * m, pa.string()),
            "x": pa.array(np.ascontiguousarray(coords[i:j, 0])),
            "y": pa.array(np.ascontiguousarray(coords[i:j, 1])),
            "level": pa.array(np.full(m, attrs["level"], np.int64)),
            "patch_size": _lists(np.full((m, 2), attrs["read_size"], np.int64)),
            "resize": _lists(np.full((m, 2), size, np.int64)),
            "image_embedding_vector": _lists(emb[i:j].astype(np.float32, copy=False).reshape(m, 1, d)),
        }
        if "image" in sch.names:
            pngs = list(pool.map(functools.partial(_png, size=size), g["images"][i:j]))
            cols["image"] = pa.array(pngs, sch.field("image").type)
        yield pa.record_batch([cols[name] for name in sch.names], schema=sch)


def _card(store_path: location.Location, slides: list[str], n_rows: int, n_bytes: int, files: list[Path], with_images: bool, models: list[str]) -> str:
    import yaml

    meta = {
        "configs": [{"config_name": "default", "data_files": [{"split": "train", "path": "data/train-*"}]}],
        "dataset_info": {
            "features": [{"name": name, **_card_type(f)} for name, f in features(with_images).items()],
            "splits": [{"name": "train", "num_bytes": n_bytes, "num_examples": n_rows}],
            "download_size": sum(f.stat().st_size for f in files),
            "dataset_size": n_bytes,
        },
    }
    image = ", and `image`: the patch resized to the model's input (PNG)" if with_images else ""
    return (
        f"---\n{yaml.safe_dump(meta, sort_keys=False)}---\n\n"
        f"# Patch embeddings from {location.name(store_path)}\n\n"
        f"{n_rows} patches of {len(slides)} slide(s), embedded with {', '.join(models)}, exported by histogen "
        "(`python -m engine.dataset export`) in the format of the Path Foundation study's dataset. One row per "
        "patch: `organ`, `slide_name`, `x` and `y` (level-0 top-left corner), `level` and `patch_size` "
        "(pixels read at that pyramid level), `resize` (the model's input size), `image_embedding_vector` "
        f"(1 x D float32){image}.\n\n"
        "```python\nfrom datasets import load_dataset\n"
        'ds = load_dataset("parquet", data_dir="data", split="train")\n```\n'
    )


def export_parquet(store_path, out_dir, organ: str | None = None, with_images: bool = False,
                   rows_per_file: int | None = None) -> list[Path]:
    """Write the store's slides that have complete embeddings to `out_dir/data/train-*.parquet`
    (one row per patch, slide after slide, in patch order) and a dataset card `out_dir/README.md`.
    `organ`: every row's organ (default: each slide's own, recorded by an import, else "unknown").
    Returns the parquet files. The files replace an earlier export's only once all are written."""
    store_path, out_dir = location.location(store_path), Path(out_dir)
    store = PatchStore.open(store_path)
    slides = store.slide_ids()
    ready = [s for s in slides if store.embeddings_attrs(s) is not None]
    if not ready:
        raise DatasetError(f"{store_path}: no slide has embeddings; run python -m engine.embed --store {store_path} first")
    if len(ready) < len(slides):
        left = [s for s in slides if s not in ready]
        log.warning("%s: %d slide(s) without embeddings left out (%s); run python -m engine.embed --store %s to add them",
                    store_path, len(left), ", ".join(left[:5]) + (", ..." if len(left) > 5 else ""), store_path)
    if rows_per_file is not None and rows_per_file < 1:
        raise DatasetError(f"--rows-per-file must be at least 1, got {rows_per_file}")
    per_file = rows_per_file or (ROWS_PER_FILE_WITH_IMAGES if with_images else ROWS_PER_FILE)
    total = sum(int(store.attrs(s)["n_patches"]) for s in ready)
    n_files = max(1, math.ceil(total / per_file))
    names = [f"train-{i:05d}-of-{n_files:05d}.parquet" for i in range(n_files)]
    partial = out_dir / ".export-partial"  # hidden: neither datasets nor an upload picks it up
    shutil.rmtree(partial, ignore_errors=True)  # what a killed export left
    partial.mkdir(parents=True)
    sch = schema(with_images)
    files, writer, room, n_bytes = iter(names), None, 0, 0
    try:
        with ThreadPoolExecutor(os.cpu_count() or 1) as pool:
            for sid in ready:
                for batch in _slide_batches(store, sid, organ, sch, 64 if with_images else 8192, pool):
                    while batch.num_rows:
                        if room == 0:  # the next file
                            if writer is not None:
                                writer.close()
                            writer, room = pq.ParquetWriter(partial / next(files), sch), per_file
                        part = batch.slice(0, room)
                        writer.write_batch(part)
                        n_bytes += part.nbytes  # in memory, as datasets counts a split's num_bytes
                        room -= part.num_rows
                        batch = batch.slice(part.num_rows)
    finally:
        if writer is not None:
            writer.close()
    for name in files:  # only with no rows at all: an empty file still carries the schema
        pq.ParquetWriter(partial / name, sch).close()
    data = out_dir / "data"
    data.mkdir(exist_ok=True)
    for old in data.glob("train-*.parquet"):
        old.unlink()
    for name in names:
        (partial / name).replace(data / name)
    partial.rmdir()
    models = sorted({str(store.embeddings_attrs(s).get("model", MODEL)) for s in ready})
    paths = [data / name for name in names]
    (out_dir / "README.md").write_text(_card(store_path, ready, total, n_bytes, paths, with_images, models))
    log.info("%s: %d rows of %d slide(s) in %d file(s) under %s", store_path, total, len(ready), n_files, data)
    return paths


def push_to_hub(out_dir, repo_id: str, token: str | None = None) -> str:
    """Upload an export (card and parquet files, replacing the repo's earlier ones) to the Hub
    dataset `repo_id`, made if needed; returns its URL."""
    import httpx2  # huggingface_hub's HTTP client
    from huggingface_hub import HfApi

    out_dir = Path(out_dir)
    if not (out_dir / "README.md").is_file() or not any((out_dir / "data").glob("train-*.parquet")):
        raise DatasetError(f"{out_dir}: no export there; run python -m engine.dataset export --out {out_dir} first")
    api = HfApi(token=token)
    try:
        url = api.create_repo(repo_id, repo_type="dataset", exist_ok=True)
        api.upload_folder(folder_path=out_dir, repo_id=repo_id, repo_type="dataset", allow_patterns=["README.md", "data/*.parquet"],
                          delete_patterns=["data/*.parquet"], commit_message="histogen export")
    # Offline mode, refused connections, HTTP errors (unauthorised, not found) and a missing token are
    # OSErrors or httpx2 errors; a malformed repo id is a ValueError.
    except (OSError, ValueError, httpx2.HTTPError) as e:
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise DatasetError(f"cannot push {out_dir} to the Hub dataset {repo_id}: {reason}; "
                           "check the network and your token (hf auth login, or HF_TOKEN)") from e
    return str(url)


# -- import -----------------------------------------------------------------------------------------


def _array(col, what: str) -> np.ndarray:
    """A column as an (n, ...) array: list columns (any nesting) become axes; every row must have
    the same shape and no value may be missing."""
    arr = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    shape = [len(arr)]
    while pa.types.is_list(arr.type) or pa.types.is_large_list(arr.type) or pa.types.is_fixed_size_list(arr.type):
        lengths = pc.min_max(pc.list_value_length(arr))
        lo, hi = lengths["min"].as_py(), lengths["max"].as_py()
        if arr.null_count or lo != hi:
            raise DatasetError(f"{what}: rows of different lengths or missing; every row must have the same shape")
        shape.append(hi or 0)
        arr = pc.list_flatten(arr)
    if arr.null_count:
        raise DatasetError(f"{what}: {arr.null_count} missing value(s)")
    return arr.to_numpy(zero_copy_only=False).reshape(shape)


def _numbers(col, what: str, ndim: int) -> np.ndarray:
    a = _array(col, what)
    if a.dtype.kind not in "iu":
        raise DatasetError(f"{what}: expected integers, got {col.type}")
    if ndim == 2 and a.ndim == 1:  # a single number for a square size
        a = np.stack([a, a], axis=1)
    if a.ndim != ndim or (ndim == 2 and a.shape[1] != 2):
        raise DatasetError(f"{what}: expected {'[width, height]' if ndim == 2 else 'one number'} per row, got shape {a.shape[1:]}")
    return a.astype(np.int64)


def _embedding_rows(col, what: str) -> np.ndarray:
    a = _array(col, what)
    if a.ndim == 3 and a.shape[1] == 1:  # (1, D) per row, as in the study
        a = a[:, 0]
    if a.ndim != 2 or a.dtype.kind != "f":
        raise DatasetError(f"{what}: expected (1, D) or (D,) floats per row, got {col.type} of shape {a.shape[1:]}")
    return a.astype(np.float32)


def _parquet_files(paths: list[Path]) -> list[Path]:
    files = []
    for p in paths:
        if p.is_dir():
            found = sorted(f for f in p.rglob("*.parquet") if not any(part.startswith(".") for part in f.relative_to(p).parts))
            if not found:
                raise DatasetError(f"{p}: no .parquet files in this folder; point --table at a parquet file or a folder of them")
            files += found
        elif p.is_file():
            files.append(p)
        else:
            raise DatasetError(f"{p}: no such file or folder; point --table at a parquet file or a folder of them")
    return files


@dataclass(frozen=True)
class SlideRows:
    """One slide's rows of a table, in the table's order."""

    coords: np.ndarray  # (n, 2) int64 level-0 x, y
    level: int
    read_size: int
    input_size: int
    organ: str | None
    embeddings: np.ndarray  # (n, D) float32

    @property
    def digest(self) -> str:
        """What the store records to recognise these rows again when a run is resumed."""
        h = hashlib.sha256(self.coords.tobytes())
        h.update(np.array([self.level, self.read_size, self.input_size], np.int64).tobytes())
        h.update(self.embeddings.tobytes())
        return h.hexdigest()[:32]


class Table:
    """A table of the study's format, read for import: its small columns in memory, the embeddings
    read slide by slide from the row groups that hold them (a table sorted by slide, as the study's
    and our exports are, is read once), never an image column."""

    def __init__(self, paths, organ: str | None = None):
        paths = [Path(p) for p in ([paths] if isinstance(paths, (str, Path)) else paths)]
        self.files = _parquet_files(paths)
        self.label = ", ".join(map(str, paths))
        self.embedding_column: list[str] = []
        parts = []
        for fi, path in enumerate(self.files):
            try:
                pf = pq.ParquetFile(path)
            except (OSError, pa.ArrowException) as e:
                raise DatasetError(f"{path}: not a readable parquet file ({e})") from e
            with pf:
                parts += self._index(pf, path, fi, organ)
        if not parts:
            raise DatasetError(f"{self.label}: no rows")
        cols = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
        if organ is not None:
            cols = {k: v[cols["organ"] == organ] for k, v in cols.items()}
            if not len(cols["x"]):
                raise DatasetError(f"{self.label}: no rows of organ {organ!r}")
        self.cols = cols
        first, inverse = np.unique(cols["slide_name"], return_index=True, return_inverse=True)[1:]
        by_slide = np.split(np.argsort(inverse, kind="stable"), np.cumsum(np.bincount(inverse))[:-1])
        order = np.argsort(first)  # slides in the order the table first names them
        self.names = [str(cols["slide_name"][first[k]]) for k in order]
        self.rows = {name: by_slide[k] for name, k in zip(self.names, order)}

    def _index(self, pf: pq.ParquetFile, path: Path, fi: int, organ: str | None) -> list[dict]:
        """The small columns of every row group of one file, with where each row lies."""
        names = pf.schema_arrow.names
        emb = next((c for c in EMBEDDING_COLUMNS if c in names), None)
        missing = [c for c in REQUIRED if c not in names] + ([] if emb else [EMBEDDING_COLUMNS[0]])
        if organ is not None and "organ" not in names:
            missing.append("organ (to select --organ)")
        if missing:
            raise DatasetError(f"{path}: missing column(s) {', '.join(missing)}; a table of the Path Foundation study's "
                               "format has slide_name, x, y, level, patch_size and image_embedding_vector")
        self.embedding_column.append(emb)
        columns = [c for c in (*REQUIRED, "resize", "organ") if c in names]
        what = functools.partial("{}: column {}".format, path)
        parts = []
        for gi in range(pf.num_row_groups):
            t = pf.read_row_group(gi, columns=columns)
            n = t.num_rows
            if not n:
                continue
            has = t.column_names
            parts.append({
                "slide_name": _array(t["slide_name"], what("slide_name")).astype(str),
                "x": _numbers(t["x"], what("x"), 1),
                "y": _numbers(t["y"], what("y"), 1),
                "level": _numbers(t["level"], what("level"), 1),
                "patch_size": _numbers(t["patch_size"], what("patch_size"), 2),
                "resize": _numbers(t["resize"], what("resize"), 2) if "resize" in has else np.full((n, 2), INPUT_SIZE, np.int64),
                "organ": _array(t["organ"], what("organ")).astype(str) if "organ" in has else np.full(n, ""),
                "file": np.full(n, fi),
                "group": np.full(n, gi),
                "row": np.arange(n),
            })
        return parts

    def slide(self, name: str) -> SlideRows:
        rows, c = self.rows[name], self.cols
        kinds = {k: np.unique(c[k][rows], axis=0) for k in ("level", "patch_size", "resize")}
        mixed = [f"{k} {v.tolist()}" for k, v in kinds.items() if len(v) > 1]
        if mixed:
            raise DatasetError(f"{self.label}: slide {name!r} has rows with several {', '.join(mixed)}; import takes one of each per slide")
        (w, h), (iw, _) = kinds["patch_size"][0], kinds["resize"][0]
        if w != h:
            raise DatasetError(f"{self.label}: slide {name!r} has patch_size [{w}, {h}]; only square patches can be imported")
        emb = self._embeddings(rows)
        if not np.isfinite(emb).all():
            raise DatasetError(f"{self.label}: slide {name!r} has embeddings with NaN or inf; fix the table")
        coords = np.stack([c["x"][rows], c["y"][rows]], axis=1)
        return SlideRows(coords, int(kinds["level"][0]), int(w), int(iw), str(c["organ"][rows[0]]) or None, emb)

    def _embeddings(self, rows: np.ndarray) -> np.ndarray:
        """The embeddings of `rows` (ascending, so in table order), one row group read at a time."""
        f, g = self.cols["file"][rows], self.cols["group"][rows]
        out = []
        for fi, gi in dict.fromkeys(zip(f.tolist(), g.tolist())):
            sel = rows[(f == fi) & (g == gi)]
            column = self.embedding_column[fi]
            with pq.ParquetFile(self.files[fi]) as pf:
                t = pf.read_row_group(gi, columns=[column])
            out.append(_embedding_rows(t[column].take(self.cols["row"][sel]), f"{self.files[fi]}: column {column}"))
        if len({e.shape[1] for e in out}) > 1:
            raise DatasetError(f"{self.label}: embeddings of different lengths for one slide")
        return np.concatenate(out)


def _import_one(table: Table, name: str, matches: list[Path], sid: str, store: PatchStore, cfg: TileConfig,
                slides_dir: Path, qa_dir, show_progress) -> SlideResult:
    if not matches:
        raise SlideError(f"slide {name} of {table.label} is not under {slides_dir} (no file named {name} or {name}.<suffix>); "
                         "copy it there or point --slides at the folder that holds it")
    if len(matches) > 1:
        raise SlideError(f"slide {name} of {table.label} matches {len(matches)} files under {slides_dir} "
                         f"({', '.join(str(m) for m in matches[:3])}); point --slides at a folder holding only one of them")
    path = matches[0]
    rows = table.slide(name)
    identity = {"fingerprint": fingerprint(path), "table_rows": rows.digest}
    # Patches and embeddings are written one after the other: a group left without its embeddings
    # by an interrupted run is redone.
    if up_to_date(store, sid, path, identity) and store.embeddings_attrs(sid) is not None:
        return SlideResult(path, sid, "skipped")
    provenance = {**identity, "table": table.label, **({"organ": rows.organ} if rows.organ else {})}
    given = GivenPatches(rows.coords, rows.level, rows.read_size)
    kept = tile_file(path, sid, store, cfg, provenance, qa_dir, show_progress, given)
    # An unreadable patch is left out with its embedding (and recorded in failed_patches, as the
    # tiler does): the store's patches and embeddings stay row for row.
    store.write_embeddings(sid, rows.embeddings[kept], {"model": MODEL, "source": f"imported from {table.label}", "input_size": rows.input_size})
    return SlideResult(path, sid, "done", len(kept))


def import_parquet(table_paths, slides_dir, out_store, cfg: TileConfig = TileConfig(), organ: str | None = None,
                   overwrite: bool = False, qa_dir: location.Location | None = None, show_progress: bool | None = None) -> Summary:
    """Make a patch store from a table of the study's format (parquet files, or folders of them):
    a group per slide_name, its patches read from the slide under `slides_dir` at the table's
    x, y, level and patch_size (resized to `cfg.plan.patch_size`), every row a patch in the table's
    order whatever its tissue, then the table's embeddings. `organ` selects rows. One slide failing
    (absent, unreadable) never stops the others; complete groups are skipped when resumed.
    Raises DatasetError/StoreError/FileNotFoundError for what stops the whole run."""
    from tqdm import tqdm

    table = Table(table_paths, organ)
    slides_dir, out = Path(slides_dir), location.location(out_store)
    found = match_names(table.names, slide_files(slides_dir), slides_dir)
    params = {k: v for k, v in cfg.store_params().items() if k not in ("plan", "mpp")}  # the table sets where and what to read
    params.update(patch_size=cfg.plan.patch_size, coords="table")
    store = PatchStore.create_or_resume(out, cfg.plan.patch_size, params, overwrite=overwrite)
    if qa_dir is None and cfg.qa:
        qa_dir = location.with_suffix(out, ".qa")
    results, t0 = [], time.perf_counter()
    for name in tqdm(table.names, desc="slides", unit="slide", disable=None if show_progress is None else not show_progress):
        sid = name.replace("/", "__")
        path = found[name][0] if len(found[name]) == 1 else Path(name)
        job = functools.partial(_import_one, table, name, found[name], sid, store, cfg, slides_dir, qa_dir, show_progress)
        results.append(guarded(path, sid, job))
    return Summary(results, time.perf_counter() - t0, out, qa_dir if cfg.qa else None)


# -- command line -----------------------------------------------------------------------------------


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m engine.dataset", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    e = sub.add_parser("export", help="a store's embeddings to parquet files and a dataset card")
    e.add_argument("--store", required=True, type=location.location, help="patch store with embeddings (STORE.zarr or a URL)")
    e.add_argument("--out", required=True, type=Path, help="folder for data/train-*.parquet and README.md")
    e.add_argument("--organ", default=None, help="organ of every row (default: each slide's own from an import, else 'unknown')")
    e.add_argument("--with-images", action="store_true", help="add an image column: each patch at the model's input size, PNG")
    e.add_argument("--rows-per-file", type=int, default=None, help="rows per parquet file (default: about 500 MB a file)")
    e.add_argument("--push", metavar="REPO_ID", default=None, help="then upload to this Hugging Face dataset repo")
    e.add_argument("--token", default=None, help="Hugging Face token (default: the saved login or HF_TOKEN)")
    e.add_argument("--debug", action="store_true")
    i = sub.add_parser("import", help="a table of the study's format to a patch store, pixels read from the slides")
    i.add_argument("--table", required=True, type=Path, nargs="+", help="parquet file(s) or folder(s) of them")
    i.add_argument("--slides", required=True, type=Path, help="folder holding the table's slides (searched recursively)")
    i.add_argument("--out", required=True, type=location.location, help="patch store to write or resume (STORE.zarr or a URL)")
    i.add_argument("--organ", default=None, help="import only the rows of this organ")
    i.add_argument("--patch-size", type=int, default=TileConfig().plan.patch_size, help="the store's patch size (patches are resized to it)")
    add_run_options(i)
    return p.parse_args(argv)


def main(argv=None) -> int:
    a = parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if a.debug else logging.INFO, format="%(levelname)s %(message)s")
    try:
        if a.command == "export":
            files = export_parquet(a.store, a.out, a.organ, a.with_images, a.rows_per_file)
            print(f"{len(files)} parquet file(s) in {a.out / 'data'}, dataset card {a.out / 'README.md'}")
            if a.push:
                print(f"pushed to {push_to_hub(a.out, a.push, a.token)}")
            return 0
        cfg = run_config(a, PlanParams(a.patch_size))
        summary = import_parquet(a.table, a.slides, a.out, cfg, organ=a.organ, overwrite=a.overwrite, qa_dir=a.qa_dir,
                                 show_progress=False if a.quiet else None)
    except (StoreError, OSError, ValueError) as e:  # DatasetError is a ValueError
        log.error("%s", e)
        log.debug("%s", traceback.format_exc())
        return 2
    except KeyboardInterrupt:
        log.error("interrupted: finished slides are kept; run the same command again to resume")
        return 130
    print(summary.text())
    return 1 if summary.count("failed") else 0


if __name__ == "__main__":
    sys.exit(main())
