"""engine.patch_plan: the MPP a slide records, the level, read size and DCT scale a target resolution
picks, which grid patches hold tissue, and a table's patches kept exactly as given."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from engine.patch_plan import Geometry, GivenPlan, GridPlan, mpp_info
from engine.plan import PlanParams
from engine.slide import Mpp, Slide, SlideError


class Blank(Slide):
    """A white slide of the given levels that decodes at `scales`, as a JPEG-tiled TIFF's levels do."""

    backend = "blank"

    def __init__(self, level_dimensions, mpp: Mpp | None, scales=(1,)):
        super().__init__(Path("blank.svs"), level_dimensions, mpp)
        self.scales = scales

    def decode_scales(self, level: int) -> tuple[int, ...]:
        return self.scales

    def _read(self, x, y, level, w, h):
        return np.full((h, w, 3), 255, np.uint8)


MPP = Mpp(0.25, 0.25, "aperio.MPP")
LEVELS = [(8192, 6144), (2048, 1536), (512, 384)]  # downsamples 1, 4, 16


def test_mpp_info_records_the_value_and_where_it_came_from():
    assert mpp_info(Blank(LEVELS, MPP), None) == {"mpp_x": 0.25, "mpp_y": 0.25, "mpp_source": "aperio.MPP"}
    assert mpp_info(Blank(LEVELS, MPP), 0.5) == {"mpp_x": 0.5, "mpp_y": 0.5, "mpp_source": "--assume-mpp"}
    assert mpp_info(Blank(LEVELS, None), None) == {"mpp_x": None, "mpp_y": None, "mpp_source": "missing"}


def geometry(plan: GridPlan, slide: Slide) -> Geometry:
    return plan.geometry(slide, mpp_info(slide, None))


def test_grid_at_the_scan_resolution_reads_level_0_as_is():
    slide = Blank(LEVELS, MPP)
    assert geometry(GridPlan(PlanParams(patch_size=256)), slide) == Geometry(0, 256, 256, 256, 1.0)
    assert geometry(GridPlan(PlanParams(patch_size=256, stride=128)), slide) == Geometry(0, 256, 256, 128, 1.0)


@pytest.mark.parametrize("target, scales, dct, want", [
    (0.5, (1,), True, Geometry(0, 512, 512, 512, 2.0)),  # no reduced level that sharp: read twice the size
    (0.5, (1, 2, 4, 8), True, Geometry(0, 256, 512, 512, 2.0, 2)),  # the same decoded at 1/2 instead
    (0.5, (1, 2, 4, 8), False, Geometry(0, 512, 512, 512, 2.0)),  # --no-dct-scaling
    (1.0, (1, 2, 4, 8), True, Geometry(1, 256, 1024, 1024, 4.0)),  # level 1 is the target: no scale needed
    (2.0, (1, 2, 4, 8), True, Geometry(1, 256, 2048, 2048, 8.0, 2)),  # level 1 at 1/2, never level 2 (too coarse)
    (0.3, (1, 2, 4, 8), True, Geometry(0, 307, 307, 307, 1.2)),  # 1/2 would upsample: full decode
])
def test_grid_at_a_target_mpp_reads_the_most_reduced_level_and_scale_still_as_sharp(target, scales, dct, want):
    plan = GridPlan(PlanParams(patch_size=256), mpp=target, dct_scaling=dct)
    assert geometry(plan, Blank(LEVELS, MPP, scales)) == want


def test_grid_at_a_target_mpp_needs_the_slide_mpp():
    plan = GridPlan(PlanParams(patch_size=256), mpp=0.5)
    slide = Blank(LEVELS, None)
    with pytest.raises(SlideError, match=r"no usable MPP .* --mpp 0.5") as e:
        geometry(plan, slide)
    assert "assume_mpp" in e.value.hint
    assert plan.geometry(slide, mpp_info(slide, 0.25)) == Geometry(0, 512, 512, 512, 2.0)  # --assume-mpp


def test_grid_keeps_the_patches_over_tissue_that_pass_the_check():
    slide = Blank([(1024, 1024)], MPP)
    mask = np.zeros((64, 64), np.uint8)
    mask[:32, 32:] = 1  # tissue in the top-right quarter; 2 (ink) is not tissue
    mask[32:, :32] = 2
    plan = GridPlan(PlanParams(patch_size=256, min_tissue=0.5))
    coords = plan.coords(slide, mask, geometry(plan, slide))
    assert coords.dtype == np.int64 and coords.tolist() == [[512, 0], [768, 0], [512, 256], [768, 256]]
    tissue, readable = np.array([True, True, False, False]), np.array([True, False, True, False])
    np.testing.assert_array_equal(plan.keep(tissue, readable), [True, False, False, False])


def test_given_patches_are_read_where_the_table_says_and_kept_when_readable():
    xy = [[100, 200], [4000, 3000]]
    plan = GivenPlan(np.array(xy), level=1, read_size=128, patch_size=256)
    slide = Blank(LEVELS, MPP)
    assert plan.geometry(slide, mpp_info(slide, None)) == Geometry(1, 128, 512, 512, 2.0)
    coords = plan.coords(slide, np.zeros((4, 4), np.uint8), Geometry(1, 128, 512, 512, 2.0))
    assert coords.dtype == np.int64 and coords.tolist() == xy  # the mask plays no part
    np.testing.assert_array_equal(plan.keep(np.array([False, False]), np.array([True, False])), [True, False])
    with pytest.raises(SlideError, match=r"has no pyramid level 3 \(levels 0..2\)"):
        GivenPlan(np.array(xy), level=3, read_size=128, patch_size=256).geometry(slide, mpp_info(slide, None))
