"""Imaging Data Commons slides: idc://COLLECTION/NAME to the folder of the DICOM series whose
ContainerIdentifier (the slide's label, e.g. C3L-00004-21) is NAME.

IDC's index shipped offline (idc-index-data) lists series by patient, not by slide; the slide-level
index needs the network. So the candidates are the patient's series (listed in the study's manifest,
or looked up in idc-index-data where it is installed), and the choice is made at run time from the
first kilobytes of one instance of each candidate, read from the same bucket as the download.
"""
from __future__ import annotations

import functools
import io
import logging

from engine.errors import UserError

log = logging.getLogger("engine.fetch")
CONTAINER_IDENTIFIER = 0x00400512
HEADER_BYTES = 256 << 10  # the elements up to ContainerIdentifier; pixel data comes much later
INDEX_PACKAGE = "idc-index-data==25.0.5"


class IdcError(UserError):
    """An IDC slide that cannot be found."""


def parse_location(location: str) -> tuple[str, str]:
    """(collection, slide name) of idc://COLLECTION/NAME."""
    collection, _, name = location.removeprefix("idc://").partition("/")
    if not collection or not name:
        raise IdcError(f"{location}: not an IDC slide location",
                       "write it as idc://COLLECTION/SLIDE, e.g. idc://cptac_ccrcc/C3L-00004-21")
    return collection, name


@functools.lru_cache(maxsize=8)
def _collection_series(index_path: str, collection: str) -> tuple[tuple[str, str], ...]:
    """(PatientID, series folder) of every original slide-microscopy series of a collection: one
    read of the 75 MB index per collection, not per slide."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    t = pq.read_table(index_path, columns=["PatientID", "analysis_result_id", "aws_bucket", "crdc_series_uuid"],
                      filters=[("collection_id", "=", collection), ("Modality", "=", "SM")])
    t = t.filter(pc.is_null(t["analysis_result_id"]))
    return tuple((r["PatientID"], f"s3://{r['aws_bucket']}/{r['crdc_series_uuid']}/") for r in t.to_pylist())


def index_candidates(location: str) -> list[str]:
    """The series folders (s3://BUCKET/UUID/) of the slide's patient in idc-index-data's index: the
    patient ID is the start of the slide name (C3L-00004 of C3L-00004-21)."""
    collection, name = parse_location(location)
    try:
        import idc_index_data
    except ImportError:
        raise IdcError(f"{location}: finding an IDC slide that the manifest gives no series for needs IDC's index",
                       f"pip install {INDEX_PACKAGE} (about 80 MB), "
                       "or list the slide's series folders in the manifest") from None
    rows = _collection_series(str(idc_index_data.IDC_INDEX_PARQUET_FILEPATH), collection)
    return sorted(url for patient, url in rows if name.startswith(patient))


def container_identifier(header: bytes) -> str | None:
    """ContainerIdentifier of a DICOM file's first bytes (None where they do not reach it)."""
    from pydicom.filereader import read_partial

    try:
        ds = read_partial(io.BytesIO(header), stop_when=lambda tag, vr, length: tag > CONTAINER_IDENTIFIER)
    except Exception as e:  # cut in the middle of an element, or not DICOM at all
        log.debug("no DICOM header in %d bytes: %s", len(header), e)
        return None
    value = ds.get("ContainerIdentifier")
    return None if value is None else str(value)


def series_folder(location: str, candidates, fs) -> str:
    """The candidate folder whose series is the slide of `location`. `fs`: the filesystem of the
    candidates' URLs (an fsspec S3 filesystem)."""
    collection, name = parse_location(location)
    candidates = list(candidates) or index_candidates(location)
    if not candidates:
        raise IdcError(f"{location}: no slide-microscopy series of a patient named like {name} in {collection}",
                       "check the collection and the slide name")
    seen = []
    for url in candidates:
        objects = [o for o in fs.ls(url.removeprefix("s3://"), detail=True) if o.get("type") != "directory"]
        if not objects:
            seen.append(f"{url} is empty")
            continue
        smallest = min(objects, key=lambda o: o["size"])
        with fs.open(smallest["name"], "rb") as f:
            found = container_identifier(f.read(HEADER_BYTES))
        if found == name:
            log.info("%s: series %s", name, url)
            return url
        seen.append(f"{url} holds {found or 'no ContainerIdentifier'}")
    raise IdcError(f"{location}: none of the {len(candidates)} candidate series is slide {name} ({'; '.join(seen)})",
                   "check the slide name, or list its series folder as the location")
