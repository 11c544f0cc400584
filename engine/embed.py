"""Embeddings of every complete slide of a patch store by one encoder of engine.encoder_registry.

    python -m engine.embed --store patches.zarr [--encoder NAME] [--weights PATH] [--scheduler ADDRESS]
    python -m engine.embed --store patches.zarr [--model HUB_ID | --model DIR]   # Path Foundation's interface

Each slide group gets `embeddings/<encoder>` float32 (N, width), row i for patch i, computed on the
encoder's input made from the stored patches (engine.pipeline: antialiased bilinear resize to its
input size, its normalisation). Path Foundation (the default) is a TensorFlow SavedModel; the
others are torch ViTs (engine.torch_encoder). Per slide: the
data path (store reads, resize) runs on a background thread while the model runs, and
the slide's embeddings are written at once and marked complete last, so a killed run redoes only
the slide it was in. A slide that already has embeddings from the same model is skipped. With
--scheduler, each slide is a Dask task (engine.cluster); each worker loads the model once.

TensorFlow is imported here only, when Path Foundation is loaded.
"""
from __future__ import annotations

import argparse
import functools
import hashlib
import logging
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from engine import cluster, jobs, torch_encoder
from engine.encoder_registry import DEFAULT, ENCODERS, EncoderError, EncoderSpec, SpecShape, spec
from engine.errors import run_command, setup_logging
from engine.hub_download import download
from engine.location import location
from engine.pipeline import RESIZE_BACKENDS, make_resizer, store_batches
from engine.prefetch import ordered_map
from engine.progress import Progress
from engine.store import PatchStore, StoreError

log = logging.getLogger("engine.embed")

EmbedError = EncoderError  # a model or an input that cannot be used; the message says what to do


def __getattr__(name: str):
    """`DEFAULT_MODEL`: the default encoder's hub id as the registry states it now (not at import)."""
    if name == "DEFAULT_MODEL":
        return spec(DEFAULT).repo
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@dataclass(frozen=True)
class EmbedConfig:
    model: str | None = None  # Path Foundation: a SavedModel directory or a hub repo id; None: the registry's
    revision: str | None = None  # hub revision (branch, tag or commit); None = the registry's pin, else main
    batch_size: int = 64
    pipeline: str = "auto"  # auto | dali-gpu | dali-cpu | torch
    workers: int = field(default_factory=lambda: min(4, os.cpu_count() or 1))  # store-read threads
    overwrite: bool = False  # recompute slides that already have this model's embeddings
    encoder: str = DEFAULT  # a name in engine.encoder_registry
    weights: str | None = None  # local weights (a file or folder) instead of the hub; Path Foundation: a SavedModel
    allow_pickle: bool = False  # load pickled checkpoints (tensors only)


# -- the model ----------------------------------------------------------------------------------


@dataclass
class Model(SpecShape):
    """A loaded SavedModel whose serving signature matches Path Foundation's."""

    fn: object  # the concrete serving function
    input_name: str
    id: str  # what the user asked for: a repo id or the directory
    revision: str  # the hub commit, or a content hash of a local directory
    spec: EncoderSpec  # the registry's entry, as it was when the model was loaded

    def __call__(self, x) -> np.ndarray:
        """float32 (n, size, size, 3) in [0, 1] -> float32 (n, width); refuses non-finite in or out."""
        import tensorflow as tf

        x = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x, np.float32)
        if not np.isfinite(x).all():
            raise EmbedError("input batch contains NaN or inf; the patches or the pipeline are broken")
        y = self.fn(**{self.input_name: tf.constant(x, tf.float32)})["output_0"].numpy()
        if y.shape != (len(x), self.width):
            raise EmbedError(f"{self.id}: model returned shape {y.shape} for {len(x)} inputs, "
                             f"expected ({len(x)}, {self.width})")
        if not np.isfinite(y).all():
            raise EmbedError(f"{self.id}: model returned NaN or inf embeddings")
        return y.astype(np.float32, copy=False)

    def attrs(self) -> dict:
        return {"encoder": self.spec.name, "model": self.id, "revision": self.revision, "input_size": self.input_size,
                "resize": self.spec.transform.method, "value_range": [0.0, 1.0], "width": self.width}


def _dir_hash(path: Path) -> str:
    """A content hash of a SavedModel directory (graph and variables): what 'revision' means for a
    local model, so embeddings from a changed model are never mistaken for current ones."""
    h = hashlib.sha256()
    for f in sorted(p for p in path.rglob("*") if p.is_file()):
        h.update(str(f.relative_to(path)).encode())
        with open(f, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    return "sha256:" + h.hexdigest()[:16]


def load_model(ref: str | None = None, revision: str | None = None, token: str | None = None) -> Model:
    """A local SavedModel directory or a hub repo id (None: the registry's); the serving signature must
    be Path Foundation's (as the registry states it): one float32 (N, size, size, 3) input, `output_0`
    of its width."""
    pf = spec(DEFAULT)  # read now, not at import: the registry is the one place its contract lives
    size, width, ref = pf.input_size, pf.width, ref or pf.repo
    path = Path(ref).expanduser()
    if path.exists():
        if not path.is_dir():
            raise EmbedError(f"{path}: --model must be a SavedModel directory (with saved_model.pb), not a file")
        model_id, rev = str(path.resolve()), None
    elif ref.count("/") == 1 and not ref.startswith((".", "/", "~")) and not path.parent.is_dir():
        model_id, path = ref, download(ref, revision or pf.revision, token, name=DEFAULT)
        rev = path.name  # snapshots/<commit>
    else:
        raise EmbedError(f"{ref}: no such directory, and not a Hugging Face repo id (owner/name)",
                         "pass {model} DIR or a repo id")

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    if not tf.saved_model.contains_saved_model(str(path)):
        raise EmbedError(f"{path}: not a TensorFlow SavedModel (no saved_model.pb)",
                         "point {model} at the model's folder")
    for gpu in tf.config.list_physical_devices("GPU"):  # share the GPU with the DALI pipeline
        tf.config.experimental.set_memory_growth(gpu, True)
    try:
        loaded = tf.saved_model.load(str(path))
    except Exception as e:
        raise EmbedError(f"{path}: TensorFlow cannot load this SavedModel ({type(e).__name__}: {e})") from e
    sigs = dict(loaded.signatures)
    if "serving_default" not in sigs:
        raise EmbedError(f"{path}: no serving_default signature (has: {', '.join(sigs) or 'none'}); "
                         "not a Path Foundation export")
    fn = sigs["serving_default"]
    _, kwargs = fn.structured_input_signature
    specs = list(kwargs.items())
    want = f"one float32 input of shape [N, {size}, {size}, 3]"
    if len(specs) != 1:
        raise EmbedError(f"{path}: serving_default takes {len(specs)} inputs; Path Foundation takes {want}")
    name, tensor = specs[0]
    shape = tensor.shape.as_list() if tensor.shape.rank is not None else None
    if tensor.dtype != tf.float32 or shape is None or len(shape) != 4 or shape[1:] != [size, size, 3]:
        raise EmbedError(f"{path}: serving_default takes {tensor.dtype.name} {shape}; Path Foundation takes {want}")
    outputs = fn.structured_outputs
    if "output_0" not in outputs:
        raise EmbedError(f"{path}: serving_default returns {', '.join(outputs)}, not output_0; "
                         "not a Path Foundation export")
    model = Model(fn, name, model_id, rev or _dir_hash(path), pf)
    probe = fn(**{name: tf.zeros((2, size, size, 3), tf.float32)})["output_0"]
    if tuple(probe.shape) != (2, width):
        raise EmbedError(f"{path}: the model returns {tuple(probe.shape)[1:]}-wide outputs, not {width}; "
                         "not Path Foundation")
    return model


def load_encoder(cfg: EmbedConfig) -> Model | torch_encoder.TorchModel:
    """The encoder cfg names, with its weights: Path Foundation's SavedModel (--weights DIR or --model),
    or a torch encoder from --weights or the hub."""
    e = spec(cfg.encoder)
    if e.framework == "tensorflow":  # Path Foundation, the one SavedModel of the registry
        return load_model(cfg.weights or cfg.model, cfg.revision)
    return torch_encoder.load(e, cfg.weights, cfg.revision, allow_pickle=cfg.allow_pickle)


# -- the run ------------------------------------------------------------------------------------


def _up_to_date(store: PatchStore, sid: str, model: Model) -> bool:
    have = store.embeddings_attrs(sid, model.spec.name)
    want = model.attrs()
    return have is not None and all(have.get(k) == v for k, v in want.items())


def embed_slide(store: PatchStore, sid: str, model: Model, resize, cfg: EmbedConfig, pool,
                bar: Progress | None = None) -> int:
    """Write the slide's embeddings; returns its patch count. `pool` runs the resize a batch or two
    ahead of the model."""
    out = np.zeros((store.n_patches(sid), model.width), np.float32)
    batches = store_batches(store, [sid], cfg.batch_size, cfg.workers)
    for start, x in ordered_map(pool, lambda b: (b[1], resize(b[2])), batches, ahead=2):
        out[start : start + len(x)] = model(x)
        if bar is not None:
            bar.update(len(x))
    store.write_embeddings(sid, out, model.attrs(), model.spec.name)
    return len(out)


@functools.lru_cache(maxsize=1)
def _worker_tools(cfg: EmbedConfig) -> tuple[Model, object]:
    """The model and the resizer, made once per Dask worker process."""
    model = load_encoder(cfg)
    return model, make_resizer(model.spec.transform, cfg.pipeline, max_batch=cfg.batch_size)


def _embed_on_worker(store: PatchStore, sid: str, cfg: EmbedConfig) -> int:
    model, resize = _worker_tools(cfg)
    with ThreadPoolExecutor(1, thread_name_prefix="resize") as pool:
        return embed_slide(store, sid, model, resize, cfg, pool)


def embed_store(store_path, cfg: EmbedConfig = EmbedConfig(), model: Model | None = None,
                show_progress: bool | None = None, scheduler: cluster.Scheduler | None = None) -> jobs.Summary:
    """Embed every complete slide of the store (a path or a URL) that lacks this model's
    embeddings, here or with one Dask task per slide on `scheduler` (whose workers load
    the encoder themselves; `model`, if given, is cfg's encoder loaded). Raises a UserError
    (StoreError, EmbedError, ClusterError, ...) only for problems that stop the whole run."""
    store = PatchStore.open(store_path)
    ids = store.slide_ids()
    if not ids:
        raise StoreError(f"{store.path}: no complete slides to embed",
                         "tile slides into it first (python -m engine.tile)")
    model = model or load_encoder(cfg)  # here too: a bad model stops the run before any task
    todo = [s for s in ids if cfg.overwrite or not _up_to_date(store, s, model)]
    skipped = [jobs.SlideResult(s, "skipped") for s in ids if s not in todo]
    t0 = time.perf_counter()

    def job(sid: str, work) -> jobs.SlideJob:
        return jobs.SlideJob(sid, f"{store.path}: slide {sid}", work,
                            functools.partial(store.remove_embeddings, sid, model.spec.name))

    if scheduler is None:
        resize = make_resizer(model.spec.transform, cfg.pipeline, max_batch=cfg.batch_size)
        log.info("encoder %s: %s (%s); pipeline %s; %d slide(s) to embed, %d already done", model.spec.name,
                 model.id, model.revision, resize.backend, len(todo), len(skipped))
        # One patch bar over the run, no slides bar. The resize runs on its own thread, a batch or
        # two ahead, while the model runs here.
        with Progress(sum(store.n_patches(s) for s in todo), "embed", "patch", show=show_progress) as bar, \
                ThreadPoolExecutor(1, thread_name_prefix="resize") as pool:
            todo_jobs = [job(s, functools.partial(embed_slide, store, s, model, resize, cfg, pool, bar)) for s in todo]
            results, ran_on = jobs.run(todo_jobs, "embedding", show_progress=False)
    else:
        if todo:
            log.info("encoder %s: %s (%s); %d slide(s) to embed on Dask, %d already done", model.spec.name,
                     model.id, model.revision, len(todo), len(skipped))
        todo_jobs = [job(s, functools.partial(_embed_on_worker, store, s, cfg)) for s in todo]
        results, ran_on = jobs.run(todo_jobs, "embedding", scheduler, show_progress)
    return jobs.Summary(skipped + results, time.perf_counter() - t0, store.path, ran_on=ran_on, done_as="embedded",
                        skipped_as="already embedded", disk_hint="free space on that disk")


def _default_local() -> int:
    """Plain `--scheduler local`: one worker per GPU; without GPUs, one (TensorFlow uses every core)."""
    return len(cluster.visible_gpus()) or 1


def parse_args(argv=None) -> argparse.Namespace:
    d = EmbedConfig()
    p = argparse.ArgumentParser(prog="python -m engine.embed", description=__doc__.split("\n\n")[0])
    p.add_argument("--store", required=True, type=location,
                   help="patch store made by python -m engine.tile (a path or a URL)")
    p.add_argument("--encoder", default=d.encoder, metavar="NAME",
                   help=f"encoder, one of {', '.join(ENCODERS)} (default: %(default)s)")
    p.add_argument("--weights", default=None, metavar="PATH",
                   help="local weights, a file or a folder (safetensors), instead of the Hugging Face Hub")
    p.add_argument("--allow-pickle", action="store_true",
                   help="also load pickled checkpoints (.bin, .pth; tensors only, never code)")
    p.add_argument("--model", default=d.model,
                   help=f"Path Foundation: SavedModel directory or hub repo id (default: {spec(DEFAULT).repo})")
    p.add_argument("--revision", default=None, help="hub revision: branch, tag or commit")
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--pipeline", choices=RESIZE_BACKENDS, default=d.pipeline,
                   help="resize backend (default: DALI, GPU if present)")
    p.add_argument("--workers", type=int, default=d.workers, help="threads reading the store")
    p.add_argument("--overwrite", action="store_true", help="recompute embeddings that are already there")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--debug", action="store_true")
    cluster.add_option(p, local="one worker per GPU, or one without GPUs")
    return p.parse_args(argv)


def main(argv=None) -> int:
    a = parse_args(argv)
    setup_logging(a.debug)

    def job() -> int:
        if a.batch_size < 1:
            raise EmbedError("--batch-size must be at least 1")
        spec(a.encoder)  # an unknown name, or one histogen does not build: one line
        scheduler = None if a.scheduler is None else cluster.Scheduler.parse(a.scheduler, _default_local)
        cfg = EmbedConfig(a.model, a.revision, a.batch_size, a.pipeline, max(1, a.workers), a.overwrite, a.encoder,
                          a.weights, a.allow_pickle)
        summary = embed_store(a.store, cfg, show_progress=False if a.quiet else None, scheduler=scheduler)
        print(summary.text())
        return 1 if summary.failed else 0

    # ValueError: a malformed --scheduler
    return run_command(job, log, "slides already embedded are kept; run the same command again to resume",
                       flags={"weights": "--weights PATH"}, errors=(ValueError,))


if __name__ == "__main__":
    sys.exit(main())
