"""Where a patch store (or its QA folder) lives: a local path, which may be on a shared filesystem,
or an fsspec URL such as s3://bucket/patches.zarr.

Object-store credentials and endpoint come from the client library's standard environment; for
S3: AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or AWS_PROFILE, or an instance role), and
AWS_ENDPOINT_URL for S3-compatible servers (MinIO, Ceph, ...).
"""
from __future__ import annotations

import posixpath
import re
import shutil
from pathlib import Path

Location = Path | str  # a local path, or a URL kept as text

_SCHEME = re.compile(r"^([a-z][a-z0-9+.-]*):/+")
URL_HELP = ("check the URL, the network, and the credentials and endpoint in the environment "
            "(AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, ...)")


def _remote_protocols() -> set[str]:
    import fsspec

    return set(fsspec.available_protocols()) - {"file", "local"}


def location(value) -> Location:
    """A URL (s3://...) as text, a local path as a Path; also the argparse type of --out and
    --store. A URL that went through Path, which collapses its '//' (s3:/bucket/key), is restored,
    so that `type=Path` options elsewhere still reach the object store."""
    text = str(value)
    if text.startswith("file://"):
        return Path(text.removeprefix("file://"))
    m = _SCHEME.match(text)
    if m and m.group(1) in _remote_protocols():
        return f"{m.group(1)}://{text[m.end():]}"
    return Path(value)


def is_url(loc) -> bool:
    return isinstance(location(loc), str)


def _fs(url: str):
    import fsspec

    return fsspec.core.url_to_fs(url)


def exists(loc) -> bool:
    """Whether anything is there. For a URL this asks the server, so it raises where the server
    cannot be reached or refuses the credentials."""
    loc = location(loc)
    if isinstance(loc, Path):
        return loc.exists()
    fs, path = _fs(loc)
    return fs.exists(path)


def remove(loc) -> None:
    """Delete everything under `loc`."""
    loc = location(loc)
    if isinstance(loc, Path):
        shutil.rmtree(loc)
        return
    fs, path = _fs(loc)
    fs.rm(path, recursive=True)


def with_suffix(loc, suffix: str) -> Location:
    loc = location(loc)
    if isinstance(loc, Path):
        return loc.with_suffix(suffix)
    return posixpath.splitext(loc.rstrip("/"))[0] + suffix


def name(loc) -> str:
    loc = location(loc)
    return loc.name if isinstance(loc, Path) else posixpath.basename(loc.rstrip("/"))


def open_write(folder, filename: str):
    """A binary file to write, `filename` in `folder` (made if needed); use it in a `with`."""
    folder = location(folder)
    if isinstance(folder, Path):
        folder.mkdir(parents=True, exist_ok=True)
        return open(folder / filename, "wb")
    import fsspec

    return fsspec.open(f"{folder.rstrip('/')}/{filename}", "wb")
