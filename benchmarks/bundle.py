"""python -m benchmarks gpu-bundle: gather what `make gpu-check` needs on a bare GPU machine, and
check that it fits beside the working tree in what the machine is sent (64 MiB).

    .gpu-bundle/wheels/      CPython 3.12 manylinux x86-64 wheels of what the check imports and
                             such a machine lacks: the patch store's readers (zarr, numcodecs,
                             donfig, google-crc32c), at the versions installed here; with --cucim,
                             cuCIM and nvImageCodec too
    .gpu-bundle/he-64.zarr   the shared real H&E (../shared/data/he) tiled by engine.tile into
                             64 px patches (the training size), each covering --scale x 64 px of
                             its image: the size of the store decides what fits
    .gpu-bundle/slides/      with --cucim: the real Aperio slide, for the decode stage
    .gpu-bundle/bundle.json  what is there, its sizes, and how it was made

Run it again to refresh: the tiler resumes, pip skips wheels it already has.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
LIMIT = 64 * 2**20  # what the lent machine is sent: working tree + carried paths
# Imported by the check (engine.store) and absent from the GPU machine's image (its package list in
# the device notes); everything else the check imports is there.
STORE_READERS = ("zarr", "numcodecs", "donfig", "google-crc32c")
CUCIM = ("cucim-cu13", "nvidia-nvimgcodec-cu13")
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64")


def pinned(name: str) -> str:
    """name==the version installed here (what the tests ran with)."""
    try:
        return f"{name}=={version(name)}"
    except PackageNotFoundError:
        raise SystemExit(f"gpu-bundle: {name} is not installed here; run make install first") from None


def download_wheels(names: list[str], dest: Path, log) -> list[Path]:
    dest.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:", "--python-version",
           "3.12", "--implementation", "cp", *[a for p in PLATFORMS for a in ("--platform", p)], "-d", str(dest),
           *map(pinned, names)]
    if subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT).returncode:
        raise SystemExit(f"gpu-bundle: pip download failed for {', '.join(names)} (see {log.name})")
    return sorted(dest.glob("*.whl"))


def tile_store(slides: Path, store: Path, scale: float, log) -> None:
    """64 px patches, each from scale x 64 px of its image: the images carry no microns per pixel,
    so one is assumed (1) and the tiler resizes to `scale` of it."""
    cmd = [sys.executable, "-m", "engine.tile", "--slides", str(slides), "--out", str(store), "--patch-size", "64",
           "--assume-mpp", "1", "--mpp", str(scale), "--no-qa", "--quiet"]
    if subprocess.run(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT).returncode:
        raise SystemExit(f"gpu-bundle: tiling {slides} failed (see {log.name})")


def travel_bytes(paths: list[Path]) -> int:
    """Bytes on the wire for these files and folders, counted as tar does (a 512-byte header per
    entry, contents in 512-byte blocks): thousands of small chunk files cost more than their sizes."""
    total = 0
    for p in paths:
        for f in [p] if p.is_file() else [p, *p.rglob("*")]:
            total += 512 + (-(-f.stat().st_size // 512) * 512 if f.is_file() else 0)
    return total


def tree_files() -> list[Path]:
    """The working tree that travels: tracked files and untracked ones git does not ignore."""
    names = subprocess.run(["git", "ls-files", "-z", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True,
                           check=True).stdout.decode().split("\0")
    return [ROOT / n for n in names if n and (ROOT / n).is_file()]


def main(argv, work: Path, out: Path) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks gpu-bundle", description=__doc__.split("\n")[0])
    p.add_argument("--dest", type=Path, default=ROOT / ".gpu-bundle",
                   help="the bundle folder (carry it to the machine)")
    p.add_argument("--he", type=Path, default=SHARED / "he", help="folder of real H&E images")
    p.add_argument("--scale", type=float, default=4.0, help="image pixels per patch pixel (4: ~2100 patches, ~30 MB)")
    p.add_argument("--cucim", action="store_true", help="bring cuCIM + nvImageCodec (~42 MB) and the real slide")
    a = p.parse_args(argv)
    if not a.he.is_dir():
        raise SystemExit(f"gpu-bundle: {a.he} is absent; pass --he DIR (a folder of H&E images)")
    dest = a.dest.resolve()
    dest.mkdir(parents=True, exist_ok=True)
    with (dest / "bundle.log").open("w") as log:
        names = list(STORE_READERS) + (list(CUCIM) if a.cucim else [])
        shutil.rmtree(dest / "wheels", ignore_errors=True)  # only what this call asks for
        wheels = download_wheels(names, dest / "wheels", log)
        store = dest / "he-64.zarr"
        tile_store(a.he, store, a.scale, log)
    slides = dest / "slides"
    shutil.rmtree(slides, ignore_errors=True)
    if a.cucim:
        slides.mkdir()
        shutil.copy(SHARED / "slides" / "CMU-1-Small-Region.svs", slides)
    from engine.store import PatchStore

    refs = PatchStore.open(store).slide_refs(with_patches=True)
    sizes = {"working tree": travel_bytes(tree_files()), "wheels": travel_bytes(wheels),
             "he-64.zarr": travel_bytes([store]),
             "slides": travel_bytes([slides]) if slides.is_dir() else 0}
    total = sum(sizes.values())
    info = {"wheels": [w.name for w in wheels], "store": {"path": store.name, "images": len(refs),
                                                          "patches": sum(r.n for r in refs),
            "patch px": 64, "image px per patch px": a.scale, "source": str(a.he)},
            "bytes": sizes, "total bytes": total, "limit bytes": LIMIT}
    (dest / "bundle.json").write_text(json.dumps(info, indent=1))
    print(f"{dest}: {info['store']['patches']} patches from {info['store']['images']} images, {len(wheels)} wheels")
    for k, v in sizes.items():
        print(f"  {k:14s} {v / 2**20:6.1f} MiB")
    print(f"  {'total':14s} {total / 2**20:6.1f} MiB of {LIMIT / 2**20:.0f} "
          f"MiB{'' if total <= LIMIT else '  TOO LARGE'}")
    if total > LIMIT:
        print("gpu-bundle: it does not fit; raise --scale (fewer patches) or leave out --cucim")
        return 1
    rel = os.path.relpath(dest, ROOT)
    print(f"carry {rel} with the call; on the machine: make gpu-check OUT=$OUT WORK=/tmp/gpu-check BUNDLE={rel}")
    return 0
