"""Finding slides in a folder, naming them in a store, and recognising them again on resume."""
from __future__ import annotations

import hashlib
import logging
from collections import Counter
from pathlib import Path

from engine.errors import UserError

log = logging.getLogger("engine.discover")

SLIDE_SUFFIXES = {
    ".svs", ".tif", ".tiff", ".ndpi", ".mrxs", ".scn", ".bif", ".vms", ".vmu", ".svslide", ".dcm",
    ".png", ".jpg", ".jpeg",
}


def find_slides(folder: Path) -> tuple[list[Path], list[Path]]:
    """(slides, ignored): files under `folder` with a slide suffix, and the other files, sorted."""
    files = sorted(p for p in Path(folder).rglob("*") if p.is_file() and not p.name.startswith("."))
    slides = [p for p in files if p.suffix.lower() in SLIDE_SUFFIXES]
    return slides, [p for p in files if p.suffix.lower() not in SLIDE_SUFFIXES]


class SlideFolderError(UserError):
    """A folder that holds no slides to read."""


def slide_files(slides_dir: Path) -> list[Path]:
    """The slides under `slides_dir`; no such folder or no slide in it stops the run."""
    if not slides_dir.is_dir():
        raise SlideFolderError(f"{slides_dir}: no such folder", "point {slides} at a folder of slides")
    paths, ignored = find_slides(slides_dir)
    if ignored:
        log.warning("ignoring %d file(s) without a slide suffix: %s", len(ignored), ", ".join(p.name for p in ignored[:5]))
    if not paths:
        raise SlideFolderError(f"{slides_dir}: no slides found (looked for {', '.join(sorted(SLIDE_SUFFIXES))})",
                               "point {slides} at a folder of slides")
    return paths


def slide_ids(paths: list[Path], root: Path) -> dict[Path, str]:
    """The file stem, unless two files share it; then their paths relative to `root` (with '/'
    as '__'), which are unique and stay the same when the folder is tiled again."""
    stems = Counter(p.stem for p in paths)
    ids = {}
    for p in paths:
        ids[p] = p.stem if stems[p.stem] == 1 else p.relative_to(root).as_posix().replace("/", "__")
    return ids


def match_names(names, paths: list[Path], root: Path) -> dict[str, list[Path]]:
    """The files each slide name may refer to: its file name, stem, path relative to `root`, or
    id in a store (`slide_ids`). More than one file means the name is ambiguous."""
    ids = slide_ids(paths, root)
    index: dict[str, set[Path]] = {}
    for p in paths:
        for key in (p.name, p.stem, p.relative_to(root).as_posix(), ids[p]):
            index.setdefault(key, set()).add(p)
    return {n: sorted(index.get(n, ())) for n in names}


def fingerprint(path: Path, span: int = 1 << 20) -> str:
    """Size plus a hash of the first and last MiB: cheap on 3 GB slides, and changes when a file
    is replaced or re-copied incompletely."""
    size = path.stat().st_size
    h = hashlib.sha256(str(size).encode())
    with open(path, "rb") as f:
        h.update(f.read(span))
        if size > span:
            f.seek(max(span, size - span))
            h.update(f.read(span))
    return f"{size}:{h.hexdigest()[:32]}"
