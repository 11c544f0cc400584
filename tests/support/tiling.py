"""The small tiling setup shared by the scale-out and object-store tests."""
from __future__ import annotations

from engine.plan import PlanParams
from engine.tile import TileConfig

CFG = TileConfig(plan=PlanParams(256), qa=False, workers=1, batch_size=8)  # 17-20 patches a slide: two shards
ARGS = ["--patch-size", "256", "--no-qa", "--quiet", "--batch-size", "8"]
