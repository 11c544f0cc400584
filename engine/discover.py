"""Finding slides in a folder, naming them in a store, and recognising them again on resume."""
from __future__ import annotations

import hashlib
import logging
from collections import Counter
from pathlib import Path

from engine.errors import UserError
from engine.fetch.manifest import RECORD, organs
from engine.readers import SLIDE_SUFFIXES
from engine.readers.dicom import DICOM_SUFFIX

log = logging.getLogger("engine.discover")


def find_slides(folder: Path) -> tuple[list[Path], list[Path]]:
    """(slides, ignored): files under `folder` with a slide suffix, and the other files, sorted.
    A folder holding several .dcm files is one slide (a DICOM series: an instance per level), a
    lone .dcm file is one too. Hidden files and folders (a fetch's .partial and .rejected) are
    skipped, and so is the fetch's record (manifest.csv at the top)."""
    folder = Path(folder)
    files = sorted(p for p in folder.rglob("*") if p.is_file()
                   and not any(part.startswith(".") for part in p.relative_to(folder).parts))
    files = [p for p in files if p != folder / RECORD]
    dicom = Counter(p.parent for p in files if p.suffix.lower() == DICOM_SUFFIX)
    series = {d for d, n in dicom.items() if n > 1}
    slides = sorted({p.parent if p.parent in series else p for p in files if p.suffix.lower() in SLIDE_SUFFIXES})
    return slides, [p for p in files if p.suffix.lower() not in SLIDE_SUFFIXES]


class SlideFolderError(UserError):
    """A folder that holds no slides to read."""


def slide_files(slides_dir: Path) -> list[Path]:
    """The slides under `slides_dir`; no such folder or no slide in it stops the run."""
    if not slides_dir.is_dir():
        raise SlideFolderError(f"{slides_dir}: no such folder", "point {slides} at a folder of slides")
    paths, ignored = find_slides(slides_dir)
    if ignored:
        log.warning("ignoring %d file(s) without a slide suffix: %s", len(ignored),
                    ", ".join(p.name for p in ignored[:5]))
    if not paths:
        raise SlideFolderError(f"{slides_dir}: no slides found (looked for {', '.join(sorted(SLIDE_SUFFIXES))})",
                               "point {slides} at a folder of slides")
    return paths


def slide_name(path: Path) -> str:
    """A slide's name: a file's stem, a DICOM series folder's name."""
    return path.name if path.is_dir() else path.stem


def slide_ids(paths: list[Path], root: Path) -> dict[Path, str]:
    """The slide's name, unless two slides share it; then their paths relative to `root` (with '/'
    as '__'), which are unique and stay the same when the folder is tiled again."""
    stems = Counter(slide_name(p) for p in paths)
    ids = {}
    for p in paths:
        ids[p] = slide_name(p) if stems[slide_name(p)] == 1 else p.relative_to(root).as_posix().replace("/", "__")
    return ids


def slide_organs(paths: list[Path], root: Path) -> dict[Path, str]:
    """The organ of each slide that the fetch's record in `root` names (engine.fetch)."""
    known = organs(root)
    return {p: known[slide_name(p)] for p in paths if slide_name(p) in known}


def match_names(names, paths: list[Path], root: Path) -> dict[str, list[Path]]:
    """The files each slide name may refer to: its file name, stem, path relative to `root`, or
    id in a store (`slide_ids`). More than one file means the name is ambiguous."""
    ids = slide_ids(paths, root)
    index: dict[str, set[Path]] = {}
    for p in paths:
        for key in (p.name, slide_name(p), p.relative_to(root).as_posix(), ids[p]):
            index.setdefault(key, set()).add(p)
    return {n: sorted(index.get(n, ())) for n in names}


def fingerprint(path: Path, span: int = 1 << 20) -> str:
    """Size plus a hash of the first and last MiB: cheap on 3 GB slides, and changes when a file
    is replaced or re-copied incompletely. A DICOM series folder: the same over its files."""
    if path.is_dir():
        h = hashlib.sha256()
        files = sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith("."))
        for p in files:
            h.update(f"{p.name}={fingerprint(p, span)};".encode())
        return f"{sum(p.stat().st_size for p in files)}:{h.hexdigest()[:32]}"
    size = path.stat().st_size
    h = hashlib.sha256(str(size).encode())
    with open(path, "rb") as f:
        h.update(f.read(span))
        if size > span:
            f.seek(max(span, size - span))
            h.update(f.read(span))
    return f"{size}:{h.hexdigest()[:32]}"
