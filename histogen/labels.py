"""Slide-level labels (an organ, a tissue class) to condition on: where each slide's label comes
from, and the run's vocabulary of classes.

A run's `data.label` names the source: a slide attribute key of the stores (e.g. `organ`, read with
PatchStore.attrs) or, when it ends in `.csv`, a CSV file with a header and the columns `slide`
(the slide id in the store) and `label`. Slides without a label are left out of training, with one
warning line naming them. The classes are the sorted distinct labels of the slides a run trained
and validated on; their indices are the model's class ids, kept in the run folder (histogen.run_folder)
so that sampling and evaluation read them back without the source.
"""
from __future__ import annotations

import csv
import logging
from dataclasses import dataclass
from pathlib import Path

from engine.errors import UserError
from engine.store import PatchStore, SlideRef, StoreError

log = logging.getLogger("histogen.labels")


class LabelError(UserError, ValueError):
    """A label source that cannot be read, or a label the run does not know; the message says what to do."""


def is_csv(source: str) -> bool:
    return source.lower().endswith(".csv")


def read_csv(path: Path) -> dict[str, str]:
    """slide id -> label of a CSV with the columns `slide` and `label` (empty labels are no label)."""
    try:
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
            columns = rows[0].keys() if rows else []
    except OSError as e:
        raise LabelError(f"{path}: cannot read the label CSV ({e.strerror or e}); "
                         "give an existing file as data.label") from e
    except (csv.Error, UnicodeDecodeError) as e:
        raise LabelError(f"{path}: not a readable CSV ({e})") from e
    if not {"slide", "label"} <= set(columns):
        raise LabelError(f"{path}: a label CSV needs a header with the columns slide,label; "
                         f"found {', '.join(columns) or 'no rows'}")
    out: dict[str, str] = {}
    for i, row in enumerate(rows, start=2):
        slide, label = (row["slide"] or "").strip(), (row["label"] or "").strip()
        if slide and label:
            if out.setdefault(slide, label) != label:
                raise LabelError(f"{path}: line {i}: slide {slide} has two labels ({out[slide]}, {label}); keep one")
    return out


def slide_labels(refs: list[SlideRef], source: str) -> list[str | None]:
    """Each slide's label from `source` (a run's data.label: a slide attribute key, or a CSV path),
    None where it has none. Evaluation per label takes a run's source from its Vocabulary."""
    if is_csv(source):
        table = read_csv(Path(source))
        return [table.get(r.slide) for r in refs]
    stores: dict[str, PatchStore] = {}
    out = []
    for r in refs:
        try:
            store = stores.setdefault(r.store, PatchStore.open(r.store))
        except StoreError as e:
            raise LabelError(str(e)) from e
        value = store.attrs(r.slide).get(source)
        out.append(None if value is None or str(value).strip() == "" else str(value).strip())
    return out


def labelled(refs: list[SlideRef], source: str) -> tuple[list[SlideRef], list[str]]:
    """The slides that have a label, and their labels; those without one are left out with one
    warning line. None labelled: a LabelError saying where labels were looked for."""
    labels = slide_labels(refs, source)
    missing = [r.slide for r, lab in zip(refs, labels) if lab is None]
    where = f"in the CSV {source}" if is_csv(source) else f"as the slide attribute {source!r}"
    if len(missing) == len(refs):
        raise LabelError(f"no slide has a label {where}; "
                         "check data.label (an attribute key, or a CSV with columns slide,label)")
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        log.warning("%d of %d slides have no label %s and are left out: %s", len(missing), len(refs), where, shown)
    kept = [(r, lab) for r, lab in zip(refs, labels) if lab is not None]
    return [r for r, _ in kept], [lab for _, lab in kept]


@dataclass(frozen=True)
class Vocabulary:
    """A run's classes: class id i is classes[i]."""

    classes: tuple[str, ...]
    source: str  # the data.label the run was trained with

    @classmethod
    def of(cls, labels: list[str], source: str) -> "Vocabulary":
        """The sorted distinct `labels`; a CSV source is kept as an absolute path, for evaluation elsewhere."""
        return cls(tuple(sorted(set(labels))), str(Path(source).resolve()) if is_csv(source) else source)

    def index(self, label: str) -> int:
        if label not in self.classes:
            raise LabelError(f"unknown label {label!r}; this run knows: {', '.join(self.classes)}")
        return self.classes.index(label)

    def indices(self, labels: list[str]) -> list[int]:
        return [self.index(lab) for lab in labels]
