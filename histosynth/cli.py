"""The built-in demo slides and the command line (`python -m histosynth`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from histosynth.tiff import write_svs, write_tiled_tiff
from histosynth.tissue import SynthSpec


def demo_slides(out_dir) -> list[Path]:
    """The built-in example: an Aperio SVS with a pen stroke and a
    CAMELYON16-style pyramidal TIFF."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    return [
        write_svs(out / "demo_aperio.svs", SynthSpec(width=6000, height=4000, seed=1, pen=True)),
        write_tiled_tiff(out / "demo_camelyon.tif", SynthSpec(width=4096, height=4096, seed=2)),
    ]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m histosynth",
                                 description="Realistic synthetic whole-slide images for the demo, tests and "
                                             "benchmarks.")
    ap.add_argument("out_dir")
    ap.add_argument("--kind", choices=("svs", "tiff"), default="svs")
    ap.add_argument("--width", type=int, default=SynthSpec.width)
    ap.add_argument("--height", type=int, default=SynthSpec.height)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-mpp", action="store_true")
    ap.add_argument("--pen", action="store_true")
    ap.add_argument("--no-tissue", action="store_true")
    ap.add_argument("--quality", type=int, default=SynthSpec.jpeg_quality)
    ap.add_argument("--compression", default="jpeg")
    ap.add_argument("--demo", action="store_true", help="write the built-in example slides instead")
    a = ap.parse_args(argv)
    if a.demo:
        for p in demo_slides(a.out_dir):
            print(p)
        return 0
    spec = SynthSpec(width=a.width, height=a.height, seed=a.seed, tissue=not a.no_tissue,
                     pen=a.pen, mpp=None if a.no_mpp else SynthSpec.mpp, jpeg_quality=a.quality)
    out = Path(a.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    name = f"synth_{a.width}x{a.height}_s{a.seed}_{a.compression}"
    if a.kind == "svs":
        p = write_svs(out / f"{name}.svs", spec, compression=a.compression)
    else:
        p = write_tiled_tiff(out / f"{name}.tif", spec, compression=a.compression)
    print(p)
    return 0
