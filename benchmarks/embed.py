"""Embedding throughput: patches/s of `engine.embed` end to end against the model alone (the
ceiling: inputs already resized, in memory), and of the data path alone (store reads + resize) for
each pipeline backend. Goal: end to end >= 0.9 of model-only; the data path faster than the model.

The model is the ViT-S/16 stand-in with Path Foundation's interface (histosynth.standin_model): the
real one is gated and not downloadable here, and costs the same per patch. `--encoder NAME` measures
another encoder of engine.encoder_registry instead, its architecture with random weights (what the
real weights cost), in bf16 where the device has native bf16.

Model-only and end to end take turns, run after run; each pair's ratio is reported, and the
model's share of each end-to-end run's wall time (measured inside that run, on the same patches at
the same moment), which is the figure to trust on a machine shared with other work: there the
scheduler can give a process with more busy threads more of the cores, and end to end can come
out faster than model-only.
"""
from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

import numpy as np

from benchmarks import report
from benchmarks.tiling import make_slide
import torch

from engine.embed import EmbedConfig, embed_store, load_model
from engine.encoder_registry import DEFAULT, ENCODERS, spec
from engine.pipeline import Transform, make_resizer, store_batches
from engine.runtime import cuda_available
from engine.torch_encoder import TorchModel, build, native_bf16
from histosynth.standin_model import save_standin
from engine.store import PatchStore
from engine.tile import TileConfig, tile_slides


def make_store(work: Path, size: int) -> Path:
    out = work / f"embed-{size}.zarr"
    if not out.exists():
        slide = make_slide(work, size)
        tile_slides(slide.parent, out, TileConfig(qa=False), show_progress=False)
    return out


def data_path(store: PatchStore, transform: Transform, backend: str, batch: int) -> tuple[float, int]:
    resize = make_resizer(transform, backend, max_batch=batch)
    t0, n = time.perf_counter(), 0
    for _, _, images in store_batches(store, store.slide_ids(), batch):
        n += len(resize(images))
    return time.perf_counter() - t0, n


def _model_input(model, batch: int) -> np.ndarray:
    t = model.spec.transform
    shape = (batch, t.size, t.size, 3) if t.layout == "NHWC" else (batch, 3, t.size, t.size)
    return np.random.default_rng(0).random(shape, dtype=np.float32)


class _Timed:
    """The model, counting the seconds spent in its calls: within one end-to-end run, the share of the
    wall time the model had is end to end / model-only measured on the same patches at the same
    moment (a machine shared with other work slows both alike)."""

    def __init__(self, model):
        self.model, self.seconds = model, 0.0

    def __call__(self, x):
        t0 = time.perf_counter()
        try:
            return self.model(x)
        finally:
            self.seconds += time.perf_counter() - t0

    def __getattr__(self, name):
        return getattr(self.model, name)


def model_only(model, n: int, batch: int) -> float:
    x = _model_input(model, batch)
    t0, done = time.perf_counter(), 0
    while done < n:
        done += len(model(x[: min(batch, n - done)]))
    return time.perf_counter() - t0


def _cpu() -> str:
    """The CPU's model name and the cores this process may use."""
    import os

    name = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                 if line.startswith("model name")), "unknown") if Path("/proc/cpuinfo").exists() else "unknown"
    return f"{name}, {len(os.sched_getaffinity(0))} cores, torch threads {torch.get_num_threads()}"


def encoder(name: str, work: Path) -> tuple[object, str]:
    """The model to time and what the report calls it."""
    e = spec(name)
    if e.framework == "tensorflow":
        model_dir = work / "standin-vit-s16"
        if not model_dir.exists():
            save_standin(model_dir.with_suffix(".tmp"), arch="vit-s16")
            model_dir.with_suffix(".tmp").rename(model_dir)
        return load_model(str(model_dir)), "ViT-S/16 stand-in with Path Foundation's interface (random weights)"
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    bf16 = e.precision == "bf16" and native_bf16(device)
    model = TorchModel(e, build(e, device).eval(), f"{name} (random weights)", "random", "", bf16)
    return model, f"{name}: its architecture with random weights, {'bf16 autocast' if bf16 else 'fp32'} on {device}"


def main(argv, work: Path, out: Path) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks embed")
    p.add_argument("--size", type=int, default=8192, help="side of the slide the store is tiled from")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--repeats", type=int, default=2, help="timed runs per configuration (the best counts)")
    p.add_argument("--encoder", choices=ENCODERS, default=DEFAULT, metavar="NAME",
                   help="an encoder of engine.encoder_registry, with random weights (default: Path Foundation's "
                        "stand-in)")
    a = p.parse_args(argv)
    work.mkdir(parents=True, exist_ok=True)
    path = make_store(work, a.size)
    store = PatchStore.open(path)
    model, described = encoder(a.encoder, work)
    transform = model.spec.transform

    rows, rates = [], {}
    backends = ["dali-cpu", "torch"] + (["dali-gpu"] if cuda_available() else [])
    data_path(store, transform, "dali-cpu", a.batch_size)  # warm-up: the store into the page cache
    for be in backends:
        seconds, n = min(data_path(store, transform, be, a.batch_size) for _ in range(a.repeats))
        rates[be] = n / seconds
        rows.append({"name": f"data path: store reads + resize ({be})", "patches": n, "seconds": seconds,
                     "patches/s": n / seconds})
    n = sum(store.n_patches(s) for s in store.slide_ids())
    # Model-only and end to end take turns, run after run, so that a machine shared with other work
    # slows both alike; the best of each counts, and each pair's ratio is reported beside them.
    model(_model_input(model, a.batch_size))  # warm-up: graph and thread pools
    model_s, end_s, pairs, shares = [], [], [], []
    for _ in range(a.repeats):
        model_s.append(model_only(model, n, a.batch_size))
        copy = work / "embed-run.zarr"
        shutil.rmtree(copy, ignore_errors=True)
        shutil.copytree(path, copy)
        timed = _Timed(model)
        t0 = time.perf_counter()
        summary = embed_store(copy, EmbedConfig(batch_size=a.batch_size, encoder=a.encoder), model=timed,
                              show_progress=False)
        end_s.append(time.perf_counter() - t0)
        assert summary.n_patches == n and not summary.failed, summary.text()
        pairs.append(model_s[-1] / end_s[-1])
        shares.append(timed.seconds / end_s[-1])
    rates["model"], rates["end"] = n / min(model_s), n / min(end_s)
    rows.append({"name": "model only (ceiling): resized inputs in memory", "patches": n, "seconds": min(model_s),
                 "patches/s": rates["model"]})
    rows.append({"name": "engine.embed end to end (pipeline auto, writes included)", "patches": n,
                 "seconds": min(end_s), "patches/s": rates["end"]})
    for r in rows:
        r["of model-only"] = r["patches/s"] / rates["model"]
    extra = {
        "store": f"{path.name}: {n} patches of 512 px",
        "model": described,
        "goal end to end / model-only >= 0.9": rates["end"] / rates["model"],
        "end to end / model-only, run by run (taking turns)": [round(r, 3) for r in pairs],
        "the model's share of each end-to-end run's wall time (same run)": [round(r, 3) for r in shares],
        "cpu": _cpu(),
        "slowest data path / model-only (> 1: never the bottleneck)": min(rates[b] for b in backends) / rates["model"],
    }
    print(report.write(out, "embed" if a.encoder == DEFAULT else f"embed-{a.encoder}", rows, extra))
    return 0
