"""What to fetch: a manifest of slides (CSV or YAML; name, organ, source, location, size, checksum),
the study's own shipped as data, and the record of what was fetched that the fetch leaves in its
folder (`manifest.csv`), from which the tiler takes each slide's organ."""
from __future__ import annotations

import csv
import io
import logging
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from engine.errors import UserError

log = logging.getLogger("engine.fetch")
COLUMNS = ("name", "organ", "source", "location", "size", "checksum")
RECORD = "manifest.csv"  # in the fetch's --out folder
CHECKSUMS = ("md5", "sha256")


class ManifestError(UserError):
    """A manifest that cannot be used; the message names the file and the row."""


@dataclass(frozen=True)
class Entry:
    """One slide. `location`: an object URL (s3://, https://, ...), a URL ending in '/' for a folder
    of objects (a DICOM series), or idc://COLLECTION/NAME for an Imaging Data Commons slide, whose
    candidate series folders are `series` (else found through idc-index-data). `size` in bytes and
    `checksum` ("md5:HEX" or "sha256:HEX") of a single-object slide, where known."""

    name: str
    organ: str
    source: str
    location: str
    size: int | None = None
    checksum: str | None = None
    series: tuple[str, ...] = field(default=())

    @property
    def is_folder(self) -> bool:
        """Whether the slide is a folder of objects (a DICOM series) rather than one file."""
        return self.location.startswith("idc://") or self.location.endswith("/")


def _entry(row: dict, where: str) -> Entry:
    row = {k.strip().lower(): v for k, v in row.items() if k is not None}
    missing = [c for c in ("name", "location") if not str(row.get(c) or "").strip()]
    if missing:
        raise ManifestError(f"{where}: no {' or '.join(missing)}", "every row needs at least a name and a location")
    size = str(row.get("size") or "").strip()
    try:
        size_value = int(size) if size else None
    except ValueError:
        raise ManifestError(f"{where}: size {size!r} is not a whole number of bytes") from None
    checksum = str(row.get("checksum") or "").strip().lower() or None
    if checksum is not None and checksum.partition(":")[0] not in CHECKSUMS:
        raise ManifestError(f"{where}: checksum {checksum!r} is not md5:HEX or sha256:HEX")
    series = row.get("series") or ()
    series = tuple(series.split() if isinstance(series, str) else series)
    name = str(row["name"]).strip()
    if "/" in name or name in (".", "..") or name.startswith("."):
        raise ManifestError(f"{where}: name {name!r} is not a plain file name")
    return Entry(name, str(row.get("organ") or "").strip() or "unknown", str(row.get("source") or "").strip(),
                 str(row["location"]).strip(), size_value, checksum, series)


def parse(text: str, label: str, yaml_format: bool) -> list[Entry]:
    """The entries of a manifest's text; `label` names it in messages."""
    if yaml_format:
        import yaml

        try:
            rows = yaml.safe_load(text) or []
        except yaml.YAMLError as e:
            raise ManifestError(f"{label}: not valid YAML ({str(e).splitlines()[0]})") from e
        if isinstance(rows, dict):
            rows = rows.get("slides", [])
        if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
            raise ManifestError(f"{label}: expected a list of slides (name, organ, source, location, size, checksum)")
    else:
        rows = list(csv.DictReader(io.StringIO(text)))
    entries = [_entry(r, f"{label}: slide {i + 1}") for i, r in enumerate(rows)]
    if not entries:
        raise ManifestError(f"{label}: no slides listed")
    seen = set()
    for e in entries:
        if e.name in seen:
            raise ManifestError(f"{label}: slide {e.name!r} is listed twice")
        seen.add(e.name)
    return entries


def load(path) -> list[Entry]:
    """A manifest file: YAML (.yaml, .yml) or CSV (anything else) with a header row."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise ManifestError(f"{path}: cannot read it ({e.strerror or e})", "check the path given to {manifest}") from e
    return parse(text, str(path), path.suffix.lower() in (".yaml", ".yml"))


def study() -> list[Entry]:
    """The study's 40 slides, shipped in the package."""
    return parse(resources.files("engine.fetch").joinpath("study.yaml").read_text(), "the study's manifest", True)


def read_record(folder: Path) -> dict[str, Entry]:
    """The slides a fetch recorded in `folder`, by name; empty where it has no record."""
    path = Path(folder) / RECORD
    return {e.name: e for e in load(path)} if path.is_file() else {}


def write_record(folder: Path, entries: list[Entry]) -> Path:
    """Add or update `entries` in the record of `folder`, keeping the slides of earlier fetches."""
    folder = Path(folder)
    rows = {**read_record(folder), **{e.name: e for e in entries}}
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(COLUMNS)
    for e in rows.values():
        w.writerow([e.name, e.organ, e.source, e.location, "" if e.size is None else e.size, e.checksum or ""])
    path, tmp = folder / RECORD, folder / f".{RECORD}.tmp"
    tmp.write_text(buf.getvalue())
    tmp.replace(path)  # whole or not at all: the tiler reads it
    return path


def organs(folder: Path) -> dict[str, str]:
    """Each recorded slide's organ, by name (the slide's file or folder name without suffix); none
    where the folder's manifest.csv is not a fetch's record (a user's own file of that name)."""
    try:
        return {name: e.organ for name, e in read_record(folder).items()}
    except ManifestError as e:
        log.warning("no organs taken from %s: %s", Path(folder) / RECORD, e)
        return {}

