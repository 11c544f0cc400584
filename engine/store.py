"""The patch store: the only code that knows its Zarr v3 layout.

    STORE.zarr/                 attrs: format, version, patch_size, created_by, params
      slides/<slide_id>/        attrs: provenance, n_patches, status ("writing" until "complete")
        images  uint8 (N, P, P, 3)   chunks of one patch, sharded, lossless
        coords  int64 (N, 2)         level-0 x, y of the top-left corner
        tissue  float32 (N,)         tissue fraction of the patch (also qc/tissue; kept for older readers)
        qc/                          the patch check's results; attrs: params (the CheckParams thresholds),
                                     reasons (the bit of each rejection reason)
          <score> float32 (N,)       one per engine.qc.SCORES name (tissue, ink, focus, ...)
          reasons uint8 (N,)         the reason bits a patch fails (0 = passes; others only with --keep-rejected)
        mask    uint8 (h, w)         tissue mask at thumbnail scale; attrs: downsample
        embeddings/<name> float32 (N, D)  by engine.embed, one per encoder of engine.encoder_registry;
                                     attrs: encoder, model, revision, weights_hash, input_size, resize, ..., status

A slide group becomes "complete" only after all of it is flushed; readers see complete groups only,
and a resumed run deletes and redoes the rest. Stores written before the patch check had scores
have no qc/ group: `qc` and `qc_attrs` return None for them, and all their patches pass. Stores
embedded before they kept several encoders have one `embeddings` array: it reads as Path
Foundation's (LEGACY_EMBEDDINGS), and moves to embeddings/path-foundation when another is written.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field

import google_crc32c
import numcodecs
import numpy as np

from engine.runtime import hidden_modules

# The store reads and writes host memory only; zarr's GPU buffers (zarr.core.buffer.gpu) would import
# cupy, which is most of zarr's import time where cuCIM installed it.
with hidden_modules("cupy"):
    import zarr
    from zarr.codecs import BloscCodec, ZstdCodec
    from zarr.core.buffer import default_buffer_prototype
    from zarr.core.sync import sync

from engine import location
from engine.qc import REASONS, SCORES, PatchQC
from engine.errors import UserError
from engine.location import Location

LEGACY_EMBEDDINGS = "path-foundation"  # the encoder of a store's single `embeddings` array (the only one there was)

FORMAT = "histogen-patches"
VERSION = 1
COMPLETE, WRITING = "complete", "writing"
_NO_CHUNK = 2**64 - 1  # shard index entry of a chunk that is not there (zarr v3 sharding spec)


class StoreError(UserError):
    """A store that cannot be used as asked; the message says what to do."""


@dataclass(frozen=True)
class SlideRef:
    """A complete slide of a store and the patches of it that are used: what training, eval and
    export iterate over. `rows`: the store rows of those n patches, in order (None: rows 0..n-1);
    not part of equality, so that refs compare by slide."""

    store: str
    slide: str
    n: int
    rows: np.ndarray | None = field(default=None, compare=False, repr=False)

    def store_rows(self, i):
        """The store rows of the ref's patches `i` (ints or an int array)."""
        return i if self.rows is None else self.rows[i]


@dataclass(frozen=True)
class Codec:
    """Lossless compression of the image shards. JPEG-decoded H&E barely compresses losslessly, so
    the default is a fast zstd level that still shrinks background: on 200 patches of the CMU mosaic
    level -3 gave 1.187x at half the CPU of level -1 (1.191x); level 1 gave 1.219x at 3x the CPU."""

    name: str = "zstd"  # zstd | lz4 | none
    level: int = -3

    def __post_init__(self):
        if self.name not in ("zstd", "lz4", "none"):
            raise StoreError(f"unknown codec {self.name!r}", "choose zstd, lz4 or none")

    def compressors(self):
        if self.name == "zstd":
            return [ZstdCodec(level=self.level)]
        if self.name == "lz4":
            return [BloscCodec(cname="lz4", clevel=max(1, self.level), shuffle="noshuffle")]
        return None

    def encoder(self):
        """bytes -> bytes for one chunk, the same format `compressors` declares (numcodecs is
        what zarr itself calls; it releases the GIL, so workers encode in parallel)."""
        if self.name == "zstd":
            return numcodecs.Zstd(level=self.level).encode
        if self.name == "lz4":
            return numcodecs.Blosc(cname="lz4", clevel=max(1, self.level), shuffle=numcodecs.Blosc.NOSHUFFLE).encode
        return bytes


def dict_diff(a: dict, b: dict) -> str:
    """'key: old -> new' for each key whose value differs."""
    keys = sorted(set(a) | set(b))
    return ", ".join(f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in keys if a.get(k) != b.get(k))


def _exists(path: Location) -> bool:
    try:
        return location.exists(path)
    except Exception as e:  # an object store that cannot be reached or refuses the credentials; no permission
        what = location.URL_HELP if location.is_url(path) else "check the path and its permissions"
        raise StoreError(f"{path}: cannot reach it ({type(e).__name__}: {e})", what) from e


def _jsonable(d: dict) -> dict:
    """Attributes go through JSON: tuples become lists, so compare in that form."""
    return json.loads(json.dumps(d))


class PatchStore:
    """A store at a local path or an fsspec URL (engine.location)."""

    def __init__(self, group: zarr.Group, path: Location):
        self.root = group
        self.path = path

    def __reduce__(self):
        # A store goes to another process (a Dask worker) as its location and is reopened there.
        return PatchStore.open, (self.path,)

    # -- opening ----------------------------------------------------------------------------

    @classmethod
    def open(cls, path) -> "PatchStore":
        """Open an existing store for reading (and for adding embeddings)."""
        path = location.location(path)
        if not _exists(path):
            raise StoreError(f"{path}: not a patch store (nothing there)", "make one with python -m engine.tile")
        try:
            root = zarr.open_group(str(path), mode="r+")
        except Exception as e:
            raise StoreError(f"{path}: not a patch store ({e})", "make one with python -m engine.tile") from e
        if root.attrs.get("format") != FORMAT:
            raise StoreError(f"{path}: not a histogen patch store (format {root.attrs.get('format')!r})")
        return cls(root, path)

    @classmethod
    def create_or_resume(cls, path, patch_size: int, params: dict, overwrite: bool = False) -> "PatchStore":
        """A new store, or the existing one made with the same params (to resume it). A store made
        with other params is never touched unless `overwrite` is set."""
        path = location.location(path)
        params = _jsonable(params)
        if _exists(path) and overwrite:
            location.remove(path)
        if _exists(path):
            store = cls.open(path)
            old = store.root.attrs.get("params", {})
            if old != params:
                raise StoreError(f"{path} was made with other parameters ({dict_diff(old, params)})",
                                 "write to a new {out}, or pass {overwrite} to replace it")
            return store
        try:
            if not location.is_url(path):
                path.parent.mkdir(parents=True, exist_ok=True)
            root = zarr.open_group(str(path), mode="w-")
        except Exception as e:
            where = "an existing bucket you can write to" if location.is_url(path) else "a writable folder"
            raise StoreError(f"cannot write {path} ({e})", f"choose an {{out}} in {where}") from e
        from engine import __version__

        root.attrs.update(
            {"format": FORMAT, "version": VERSION, "patch_size": patch_size, "created_by": f"histogen {__version__}",
             "params": params}
        )
        root.create_group("slides")
        return cls(root, path)

    # -- reading ----------------------------------------------------------------------------

    @property
    def patch_size(self) -> int:
        return int(self.root.attrs["patch_size"])

    def _slides(self) -> zarr.Group:
        return self.root["slides"]

    def status(self, slide_id: str) -> str | None:
        slides = self._slides()
        return slides[slide_id].attrs.get("status") if slide_id in slides else None

    def slide_ids(self, complete_only: bool = True) -> list[str]:
        ids = sorted(name for name, _ in self._slides().groups())
        return [i for i in ids if not complete_only or self.status(i) == COMPLETE]

    def slide(self, slide_id: str) -> zarr.Group:
        if self.status(slide_id) != COMPLETE:
            raise StoreError(f"{self.path}: slide {slide_id!r} is not complete in this store")
        return self._slides()[slide_id]

    def attrs(self, slide_id: str) -> dict:
        return dict(self._slides()[slide_id].attrs)

    def slide_refs(self, with_patches: bool = False) -> list["SlideRef"]:
        """The complete slides, each with its patch count (only those with patches if asked)."""
        refs = [SlideRef(str(self.path), sid, self.n_patches(sid)) for sid in self.slide_ids()]
        return [r for r in refs if r.n or not with_patches]

    def n_patches(self, slide_id: str) -> int:
        return int(self.slide(slide_id).attrs["n_patches"])

    def images(self, slide_id: str) -> zarr.Array:
        """The slide's patches, uint8 (N, P, P, 3), read lazily (index it, or use read_patches)."""
        return self.slide(slide_id)["images"]

    def read_patches(self, slide_id: str, rows=None) -> np.ndarray:
        """Patches `rows` (any order, repeats allowed; None = all) as uint8 (len(rows), P, P, 3)."""
        images = self.images(slide_id)
        if rows is None:
            return images[:]
        rows = np.asarray(rows, np.int64)
        if not len(rows):
            return np.zeros((0, *images.shape[1:]), np.uint8)
        wanted, back = np.unique(rows, return_inverse=True)  # each chunk once, in store order
        return images.oindex[wanted][back]

    def coords(self, slide_id: str) -> np.ndarray:
        """int64 (N, 2): level-0 x, y of each patch's top-left corner."""
        return self.slide(slide_id)["coords"][:]

    def tissue(self, slide_id: str) -> np.ndarray:
        """float32 (N,): each patch's tissue fraction at full resolution."""
        return self.slide(slide_id)["tissue"][:]

    def qc(self, slide_id: str) -> PatchQC | None:
        """The check's scores (float32 (N,) by name) and reason bits (uint8 (N,)) of each patch;
        None for a slide written before the check had scores (all its patches passed)."""
        g = self.slide(slide_id)
        if "qc" not in g:
            return None
        arrays = {name: a[:] for name, a in g["qc"].arrays()}
        return PatchQC(arrays, arrays.pop("reasons"))

    def qc_attrs(self, slide_id: str) -> dict | None:
        """The check's settings: params (the CheckParams thresholds the slide was tiled with) and
        reasons (the bit of each reason); None where the slide has no qc group."""
        g = self.slide(slide_id)
        return dict(g["qc"].attrs) if "qc" in g else None

    def mask(self, slide_id: str) -> tuple[np.ndarray, dict]:
        """The tissue mask at thumbnail scale, uint8 (h, w), and its attributes (downsample, params)."""
        m = self.slide(slide_id)["mask"]
        return m[:], dict(m.attrs)

    def _embeddings(self, slide_id: str, name: str) -> zarr.Array | None:
        """The slide's `name` embeddings array, finished or not; None where there is none."""
        g = self.slide(slide_id)
        if "embeddings" not in g:
            return None
        node = g["embeddings"]
        if isinstance(node, zarr.Array):  # a store embedded before it kept several encoders
            return node if name == LEGACY_EMBEDDINGS else None
        return node[name] if name in node else None

    def embeddings_attrs(self, slide_id: str, name: str = LEGACY_EMBEDDINGS) -> dict | None:
        """The attributes of the slide's finished `name` embeddings, or None where there are none (or an
        interrupted write left them unfinished)."""
        a = self._embeddings(slide_id, name)
        attrs = dict(a.attrs) if a is not None else {}
        return {"encoder": name, **attrs} if attrs.get("status") == COMPLETE else None

    def embedding_names(self, slide_id: str) -> list[str]:
        """The encoders whose embeddings of the slide are finished."""
        g = self.slide(slide_id)
        if "embeddings" not in g:
            return []
        node = g["embeddings"]
        names = [LEGACY_EMBEDDINGS] if isinstance(node, zarr.Array) else sorted(n for n, _ in node.arrays())
        return [n for n in names if self.embeddings_attrs(slide_id, n) is not None]

    def embeddings(self, slide_id: str, rows=None, name: str = LEGACY_EMBEDDINGS) -> np.ndarray:
        """(N, D) float32, row i for patch i of the slide (only `rows` where given)."""
        if self.embeddings_attrs(slide_id, name) is None:
            raise StoreError(f"{self.path}: slide {slide_id!r} has no {name} embeddings; "
                             f"run python -m engine.embed --store {self.path} --encoder {name}")
        a = self._embeddings(slide_id, name)
        return a[:] if rows is None else a.oindex[np.asarray(rows, np.int64)]

    def embedding_width(self, name: str = LEGACY_EMBEDDINGS) -> int | None:
        """The width D of the store's `name` embeddings (384 for Path Foundation), None where none is complete."""
        for sid in self.slide_ids():
            if self.embeddings_attrs(sid, name) is not None:
                return int(self._embeddings(sid, name).shape[1])
        return None

    def write_embeddings(self, slide_id: str, embeddings: np.ndarray, attrs: dict,
                         name: str = LEGACY_EMBEDDINGS) -> None:
        """Replace the slide's `name` embeddings: one row per patch, finite. Marked complete last, so an
        interrupted write is redone, and the slide's patches and other encoders' embeddings are never touched."""
        g = self.slide(slide_id)
        emb = np.asarray(embeddings)
        n = int(g.attrs["n_patches"])
        if emb.ndim != 2 or emb.shape[0] != n:
            raise StoreError(f"{self.path}: slide {slide_id!r} has {n} patches but got embeddings of shape {emb.shape}")
        if not np.isfinite(emb).all():
            raise StoreError(f"{self.path}: slide {slide_id!r}: embeddings contain NaN or inf; not written")
        self.remove_embeddings(slide_id, name)
        legacy = g["embeddings"] if "embeddings" in g and isinstance(g["embeddings"], zarr.Array) else None
        if legacy is not None:  # make room for the group, keeping the older encoder's embeddings under its name
            kept, kept_attrs = legacy[:], dict(legacy.attrs)
            del g["embeddings"]
            self._write_embeddings_array(g.create_group("embeddings"), LEGACY_EMBEDDINGS, kept, kept_attrs)
        group = g["embeddings"] if "embeddings" in g else g.create_group("embeddings")
        self._write_embeddings_array(group, name, emb, {"encoder": name, **attrs})

    @staticmethod
    def _write_embeddings_array(group: zarr.Group, name: str, emb: np.ndarray, attrs: dict) -> None:
        n = emb.shape[0]
        rows = max(1, min(n, 65536 // max(1, emb.shape[1]) * 16))  # about 4 MiB a chunk
        a = group.create_array(name, shape=emb.shape, chunks=(rows, emb.shape[1]), dtype="float32", fill_value=0.0)
        a.attrs.update(_jsonable({**attrs, "status": WRITING}))
        if n:
            a[:] = emb.astype(np.float32, copy=False)
        a.attrs["status"] = COMPLETE

    def remove_embeddings(self, slide_id: str, name: str = LEGACY_EMBEDDINGS) -> None:
        """Delete the slide's `name` embeddings, finished or not; its patches and other embeddings stay."""
        g = self._slides()[slide_id]
        if "embeddings" not in g:
            return
        node = g["embeddings"]
        if isinstance(node, zarr.Array):
            if name == LEGACY_EMBEDDINGS:
                del g["embeddings"]
        elif name in node:
            del node[name]

    # -- writing ----------------------------------------------------------------------------

    def remove_slide(self, slide_id: str) -> None:
        """Delete the slide's group, whatever state it is in."""
        slides = self._slides()
        if slide_id in slides:
            del slides[slide_id]

    def begin_slide(self, slide_id: str, attrs: dict, capacity: int, codec: Codec, shard: int = 16,
                    check: dict | None = None) -> "SlideWriter":
        """Start (or restart) a slide group; whatever an earlier, unfinished run left is dropped.
        `check`: the CheckParams (as a dict) the patches are checked with; its PatchQC then comes
        with each append and is stored in qc/. None: tissue fractions only (no qc group)."""
        self.remove_slide(slide_id)
        group = self._slides().create_group(slide_id)
        group.attrs.update(_jsonable({**attrs, "status": WRITING}))
        p = self.patch_size
        images = group.create_array(
            "images",
            shape=(max(capacity, 0), p, p, 3),
            chunks=(1, p, p, 3),
            shards=(shard, p, p, 3),
            dtype="uint8",
            compressors=codec.compressors(),
            fill_value=0,
        )
        return SlideWriter(group, images, shard, codec, check)


class SlideWriter:
    """Appends patches and writes them as whole shards, then marks the group complete in `finish`.

    Patches are encoded chunk by chunk (`encode`, thread-safe, GIL released) and shards are laid
    out here: the encoded chunks, then the index of (offset, length) pairs and its CRC32C, as the
    zarr v3 sharding codec declared in the array's metadata reads them. Going through zarr's
    codec pipeline instead cost 3x the CPU of the compression itself on the tiler's hot path."""

    def __init__(self, group: zarr.Group, images: zarr.Array, shard: int, codec: Codec, check: dict | None = None):
        self.group, self.images, self.shard, self.check = group, images, shard, check
        self._encode_chunk = codec.encoder()
        self.n = 0
        self._chunks: list[bytes] = []
        self._coords: list[np.ndarray] = []
        self._tissue: list[np.ndarray] = []
        self._qc: list[PatchQC] = []

    def encode(self, images) -> list[bytes]:
        """One encoded chunk per patch of `images` ((n, P, P, 3) uint8, or an iterable of (P, P, 3));
        safe to call from worker threads."""
        return [self._encode_chunk(np.ascontiguousarray(p)) for p in images]

    def append(self, images, coords: np.ndarray, qc: PatchQC | np.ndarray) -> None:
        """`images`: (n, P, P, 3) uint8, or what `encode` made of them; `qc`: their PatchQC where
        the slide was begun with `check`, else their tissue fractions."""
        if (self.check is not None) != isinstance(qc, PatchQC):
            raise TypeError("append takes a PatchQC exactly when the slide was begun with check params")
        chunks = self.encode(images) if isinstance(images, np.ndarray) else list(images)
        if not chunks:
            return
        self._chunks += chunks
        self._coords.append(np.asarray(coords, np.int64).reshape(-1, 2))
        if isinstance(qc, PatchQC):
            self._qc.append(qc)
            qc = qc.scores["tissue"]
        self._tissue.append(np.asarray(qc, np.float32).reshape(-1))
        while len(self._chunks) >= self.shard:
            self._write_shard(self._chunks[: self.shard])
            del self._chunks[: self.shard]

    def _write_shard(self, chunks: list[bytes]) -> None:
        k = self.n // self.shard
        end = self.n + len(chunks)
        if end > self.images.shape[0]:
            self.images.resize((end,) + self.images.shape[1:])
        index = np.full((self.shard, 2), _NO_CHUNK, "<u8")
        sizes = np.array([len(c) for c in chunks], np.uint64)
        index[: len(chunks), 0] = np.cumsum(sizes) - sizes
        index[: len(chunks), 1] = sizes
        index_bytes = index.tobytes()
        blob = b"".join(chunks) + index_bytes + np.uint32(google_crc32c.value(index_bytes)).tobytes()
        key = self.images.metadata.encode_chunk_key((k, 0, 0, 0))
        sync((self.images.store_path / key).set(default_buffer_prototype().buffer.from_bytes(blob)))
        self.n = end

    def finish(self, mask: np.ndarray, mask_attrs: dict, attrs: dict) -> int:
        """Flush everything, then write coords/tissue/mask, then mark the group complete."""
        if self._chunks:
            self._write_shard(self._chunks)
            self._chunks = []
        if self.images.shape[0] != self.n:
            self.images.resize((self.n,) + self.images.shape[1:])
        coords = np.concatenate(self._coords) if self._coords else np.zeros((0, 2), np.int64)
        tissue = np.concatenate(self._tissue) if self._tissue else np.zeros((0,), np.float32)
        assert len(coords) == len(tissue) == self.n
        # overwrite: a second attempt at the slide that runs at the same time (a Dask worker taken
        # for dead that was not) writes the same arrays; whichever finishes last, they agree.
        self.group.create_array("coords", data=coords, chunks=(max(1, min(len(coords), 65536)), 2), overwrite=True)
        self.group.create_array("tissue", data=tissue, chunks=(max(1, min(len(tissue), 65536)),), overwrite=True)
        if self.check is not None:
            self._write_qc()
        m = self.group.create_array("mask", data=np.ascontiguousarray(mask, np.uint8), overwrite=True)
        m.attrs.update(_jsonable(mask_attrs))
        self.group.attrs.update(_jsonable({**attrs, "n_patches": self.n}))
        self.group.attrs["status"] = COMPLETE  # last: a reader trusts a group only after this
        return self.n

    def _write_qc(self) -> None:
        names = self._qc[0].scores if self._qc else SCORES
        columns = {n: _concat([qc.scores[n] for qc in self._qc], np.float32) for n in names}
        columns["reasons"] = _concat([qc.reasons for qc in self._qc], np.uint8)
        assert all(len(c) == self.n for c in columns.values())
        g = self.group.require_group("qc")
        g.attrs.update(_jsonable({"params": self.check, "reasons": REASONS}))
        for name, c in columns.items():
            g.create_array(name, data=c, chunks=(max(1, min(len(c), 65536)),), overwrite=True)


def _concat(parts: list, dtype) -> np.ndarray:
    return np.concatenate([np.asarray(p, dtype).reshape(-1) for p in parts]) if parts else np.zeros(0, dtype)
