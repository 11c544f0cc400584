"""Facts about the process's runtime: which CUDA devices it sees, and the allocator settings of
the hot loops. One place, so that no module asks a reader or a pipeline whether there is a GPU."""
from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import functools
import sys


@functools.cache  # importing cupy costs ~0.2 s: ask once per process
def cuda_device_count() -> int:
    try:
        ctypes.CDLL("libcuda.so.1")  # no driver: no GPU, without importing cupy
        import cupy

        return cupy.cuda.runtime.getDeviceCount()
    except Exception:  # no cupy, no driver, no device: all mean "no GPU"
        return 0


def cuda_available() -> bool:
    return cuda_device_count() > 0


@contextlib.contextmanager
def hidden_modules(*names: str):
    """Imports inside the block find `names` not installed, unless they are loaded already; after it
    they import as usual. For libraries that import an optional heavy module at import time which
    this process does not use (zarr imports cupy for its GPU buffers: 0.15-0.55 s where cuCIM
    installed it)."""
    hidden = [n for n in names if n not in sys.modules]
    for n in hidden:
        sys.modules[n] = None  # the import system's "not installed" marker: `import n` raises ImportError
    try:
        yield
    finally:
        for n in hidden:
            if n in sys.modules and sys.modules[n] is None:
                del sys.modules[n]


# glibc mallopt parameters
M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD = -1, -2, -3


@functools.cache  # a setting of the process: once is enough, wherever tiling starts
def reuse_freed_memory() -> bool:
    """Keep large freed buffers (decoded tiles, patch batches, shard buffers) in the heap instead
    of returning them to the OS. By default glibc maps every buffer over 128 KiB afresh and unmaps
    it on free, so each one page-faults again; on virtualised hosts those faults serialise the
    decode and write threads (measured: 3.0 s -> 2.1 s for 542 patches on the 2-core CI machine).
    Returns False where the C library is not glibc."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    ok = mallopt(M_MMAP_THRESHOLD, 256 << 20) and mallopt(M_TRIM_THRESHOLD, 1 << 30) and mallopt(M_TOP_PAD, 64 << 20)
    return bool(ok)
