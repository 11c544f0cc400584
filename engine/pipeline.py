"""The data path from a patch store to model input: read batches of patches in parallel, resize
with antialiasing, augment, normalise, lay out.

One `Transform` (data) describes the output; three interchangeable backends produce it:
`dali-gpu` (DALI operators on the GPU), `dali-cpu` (DALI with `device_id=None`) and `torch` (the
fallback where DALI cannot be imported). They agree within `TOLERANCE`: the resize is an
antialiased bilinear (triangle filter widened by the downscale factor) with edge pixels
replicated, which is what DALI computes; the torch backend pads by replication so that PyTorch's
antialiased bilinear sees the same borders.

    from engine.encoder_registry import spec
    from engine.pipeline import make_resizer, store_batches
    resize = make_resizer(spec("uni").transform)   # an encoder's input, as the registry states it
    for sid, start, images in store_batches(store, store.slide_ids(), batch_size=64):
        x = resize(images)   # torch float32 (n, 3, 224, 224), ImageNet-normalised
"""
from __future__ import annotations

import math
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import cached_property
from typing import Iterator

import numpy as np
import torch
import torch.nn.functional as F

from engine.errors import UserError
from engine.prefetch import ordered_map

RESIZE_BACKENDS = ("auto", "dali-gpu", "dali-cpu", "torch")
TOLERANCE = 1e-4  # max abs difference between backends on [0, 1] outputs (measured: 7e-6)


class PipelineError(UserError):
    """A backend that cannot run here; the message says what to choose instead."""


@dataclass(frozen=True)
class Transform:
    """What a model gets from 0..255 RGB patches: out = (resize(x) / 255 - mean) / std."""

    size: int = 224  # output side in pixels (patches are square)
    mean: tuple[float, float, float] = (0.0, 0.0, 0.0)
    std: tuple[float, float, float] = (1.0, 1.0, 1.0)  # (0.5,)*3 with mean (0.5,)*3 gives [-1, 1]
    layout: str = "NHWC"  # or NCHW
    flip: bool = False  # random horizontal mirror
    rot90: bool = False  # random multiple of 90 degrees; with flip, all 8 symmetries of a square

    def __post_init__(self):
        if self.layout not in ("NHWC", "NCHW"):
            raise ValueError(f"layout must be NHWC or NCHW, not {self.layout!r}")
        if self.size < 1:
            raise ValueError(f"size must be positive, not {self.size}")

    @property
    def method(self) -> str:
        """How the pixels were resized, as recorded next to what was computed from them."""
        return "bilinear, antialiased, edges replicated"


def _dali_available() -> bool:
    try:
        import nvidia.dali  # noqa: F401
    except Exception:
        return False
    return True


def resolve_backend(backend: str = "auto") -> str:
    from engine.runtime import cuda_available

    if backend not in RESIZE_BACKENDS:
        raise PipelineError(f"unknown pipeline backend {backend!r}; choose one of {', '.join(RESIZE_BACKENDS)}")
    if backend == "auto":
        if not _dali_available():
            return "torch"
        return "dali-gpu" if cuda_available() else "dali-cpu"
    if backend.startswith("dali") and not _dali_available():
        raise PipelineError(f"backend {backend} needs DALI (pip install nvidia-dali-cuda130)", "use {pipeline} torch")
    if backend == "dali-gpu" and not cuda_available():
        raise PipelineError("backend dali-gpu needs a CUDA device", "use {pipeline} dali-cpu or torch")
    return backend


class Resizer:
    """Call with a uint8 (n, H, W, 3) batch; returns a float32 torch tensor laid out as asked
    (on the GPU for dali-gpu, else on the CPU).

    The augmentation (a rot90 count and a mirror bit per patch) is drawn here, in numpy, and
    applied by the backend: from `seed` where a call gives one (a trainer passes one per step, so
    a resumed run draws what an uninterrupted one did), else from a stream seeded once. Both
    backends therefore produce the same augmented batches."""

    backend: str

    def __init__(self, transform: Transform, max_batch: int, seed: int):
        self.t, self.max_batch = transform, max_batch
        self._rng = np.random.default_rng(seed)

    def __call__(self, images: np.ndarray, seed: int | None = None) -> torch.Tensor:
        images = np.ascontiguousarray(images)
        if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8 or images.shape[1] != images.shape[2]:
            raise ValueError(f"expected uint8 (n, P, P, 3) patches, got {images.dtype} {images.shape}")
        rng = self._rng if seed is None else np.random.default_rng(seed)
        n = len(images)
        rot = rng.integers(0, 4, n) if self.t.rot90 else np.zeros(n, np.int64)
        mirror = rng.integers(0, 2, n) if self.t.flip else np.zeros(n, np.int64)
        if not n:
            raise ValueError("an empty batch")
        return torch.cat([self._run(images[i : i + self.max_batch], rot[i : i + self.max_batch],
                                    mirror[i : i + self.max_batch])
                          for i in range(0, n, self.max_batch)])

    def _run(self, images: np.ndarray, rot: np.ndarray, mirror: np.ndarray) -> torch.Tensor:
        """rot: counter-clockwise quarter turns, then mirror: left-right flips, per patch."""
        raise NotImplementedError


def _pad_for(n: int, m: int) -> tuple[int, int]:
    """(p, q): replicate-pad n input pixels by p per side and resize to m + 2q, then crop q: the
    pixel grid of n -> m is unchanged (p/q = n/m exactly), and no filter reaches past the pad."""
    g = math.gcd(n, m)
    a, b = n // g, m // g
    reach = math.ceil(max(n / m, 1.0)) + 1  # the triangle filter's radius in input pixels
    k = math.ceil(reach / a)
    return k * a, k * b


class TorchResizer(Resizer):
    backend = "torch"

    def __init__(self, transform: Transform, max_batch: int, seed: int):
        super().__init__(transform, max_batch, seed)
        self._mean = torch.tensor(transform.mean, dtype=torch.float32).view(1, 3, 1, 1) * 255
        self._std = torch.tensor(transform.std, dtype=torch.float32).view(1, 3, 1, 1) * 255

    def _run(self, images, rot, mirror) -> torch.Tensor:
        x = torch.from_numpy(images).permute(0, 3, 1, 2).float()
        n, m = x.shape[-1], self.t.size
        if n != m:
            p, q = _pad_for(n, m)
            x = F.pad(x, (p, p, p, p), mode="replicate")
            x = F.interpolate(x, size=(m + 2 * q, m + 2 * q), mode="bilinear", antialias=True, align_corners=False)
            x = x[..., q : q + m, q : q + m]
        if rot.any() or mirror.any():
            x = torch.stack([xi.rot90(int(k), (1, 2)).flip(2) if f else xi.rot90(int(k), (1, 2))
                             for xi, k, f in zip(x, rot, mirror)])
        x = (x - self._mean) / self._std
        return x.contiguous() if self.t.layout == "NCHW" else x.permute(0, 2, 3, 1).contiguous()


class DaliResizer(Resizer):
    """A DALI pipeline fed through `fn.external_source` (patches, and the augmentation drawn by
    the caller), one batch per call."""

    def __init__(self, transform: Transform, max_batch: int, seed: int, device_id: int | None, threads: int):
        super().__init__(transform, max_batch, seed)
        self.device_id, self.threads = device_id, threads
        self.backend = "dali-cpu" if device_id is None else "dali-gpu"

    @cached_property
    def _pipe(self):
        from nvidia.dali import fn, pipeline_def, types

        t, gpu = self.t, self.device_id is not None

        @pipeline_def(batch_size=self.max_batch, num_threads=self.threads, device_id=self.device_id,
                      prefetch_queue_depth=1, exec_async=False, exec_pipelined=False)
        def pipe():
            x = fn.external_source(name="patches", layout="HWC", dtype=types.UINT8, no_copy=False)
            angle = fn.external_source(name="angle", dtype=types.FLOAT)
            mirror = fn.external_source(name="mirror", dtype=types.INT32)
            if gpu:
                x = x.gpu()
            x = fn.resize(x, resize_x=t.size, resize_y=t.size, interp_type=types.INTERP_LINEAR, antialias=True,
                          dtype=types.FLOAT)
            if t.rot90:  # nearest-neighbour rotation by quarter turns moves pixels exactly
                x = fn.rotate(x, angle=angle, keep_size=True, interp_type=types.INTERP_NN)
            return fn.crop_mirror_normalize(
                x, dtype=types.FLOAT, mean=[v * 255 for v in t.mean], std=[v * 255 for v in t.std],
                mirror=mirror, output_layout="CHW" if t.layout == "NCHW" else "HWC",
            )

        p = pipe()
        p.build()
        return p

    def _run(self, images, rot, mirror) -> torch.Tensor:
        self._pipe.feed_input("patches", list(images))
        if self.t.rot90:  # else DALI prunes the unused input
            self._pipe.feed_input("angle", [np.array(90.0 * k, np.float32) for k in rot])
        self._pipe.feed_input("mirror", [np.array(f, np.int32) for f in mirror])
        (out,) = self._pipe.run()
        if self.device_id is None:
            return torch.from_numpy(np.array(out.as_tensor()))
        from nvidia.dali.plugin.pytorch import feed_ndarray

        dense = out.as_tensor()
        y = torch.empty(dense.shape(), dtype=torch.float32, device=f"cuda:{self.device_id}")
        feed_ndarray(dense, y, cuda_stream=torch.cuda.current_stream(self.device_id))
        return y


def make_resizer(transform: Transform, backend: str = "auto", max_batch: int = 64, seed: int = 0,
                 device_id: int = 0, threads: int | None = None) -> Resizer:
    backend = resolve_backend(backend)
    if backend == "torch":
        return TorchResizer(transform, max_batch, seed)
    threads = threads or os.cpu_count() or 1
    return DaliResizer(transform, max_batch, seed, device_id if backend == "dali-gpu" else None, threads)


def store_batches(store, slide_ids: list[str], batch_size: int = 64, workers: int = 4,
                  ) -> Iterator[tuple[str, int, np.ndarray]]:
    """(slide_id, first patch index, uint8 (n, P, P, 3)) in slide and patch order; batches are read
    and decompressed on `workers` threads (zarr's codecs release the GIL), at most 2 x workers ahead."""
    arrays = {sid: store.images(sid) for sid in slide_ids}
    jobs = [(sid, i, min(i + batch_size, a.shape[0])) for sid, a in arrays.items()
            for i in range(0, a.shape[0], batch_size)]

    def read(job):
        sid, a, b = job
        return sid, a, arrays[sid][a:b]

    with ThreadPoolExecutor(max(1, workers), thread_name_prefix="store-read") as pool:
        yield from ordered_map(pool, read, jobs, 2 * max(1, workers))
