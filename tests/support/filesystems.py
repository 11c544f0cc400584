"""A real filesystem of a few MB that fills up mid-run: a tmpfs mounted for the test (root only;
others skip with the reason), and ballast that leaves it a chosen number of bytes free."""
from __future__ import annotations

import errno
import os
import subprocess
from contextlib import contextmanager
from pathlib import Path

import pytest

PAGE = 4096  # tmpfs hands out space a page at a time


@contextmanager
def small_filesystem(path: Path, size: int):
    """A tmpfs of `size` bytes at `path` while the block runs."""
    path.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                             capture_output=True, text=True)
    if mounted.returncode:
        pytest.skip(f"cannot mount a small tmpfs to fill up ({mounted.stderr.strip() or 'mount failed'}); "
                    "the full-disk tests need root")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def grow(path: Path, size: int) -> None:
    """Make the tmpfs at `path` `size` bytes: as a user freeing space would."""
    subprocess.run(["mount", "-o", f"remount,size={size}", str(path)], check=True)


def leave_free(path: Path, n_bytes: int) -> Path:
    """Fill the filesystem of `path` with a ballast file, then give back `n_bytes` of it."""
    ballast = path / "ballast"
    block = b"\0" * (1 << 16)
    with open(ballast, "wb", buffering=0) as f:
        try:
            while True:
                f.write(block)
        except OSError as e:
            assert e.errno == errno.ENOSPC
    os.truncate(ballast, max(0, ballast.stat().st_size - n_bytes))
    return ballast


def du(path: Path) -> int:
    """Bytes that the files under `path` take on disk, in whole pages."""
    return sum(-(-f.stat().st_size // PAGE) * PAGE for f in path.rglob("*") if f.is_file())
