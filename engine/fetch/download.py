"""One object of an object store (or any fsspec URL) to a local file: resumed from a partial file,
verified against its size and checksum, and set aside where it fails the checksum.

A file is written as NAME.part and becomes NAME only once verified, so a file without .part is
whole and a re-run skips it without asking the server.
"""
from __future__ import annotations

import hashlib
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from engine.errors import UserError, disk_full

log = logging.getLogger("engine.fetch")
CHUNK = 8 << 20
_MD5 = re.compile(r"^[0-9a-f]{32}$")


class DownloadError(UserError):
    """An object that could not be fetched whole and verified; the message says why."""


@dataclass(frozen=True)
class RemoteObject:
    url: str  # fsspec URL
    size: int | None  # bytes, where known
    checksum: str | None  # "md5:HEX" or "sha256:HEX", where known


def filesystem(url: str):
    """(fsspec filesystem, path) of `url`. S3 is anonymous unless credentials are in the
    environment: the study's buckets are public, and anonymous requests need no account."""
    import fsspec

    options = {}
    if url.startswith("s3://"):
        options["anon"] = not (os.environ.get("AWS_ACCESS_KEY_ID") or os.environ.get("AWS_PROFILE"))
    return fsspec.core.url_to_fs(url, **options)


def etag_checksum(info: dict) -> str | None:
    """An S3 object's ETag as "md5:HEX" where it is one (single-part uploads); multipart ETags
    are not a hash of the content."""
    etag = str(info.get("ETag") or info.get("etag") or "").strip('"').lower()
    return f"md5:{etag}" if _MD5.match(etag) else None


def describe(url: str, size: int | None = None, checksum: str | None = None, info: dict | None = None) -> RemoteObject:
    """The object at `url` with the size and checksum given, else the server's (its listing
    `info`, or a request for it)."""
    if info is None and (size is None or checksum is None):
        fs, path = filesystem(url)
        info = fs.info(path)
    info = info or {}
    return RemoteObject(url, size if size is not None else info.get("size"), checksum or etag_checksum(info))


def _hasher(checksum: str | None):
    return hashlib.new(checksum.partition(":")[0]) if checksum else None


def part_path(dest: Path) -> Path:
    return dest.with_name(dest.name + ".part")


def fetch_object(obj: RemoteObject, dest: Path, rejected: Path,
                 on_bytes: Callable[[int], None] = lambda n: None) -> int:
    """Download `obj` to `dest`, resuming `dest`.part; returns the bytes transferred (0 where
    `dest` is already there). A file that fails its checksum is moved into the folder `rejected`
    and never becomes `dest`. Raises DownloadError (or OSError from the network or the disk)."""
    if dest.is_file():
        return 0
    part = part_path(dest)
    part.parent.mkdir(parents=True, exist_ok=True)
    have = part.stat().st_size if part.exists() else 0
    if obj.size is not None and have > obj.size:
        have = 0  # longer than the object: not a prefix of it
    hasher = _hasher(obj.checksum)
    if hasher and have:
        with open(part, "rb") as f:
            while block := f.read(CHUNK):
                hasher.update(block)
    fs, path = filesystem(obj.url)
    got = 0
    with fs.open(path, "rb", block_size=CHUNK) as src, open(part, "r+b" if have else "wb") as out:
        out.seek(have)
        out.truncate()
        src.seek(have)
        while block := src.read(CHUNK):
            out.write(block)
            if hasher:
                hasher.update(block)
            got += len(block)
            on_bytes(len(block))
    size = have + got
    if obj.size is not None and size != obj.size:
        raise DownloadError(f"{obj.url}: {size} bytes arrived, the object has {obj.size}; run again to resume")
    if hasher:
        actual = f"{obj.checksum.partition(':')[0]}:{hasher.hexdigest()}"
        if actual != obj.checksum:
            rejected.mkdir(parents=True, exist_ok=True)
            aside = rejected / dest.name
            part.replace(aside)
            raise DownloadError(f"{obj.url}: checksum mismatch (expected {obj.checksum}, got {actual}); "
                                f"set aside as {aside}, never used",
                                "run again to download it anew; if it fails again, the source or the manifest is wrong")
    part.replace(dest)
    return got


def reason(e: BaseException) -> str:
    """What went wrong in a download, in a few words for the one line a failed slide gets."""
    if isinstance(e, UserError):
        return str(e)
    if isinstance(e, FileNotFoundError):
        return f"no such object ({e.filename or e})"
    if isinstance(e, PermissionError):
        return f"not allowed ({e}); check the credentials or the folder's permissions"
    return f"{type(e).__name__}: {_first_line(e)}"


def shared_cause(e: BaseException) -> str | None:
    """What fails every slide after `e` the same way, with what to do: a full disk, or a server that
    cannot be reached (named by its host); None for a cause of the slide's own."""
    if disk_full(e):
        return "no space left on the disk; free space there or choose another --out"
    text = _first_line(e)
    if isinstance(e, (ConnectionError, TimeoutError)) or "connect" in text.lower() or "resolve" in text.lower():
        host = _HOST.search(text)
        where = host.group(1) or host.group(2) if host else "the server"
        return f"cannot reach {where} ({type(e).__name__}); check the network"
    return None


# the host in a client's message: "...endpoint URL: "https://HOST/key"", or "Cannot connect to host HOST:443 ..."
_HOST = re.compile(r"https?://([^/\s\"']+)|host ([^\s:/]+(?::\d+)?)")


def _first_line(e: BaseException) -> str:
    return str(e).strip().splitlines()[0] if str(e).strip() else ""
