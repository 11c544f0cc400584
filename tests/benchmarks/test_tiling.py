"""benchmarks tiling's ceilings decode exactly the tiles the tiler reads, at full size and DCT-scaled."""
from __future__ import annotations

import numpy as np

from benchmarks.tiling import run_ceiling, run_scaled_ceiling, source_tiles
from engine.readers import TiffSlide


def test_ceilings_decode_the_tiles_under_the_patches(svs_slide):
    coords = np.array([[0, 0], [480, 480], [1500, 900], [2000, 1700]], np.int64)
    with TiffSlide(svs_slide) as slide:
        for level, read, scale in ((0, 512, 1), (0, 256, 2), (1, 128, 1)):
            ds = slide.level_downsamples[level] * scale
            want = sorted({i for x, y in coords.tolist()
                           for i, _, _ in slide._tiles_for(level, int(x // ds), int(y // ds), read, read, scale)})
            assert source_tiles(svs_slide, coords, read * scale, level).index == want
            seconds, n = run_scaled_ceiling(svs_slide, coords, read * scale, level, scale, repeats=1)
            assert n == len(want) and seconds > 0
    seconds, n = run_ceiling(svs_slide, coords, 512, repeats=1)
    assert n == len(source_tiles(svs_slide, coords, 512).index)
