"""An evaluation's result: metrics.json's content, and the pictures of the report."""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Evaluation:
    info: dict
    metrics: dict = field(default_factory=dict)
    skipped: dict = field(default_factory=dict)  # metric -> why it was not computed
    notes: list = field(default_factory=list)
    floor: dict = field(default_factory=dict)  # metric -> the same numbers between two disjoint real draws
    floor_skipped: dict = field(default_factory=dict)  # metric -> why it has no floor
    pictures: dict = field(default_factory=dict)  # name -> uint8 images (not in metrics.json)
    hists: dict = field(default_factory=dict)  # "real" / "generated" / "real_b" -> (2, OD_BINS)
    nuclei: dict = field(default_factory=dict)  # "real" / "generated" / "real_b" -> histogen.nuclei.Nuclei
    per_label: dict = field(default_factory=dict)  # class -> {"metrics", "floor"} (runs conditioned on labels)
    train_floor: dict = field(default_factory=dict)  # model-free metric -> the run's training patches against real A

    def to_json(self) -> dict:
        return {"info": self.info, "metrics": self.metrics, "floor": self.floor, "floor_skipped": self.floor_skipped,
                "skipped": self.skipped, "notes": self.notes,
                **({"per_label": self.per_label} if self.per_label else {}),
                **({"train_floor": self.train_floor} if self.train_floor else {})}

    def record(self, name: str, value, floor=None, why_no_floor: str | None = None) -> None:
        self.metrics[name] = value
        if floor is not None:
            self.floor[name] = floor
        else:
            self.floor_skipped[name] = why_no_floor or "no second real draw"
