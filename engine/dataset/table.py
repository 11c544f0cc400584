"""Reading a table of the study's format for import: its small columns indexed in memory, each
slide's embeddings read only when that slide is imported."""
from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from engine.dataset.schema import EMBEDDING_COLUMNS, REQUIRED, DatasetError, input_size
from engine.encoder_registry import DEFAULT


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
        raise DatasetError(f"{what}: expected {'[width, height]' if ndim == 2 else 'one number'} per row, got shape "
                           f"{a.shape[1:]}")
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
    hint = "point {table} at a parquet file or a folder of them"
    for p in paths:
        if p.is_dir():
            found = sorted(f for f in p.rglob("*.parquet")
                           if not any(part.startswith(".") for part in f.relative_to(p).parts))
            if not found:
                raise DatasetError(f"{p}: no .parquet files in this folder", hint)
            files += found
        elif p.is_file():
            files.append(p)
        else:
            raise DatasetError(f"{p}: no such file or folder", hint)
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
    encoder: str  # whose embeddings (engine.encoder_registry's name)

    @property
    def digest(self) -> str:
        """What the store records to recognise these rows again when a run is resumed."""
        h = hashlib.sha256(self.coords.tobytes())
        h.update(np.array([self.level, self.read_size, self.input_size], np.int64).tobytes())
        h.update(self.encoder.encode())
        h.update(self.embeddings.tobytes())
        return h.hexdigest()[:32]


@dataclass(frozen=True, eq=False)
class TableSlide:
    """One slide's entries in a table's index: small enough to send to the process that imports
    the slide, which reads its rows (`read`) from the files there."""

    name: str
    label: str  # the table, in messages
    cols: dict  # the slide's rows of Table.cols, in table order
    files: tuple[Path, ...]
    embedding_column: tuple[str, ...]  # per file

    def read(self) -> SlideRows:
        """The slide's rows with their embeddings; one level, patch size and input size per slide."""
        c, name = self.cols, self.name
        kinds = {k: np.unique(c[k], axis=0) for k in ("level", "patch_size", "resize", "encoder")}
        mixed = [f"{k} {v.tolist()}" for k, v in kinds.items() if len(v) > 1]
        if mixed:
            raise DatasetError(f"{self.label}: slide {name!r} has rows with several {', '.join(mixed)}; "
                               "import takes one of each per slide")
        (w, h), (iw, _) = kinds["patch_size"][0], kinds["resize"][0]
        if w != h:
            raise DatasetError(f"{self.label}: slide {name!r} has patch_size [{w}, {h}]; "
                               "only square patches can be imported")
        emb = self._embeddings()
        if not np.isfinite(emb).all():
            raise DatasetError(f"{self.label}: slide {name!r} has embeddings with NaN or inf; fix the table")
        coords = np.stack([c["x"], c["y"]], axis=1)
        return SlideRows(coords, int(kinds["level"][0]), int(w), int(iw), str(c["organ"][0]) or None, emb,
                         str(kinds["encoder"][0]))

    def _embeddings(self) -> np.ndarray:
        """The slide's embeddings in table order, one row group read at a time."""
        f, g = self.cols["file"], self.cols["group"]
        out = []
        for fi, gi in dict.fromkeys(zip(f.tolist(), g.tolist())):
            sel = (f == fi) & (g == gi)
            column = self.embedding_column[fi]
            with pq.ParquetFile(self.files[fi]) as pf:
                t = pf.read_row_group(gi, columns=[column])
            out.append(_embedding_rows(t[column].take(self.cols["row"][sel]), f"{self.files[fi]}: column {column}"))
        if len({e.shape[1] for e in out}) > 1:
            raise DatasetError(f"{self.label}: embeddings of different lengths for one slide")
        return np.concatenate(out)


class Table:
    """A table of the study's format, indexed for import: its small columns in memory, the
    embeddings left in the files until a slide is read (a table sorted by slide, as the study's and
    our exports are, is read once), never an image column."""

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
            raise DatasetError(f"{path}: missing column(s) {', '.join(missing)}; a table of the Path Foundation "
                               "study's format has slide_name, x, y, level, patch_size and image_embedding_vector")
        self.embedding_column.append(emb)
        columns = [c for c in (*REQUIRED, "resize", "organ", "encoder") if c in names]
        what = functools.partial("{}: column {}".format, path)
        parts = []
        for gi in range(pf.num_row_groups):
            t = pf.read_row_group(gi, columns=columns)
            n = t.num_rows
            if not n:
                continue
            has = t.column_names
            encoders = (_array(t["encoder"], what("encoder")).astype(str) if "encoder" in has
                        else np.full(n, DEFAULT))
            parts.append({
                "slide_name": _array(t["slide_name"], what("slide_name")).astype(str),
                "x": _numbers(t["x"], what("x"), 1),
                "y": _numbers(t["y"], what("y"), 1),
                "level": _numbers(t["level"], what("level"), 1),
                "patch_size": _numbers(t["patch_size"], what("patch_size"), 2),
                "resize": _numbers(t["resize"], what("resize"), 2) if "resize" in has  # else the encoder's input
                          else _input_sizes(encoders),
                "organ": _array(t["organ"], what("organ")).astype(str) if "organ" in has else np.full(n, ""),
                "encoder": encoders,
                "file": np.full(n, fi),
                "group": np.full(n, gi),
                "row": np.arange(n),
            })
        return parts

    def slide(self, name: str) -> TableSlide:
        rows = self.rows[name]
        cols = {k: v[rows] for k, v in self.cols.items() if k != "slide_name"}
        return TableSlide(name, self.label, cols, tuple(self.files), tuple(self.embedding_column))


def _input_sizes(encoders: np.ndarray) -> np.ndarray:
    """(n, 2) int64: each row's encoder's input side, as the registry states it."""
    names, index = np.unique(encoders, return_inverse=True)
    side = np.array([input_size(str(e)) for e in names], np.int64)[index.reshape(-1)]
    return np.stack([side, side], axis=1)
