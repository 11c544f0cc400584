"""A manifest's slides into a folder: each slide's objects found (engine.fetch.sources for idc://),
downloaded in parallel (engine.fetch.download), and moved into place only when whole, so that the
tiler never sees half a slide. One bad slide is one failed line; the others go on.

    OUT/NAME.tif          a single-file slide            OUT/.partial/   what is still arriving
    OUT/NAME/*.dcm        a DICOM series: one slide      OUT/.rejected/  files that failed their checksum
    OUT/manifest.csv      what was fetched, with each slide's organ (read by the tiler)
"""
from __future__ import annotations

import dataclasses
import logging
import posixpath
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from engine.errors import UserError, disk_full
from engine.fetch import download
from engine.fetch.download import RemoteObject, describe, fetch_object, filesystem
from engine.fetch.manifest import Entry, write_record
from engine.fetch.sources import idc
from engine.progress import Progress

log = logging.getLogger("engine.fetch")
PARTIAL, REJECTED = ".partial", ".rejected"
MB = 1_000_000  # the progress bar counts whole MB, as the summary does


class OutError(UserError):
    """A destination folder that cannot be written."""


@dataclass(frozen=True)
class FetchConfig:
    workers: int = 4  # slides fetched at once: enough to fill a link, few enough for one disk


@dataclass(frozen=True)
class SlideFetch:
    name: str
    status: str  # fetched | present | failed
    n_bytes: int = 0  # transferred by this run
    error: str = ""
    entry: Entry | None = None  # with the size and checksum verified, where one object
    shared: str = ""  # a cause that failed other slides the same way (download.shared_cause), said once for all


def slide_path(entry: Entry, out: Path) -> Path:
    """Where the slide lands: a folder for a series, else NAME plus the object's suffix."""
    if entry.is_folder:
        return out / entry.name
    return out / (entry.name + posixpath.splitext(entry.location.split("?")[0])[1].lower())


def _folder_objects(url: str) -> list[tuple[RemoteObject, str]]:
    fs, path = filesystem(url)
    listing = [o for o in fs.ls(path, detail=True) if o.get("type") != "directory"]
    if not listing:
        raise FileNotFoundError(f"{url} holds no objects")
    proto = url.split("://")[0]
    return [(describe(f"{proto}://{o['name']}", info=o), posixpath.basename(o["name"])) for o in listing]


def objects_of(entry: Entry) -> list[tuple[RemoteObject, str]]:
    """The slide's objects with their file names (asks the server: sizes, checksums, listings)."""
    if entry.location.startswith("idc://"):
        fs, _ = filesystem("s3://")
        return _folder_objects(idc.series_folder(entry.location, entry.series, fs))
    if entry.is_folder:
        return _folder_objects(entry.location)
    return [(describe(entry.location, entry.size, entry.checksum), slide_path(entry, Path()).name)]


def server(entry: Entry) -> str:
    """Where the slide's objects are asked for (scheme and bucket or host): a server that cannot be
    reached fails all its slides."""
    url = entry.series[0] if entry.location.startswith("idc://") and entry.series else entry.location
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


ALL = "*"  # the key of `stopped` whose cause (a full disk) stops every slide


def fetch_slide(entry: Entry, out: Path, on_bytes=lambda n: None, stopped: dict[str, str] | None = None) -> SlideFetch:
    """Fetch one slide into `out` (skipped where already whole); never raises. `stopped`: causes
    that fail every slide after them the same way, by server (or ALL); a slide they cover is not
    tried, and a slide that meets one adds it."""
    final = slide_path(entry, out)
    if final.exists():
        return SlideFetch(entry.name, "present", entry=entry)
    stopped = {} if stopped is None else stopped
    cause = stopped.get(ALL) or stopped.get(server(entry))
    if cause:
        return SlideFetch(entry.name, "failed", error=f"{entry.name}: not tried: {cause}", shared=cause)
    stage, rejected = out / PARTIAL, out / REJECTED
    try:
        objects = objects_of(entry)
        if entry.is_folder:
            n = sum(fetch_object(obj, stage / entry.name / fname, rejected / entry.name, on_bytes)
                    for obj, fname in objects)
            (stage / entry.name).replace(final)
            done = entry
        else:
            obj = objects[0][0]
            n = fetch_object(obj, stage / final.name, rejected, on_bytes)
            (stage / final.name).replace(final)
            done = dataclasses.replace(entry, size=obj.size, checksum=obj.checksum)
    except Exception as e:  # one line per slide whatever it was; the others go on
        log.debug("%s", entry.name, exc_info=True)
        cause = download.shared_cause(e)
        if cause:  # said once, in the summary, for all the slides it stops
            # setdefault is one atomic step under the GIL, so the fetch threads share the dict without a
            # lock; it hands back this very string only to the first slide that met the cause.
            first = stopped.setdefault(ALL if disk_full(e) else server(entry), cause)
            if first is cause:
                log.info("%s; not trying the other slides it concerns", cause.partition(";")[0])
            return SlideFetch(entry.name, "failed", error=f"{entry.name} ({entry.location}): {cause}", shared=first)
        msg = f"{entry.name} ({entry.location}): {download.reason(e)}"
        log.error("%s", msg)
        return SlideFetch(entry.name, "failed", error=msg)
    log.info("%s: %.1f MB", entry.name, n / MB)
    return SlideFetch(entry.name, "fetched", n, entry=done)


def check_out(out: Path) -> None:
    """Stop at once where `out` cannot take files: every slide would fail the same way."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise OutError(f"{out}: cannot write there ({e.strerror or e})",
                       "choose another {out} or fix its permissions") from e


@dataclass
class FetchSummary:
    results: list[SlideFetch]
    seconds: float
    out: Path

    def count(self, status: str) -> int:
        return sum(r.status == status for r in self.results)

    @property
    def n_bytes(self) -> int:
        return sum(r.n_bytes for r in self.results)

    def text(self) -> str:
        rate = self.n_bytes / MB / self.seconds if self.seconds > 0 else 0.0
        lines = [f"slides: {self.count('fetched')} fetched, {self.count('present')} already there, "
                 f"{self.count('failed')} failed",
                 f"data: {self.n_bytes / MB:.1f} MB in {self.seconds:.1f} s ({rate:.1f} MB/s)",
                 f"folder: {self.out}"]
        failed = [r for r in self.results if r.status == "failed"]
        shared = Counter(r.shared for r in failed if r.shared)
        return "\n".join(lines + [f"failed: {r.error}" for r in failed if not r.shared]
                         + [f"failed: {n} slide(s) not fetched: {cause}, then run the same command again to resume "
                            "(what arrived is kept)" for cause, n in shared.items()])


def fetch_slides(entries: list[Entry], out, cfg: FetchConfig = FetchConfig(),
                 show_progress: bool | None = None) -> FetchSummary:
    """Fetch `entries` into the folder `out`, `cfg.workers` slides at a time, with a progress bar
    in MB (rate in MB/s); records the slides that are there in OUT/manifest.csv."""
    out = Path(out)
    check_out(out)
    lock, pending = threading.Lock(), [0]
    t0 = time.perf_counter()
    with Progress(None, "fetch", "MB", show=show_progress) as bar:

        def on_bytes(n: int) -> None:
            with lock:
                pending[0] += n
                whole, pending[0] = divmod(pending[0], MB)
                if whole:
                    bar.update(whole)

        with ThreadPoolExecutor(max(1, cfg.workers), thread_name_prefix="fetch") as pool:
            stopped: dict[str, str] = {}
            results = list(pool.map(lambda e: fetch_slide(e, out, on_bytes, stopped), entries))
    there = [r.entry for r in results if r.entry is not None]
    if there:
        write_record(out, there)
    return FetchSummary(results, time.perf_counter() - t0, out)
