"""A patch store's embeddings out to parquet files in the study's format, with a dataset card that
`datasets` and the Hugging Face Hub read."""
from __future__ import annotations

import functools
import io
import logging
import math
import os
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from engine import location
from engine.dataset.schema import DatasetError, card_type, features, input_size, model_id, schema
from engine.encoder_registry import DEFAULT
from engine.store import PatchStore

log = logging.getLogger("engine.dataset")

# About 500 MB a file, as datasets' own push_to_hub shards: a row is ~1.6 KB, ~100 KB with its PNG.
ROWS_PER_FILE, ROWS_PER_FILE_WITH_IMAGES = 250_000, 5_000


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


def _slide_batches(store: PatchStore, sid: str, organ: str | None, sch: pa.Schema, chunk: int, pool, encoder: str):
    """The slide's rows as record batches of at most `chunk` rows: one slide's embeddings and
    `chunk` patches in memory at a time."""
    attrs = store.attrs(sid)
    emb, coords, images = store.embeddings(sid, name=encoder), store.coords(sid), store.images(sid)
    size = int(store.embeddings_attrs(sid, encoder).get("input_size") or input_size(encoder))
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
            "encoder": pa.array([encoder] * m, pa.string()),
        }
        if "image" in sch.names:
            pngs = list(pool.map(functools.partial(_png, size=size), images[i:j]))
            cols["image"] = pa.array(pngs, sch.field("image").type)
        yield pa.record_batch([cols[name] for name in sch.names], schema=sch)


def _card(store_path: location.Location, slides: list[str], n_rows: int, n_bytes: int, files: list[Path],
          with_images: bool, models: list[str]) -> str:
    import yaml

    meta = {
        "configs": [{"config_name": "default", "data_files": [{"split": "train", "path": "data/train-*"}]}],
        "dataset_info": {
            "features": [{"name": name, **card_type(f)} for name, f in features(with_images).items()],
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
        f"(1 x D float32), `encoder` (whose embeddings: a name of histogen's encoder registry){image}.\n\n"
        "```python\nfrom datasets import load_dataset\n"
        'ds = load_dataset("parquet", data_dir="data", split="train")\n```\n'
    )


def export_parquet(store_path, out_dir, organ: str | None = None, with_images: bool = False,
                   rows_per_file: int | None = None, encoder: str = DEFAULT) -> list[Path]:
    """Write the store's slides that have complete embeddings to `out_dir/data/train-*.parquet`
    (one row per patch, slide after slide, in patch order) and a dataset card `out_dir/README.md`.
    `organ`: every row's organ (default: each slide's own in its group's attributes, recorded by the
    tiler from engine.fetch's manifest or by an import, else "unknown").
    `encoder`: whose embeddings (engine.encoder_registry's name, in every row's `encoder`).
    Returns the parquet files. The files replace an earlier export's only once all are written."""
    store_path, out_dir = location.location(store_path), Path(out_dir)
    store = PatchStore.open(store_path)
    slides = store.slide_ids()
    ready = [s for s in slides if store.embeddings_attrs(s, encoder) is not None]
    if not ready:
        raise DatasetError(f"{store_path}: no slide has {encoder} embeddings; "
                           f"run python -m engine.embed --store {store_path} --encoder {encoder} first")
    if len(ready) < len(slides):
        left = [s for s in slides if s not in ready]
        log.warning("%s: %d slide(s) without embeddings left out (%s); "
                    "run python -m engine.embed --store %s to add them",
                    store_path, len(left), ", ".join(left[:5]) + (", ..." if len(left) > 5 else ""), store_path)
    if rows_per_file is not None and rows_per_file < 1:
        raise DatasetError(f"--rows-per-file must be at least 1, got {rows_per_file}")
    per_file = rows_per_file or (ROWS_PER_FILE_WITH_IMAGES if with_images else ROWS_PER_FILE)
    total = sum(store.n_patches(s) for s in ready)
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
                for batch in _slide_batches(store, sid, organ, sch, 64 if with_images else 8192, pool, encoder):
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
    models = sorted({f"{encoder} ({store.embeddings_attrs(s, encoder).get('model') or model_id(encoder)})"
                     for s in ready})
    paths = [data / name for name in names]
    (out_dir / "README.md").write_text(_card(store_path, ready, total, n_bytes, paths, with_images, models))
    log.info("%s: %d rows of %d slide(s) in %d file(s) under %s", store_path, total, len(ready), n_files, data)
    return paths
