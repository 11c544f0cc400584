"""Realistic synthetic whole-slide images for the demo, tests and benchmarks.

  tissue  SynthSpec and render_region: H&E-like content, a pure function of level-0 coordinates
  tiff    write_svs (Aperio SVS), write_tiled_tiff (CAMELYON16-style TIFF), write_plain_image
  damage  corrupt_tile, truncate
  mosaic  mosaic_svs: a real slide's level 0, mirror-repeated to any size
  cli     demo_slides and `python -m histosynth`
"""

from histosynth.cli import demo_slides, main
from histosynth.damage import corrupt_tile, truncate
from histosynth.mosaic import mosaic_svs
from histosynth.tiff import write_plain_image, write_svs, write_tiled_tiff
from histosynth.tissue import SynthSpec, render_region

__all__ = [
    "SynthSpec",
    "render_region",
    "write_svs",
    "write_tiled_tiff",
    "write_plain_image",
    "corrupt_tile",
    "truncate",
    "mosaic_svs",
    "demo_slides",
    "main",
]
