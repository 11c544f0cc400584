"""engine.fetch against a real S3-protocol server on loopback (moto) holding small objects in the real
formats: a CAMELYON-style pyramidal TIFF and IDC-style DICOM series made from the shared CMU slide.
Whole slides land in place and a re-run leaves them; an interrupted download resumes; a corrupted
object is caught by its checksum and set aside; every other bad case is one line and the run goes on."""
from __future__ import annotations

import errno
import hashlib
import sys

import pytest

import histosynth as synth
from engine.discover import find_slides
from engine.fetch import download, slides
from engine.fetch.cli import main
from engine.fetch.manifest import ManifestError, load, organs, read_record, study
from engine.fetch.slides import fetch_slides
from engine.readers import open_slide
from tests.support.dicom import write_dicom_series
from tests.support.s3server import fresh_s3fs, s3_server

SERIES = {"C3L-00004-21": "ece62bac-a448-4589-b326-126723d50b14",
          "C3L-00004-26": "af13512c-0916-4aeb-bacf-5b15f8294fc3"}


@pytest.fixture(scope="module")
def objects(tmp_path_factory, cmu_crop):
    """The local originals: a CAMELYON-style TIFF and two DICOM series of one patient."""
    d = tmp_path_factory.mktemp("originals")
    tif = synth.write_tiled_tiff(d / "test_001.tif", synth.SynthSpec(width=1536, height=1024, seed=3, mpp=0.25),
                                 levels=(1, 2))
    rgb, mpp = cmu_crop
    series = {name: write_dicom_series(rgb[:512, :768], d / name, mpp=mpp, container=name, levels=2) for name in SERIES}
    return tif, series


@pytest.fixture(scope="module")
def server():
    with s3_server("camelyon-dataset", "idc-open-data") as fs:
        yield fs


@pytest.fixture()
def s3(server, objects):
    """The server with the originals put back (the tests corrupt and remove objects)."""
    tif, series = objects
    server.put(str(tif), "camelyon-dataset/CAMELYON16/images/test_001.tif")
    for name, files in series.items():
        for f in files:
            server.put(str(f), f"idc-open-data/{SERIES[name]}/{f.name}")
    server.invalidate_cache()
    return server


def _sha256(path) -> str:
    return "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()


def _manifest(tmp_path, objects, checksum=None) -> list:
    tif = objects[0]
    candidates = " ".join(f"s3://idc-open-data/{u}/" for u in SERIES.values())
    text = ("name,organ,source,location,size,checksum,series\n"
            f"test_001,lymph_node,camelyon16,s3://camelyon-dataset/CAMELYON16/images/test_001.tif,{tif.stat().st_size},"
            f"{checksum or _sha256(tif)},\n"
            f"C3L-00004-26,kidney,idc,idc://cptac_ccrcc/C3L-00004-26,,,{candidates}\n")
    (tmp_path / "m.csv").write_text(text)
    return load(tmp_path / "m.csv")


def test_study_manifest_lists_the_40_slides():
    entries = study()
    assert len(entries) == 40
    by_organ = {}
    for e in entries:
        by_organ.setdefault(e.organ, []).append(e.name)
    assert {k: len(v) for k, v in by_organ.items()} == {"lymph_node": 10, "kidney": 10, "lung": 10, "colon": 10}
    assert by_organ["lymph_node"][0] == "test_001" and by_organ["kidney"][-1] == "C3L-00079-26"
    assert by_organ["colon"][0] == "MSB-00241-01-05" and by_organ["lung"][-1] == "C3L-00093-26"
    for e in entries:
        if e.source == "idc":
            assert e.location.startswith("idc://") and e.series and all(s.startswith("s3://idc-open-data/")
                                                                        for s in e.series)
        else:
            assert e.location == f"s3://camelyon-dataset/CAMELYON16/images/{e.name}.tif"


def test_fetch_lands_whole_slides_and_a_rerun_does_nothing(s3, objects, tmp_path):
    out = tmp_path / "slides"
    entries = _manifest(tmp_path, objects)
    summary = fetch_slides(entries, out, show_progress=False)
    assert summary.count("fetched") == 2 and summary.count("failed") == 0, summary.text()
    tif, series = objects
    assert (out / "test_001.tif").read_bytes() == tif.read_bytes()
    # the candidate whose ContainerIdentifier is the slide's name, not the patient's other series
    assert sorted(p.name for p in (out / "C3L-00004-26").iterdir()) == ["level-0.dcm", "level-1.dcm"]
    assert (out / "C3L-00004-26" / "level-0.dcm").read_bytes() == series["C3L-00004-26"][0].read_bytes()
    record = read_record(out)
    assert record["test_001"].organ == "lymph_node" and record["C3L-00004-26"].organ == "kidney"
    assert record["test_001"].size == tif.stat().st_size
    assert find_slides(out) == ([out / "C3L-00004-26", out / "test_001.tif"], [])
    with open_slide(out / "C3L-00004-26") as s:
        assert s.backend == "wsidicom" and s.dimensions == (768, 512)
    again = fetch_slides(entries, out, show_progress=False)
    assert again.count("present") == 2 and again.n_bytes == 0


def test_interrupted_download_resumes(s3, objects, tmp_path, monkeypatch):
    tif = objects[0]
    entries = _manifest(tmp_path, objects)[:1]
    monkeypatch.setattr(download, "CHUNK", 64 << 10)
    real = download.fetch_object

    def drop_after_first_chunk(obj, dest, rejected, on_bytes):
        def count(n):
            on_bytes(n)
            raise ConnectionResetError("connection reset by peer")

        return real(obj, dest, rejected, count)

    monkeypatch.setattr("engine.fetch.slides.fetch_object", drop_after_first_chunk)
    out = tmp_path / "slides"
    first = fetch_slides(entries, out, show_progress=False)
    assert first.count("failed") == 1 and "cannot reach the server (ConnectionResetError" in first.results[0].error
    part = out / ".partial" / "test_001.tif.part"
    assert part.stat().st_size == 64 << 10 and not (out / "test_001.tif").exists()
    monkeypatch.setattr("engine.fetch.slides.fetch_object", real)
    second = fetch_slides(entries, out, show_progress=False)
    assert second.count("fetched") == 1 and second.n_bytes == tif.stat().st_size - (64 << 10)
    assert (out / "test_001.tif").read_bytes() == tif.read_bytes() and not part.exists()


def test_corrupted_object_is_caught_and_set_aside(s3, objects, tmp_path, capsys):
    tif = objects[0]
    data = bytearray(tif.read_bytes())
    data[len(data) // 2] ^= 0xFF
    s3.pipe("camelyon-dataset/CAMELYON16/images/test_001.tif", bytes(data))
    _manifest(tmp_path, objects)  # the manifest carries the original's checksum
    out = tmp_path / "slides"
    assert main(["--manifest", str(tmp_path / "m.csv"), "--out", str(out), "--quiet"]) == 1
    text = capsys.readouterr().out
    assert "slides: 1 fetched, 0 already there, 1 failed" in text
    assert "test_001 (s3://camelyon-dataset/CAMELYON16/images/test_001.tif): " in text and "checksum mismatch" in text
    assert not (out / "test_001.tif").exists()
    assert (out / ".rejected" / "test_001.tif").read_bytes() == bytes(data)
    assert find_slides(out)[0] == [out / "C3L-00004-26"]  # the set-aside file is never a slide
    assert "test_001" not in read_record(out)


def test_missing_object_full_disk_and_offline_each_fail_alone(s3, objects, tmp_path, monkeypatch):
    entries = _manifest(tmp_path, objects)
    s3.rm("camelyon-dataset/CAMELYON16/images/test_001.tif")
    out = tmp_path / "slides"
    summary = fetch_slides(entries, out, show_progress=False)
    assert [r.status for r in summary.results] == ["failed", "fetched"]
    assert "no such object" in summary.results[0].error

    real_open = open

    def full_disk(path, mode="r", *a, **k):
        f = real_open(path, mode, *a, **k)
        if "b" in mode and "r" not in mode.replace("r+", "w"):
            def write(_):
                raise OSError(errno.ENOSPC, "No space left on device")
            f.write = write
        return f

    s3.put(str(objects[0]), "camelyon-dataset/CAMELYON16/images/test_001.tif")
    monkeypatch.setattr(download, "open", full_disk, raising=False)
    summary = fetch_slides(entries, out, show_progress=False)
    assert summary.results[0].status == "failed" and "no space left on the disk" in summary.results[0].error
    assert summary.results[1].status == "present"  # nothing already downloaded is lost
    monkeypatch.undo()

    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # nothing listens there
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    fresh_s3fs()
    summary = fetch_slides(entries, out, show_progress=False)
    fresh_s3fs()
    assert summary.results[0].status == "failed" and "cannot reach 127.0.0.1:9" in summary.results[0].error
    assert summary.results[1].status == "present" and (out / "C3L-00004-26" / "level-0.dcm").is_file()


def test_offline_is_said_once_per_host_and_other_failures_keep_their_line(tmp_path, monkeypatch, capsys, caplog):
    """Eight slides on two buckets of a server that cannot be reached: one slide of each bucket is
    tried, and one line says which host, how many slides and that the same command resumes; a
    slide that fails for its own reason keeps its own line."""
    candidates = " ".join(f"s3://idc-open-data/{u}/" for u in SERIES.values())
    rows = [f"test_{i:03d},lymph_node,camelyon16,s3://camelyon-dataset/CAMELYON16/images/test_{i:03d}.tif,,,"
            for i in range(1, 7)]
    rows += [f"{name},kidney,idc,idc://cptac_ccrcc/{name},,,{candidates}" for name in SERIES]
    rows += ["odd,kidney,idc,idc://no-slide-name,,,"]
    (tmp_path / "m.csv").write_text("name,organ,source,location,size,checksum,series\n" + "\n".join(rows) + "\n")
    tried = []
    real = slides.objects_of
    monkeypatch.setattr(slides, "objects_of", lambda e: tried.append(e.name) or real(e))
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # nothing listens there
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    fresh_s3fs()
    try:
        code = main(["--manifest", str(tmp_path / "m.csv"), "--out", str(tmp_path / "slides"), "--quiet",
                     "--workers", "1"])
    finally:
        fresh_s3fs()
    assert code == 1
    out = capsys.readouterr().out
    assert "slides: 0 fetched, 0 already there, 9 failed" in out
    assert [line for line in out.splitlines() if line.startswith("failed:")] == [
        "failed: odd (idc://no-slide-name): idc://no-slide-name: not an IDC slide location; write it as "
        "idc://COLLECTION/SLIDE, e.g. idc://cptac_ccrcc/C3L-00004-21",
        "failed: 8 slide(s) not fetched: cannot reach 127.0.0.1:9 (EndpointConnectionError); check the network, "
        "then run the same command again to resume (what arrived is kept)"]
    assert tried == ["test_001", "C3L-00004-21", "odd"]  # one slide of each bucket, then the one of its own
    assert [r.getMessage() for r in caplog.records if r.levelname == "ERROR"] == [
        "odd (idc://no-slide-name): idc://no-slide-name: not an IDC slide location; write it as "
        "idc://COLLECTION/SLIDE, e.g. idc://cptac_ccrcc/C3L-00004-21"]


def test_bad_destination_and_manifest_are_one_line(tmp_path, capsys, caplog):
    (tmp_path / "file").write_text("")
    assert main(["seed", "--out", str(tmp_path / "file" / "slides"), "--quiet"]) == 2
    assert "cannot write there" in caplog.text
    (tmp_path / "bad.csv").write_text("name,organ,location,size\nx,lung,s3://b/x.svs,big\n")
    with pytest.raises(ManifestError, match=r"bad.csv: slide 1: size 'big' is not a whole number"):
        load(tmp_path / "bad.csv")
    # not a fetch's record: the tiler takes no organs from it
    (tmp_path / "manifest.csv").write_text("a user's own notes\n")
    assert organs(tmp_path) == {} and "no organs taken from" in caplog.text
    (tmp_path / "dup.yaml").write_text("- {name: a, location: s3://b/a.svs}\n- {name: a, location: s3://b/b.svs}\n")
    with pytest.raises(ManifestError, match="listed twice"):
        load(tmp_path / "dup.yaml")


def test_idc_slide_found_through_the_index(s3, objects, tmp_path, monkeypatch):
    """Without series in the manifest, the patient's series come from idc-index-data's table (here
    a small one of the same columns, as the real one is 75 MB) and the header picks the slide."""
    import types

    import pyarrow as pa
    import pyarrow.parquet as pq

    from engine.fetch.manifest import Entry

    rows = [("cptac_ccrcc", "C3L-00004", "SM", None, "idc-open-data", SERIES["C3L-00004-21"]),
            ("cptac_ccrcc", "C3L-00004", "SM", None, "idc-open-data", SERIES["C3L-00004-26"]),
            ("cptac_ccrcc", "C3L-00004", "SM", "an-analysis", "idc-open-data", "not-this-one"),
            ("cptac_ccrcc", "C3L-00010", "SM", None, "idc-open-data", "nor-this-one"),
            ("cptac_lscc", "C3L-00004", "SM", None, "idc-open-data", "nor-this")]
    cols = ["collection_id", "PatientID", "Modality", "analysis_result_id", "aws_bucket", "crdc_series_uuid"]
    table = pa.table({c: pa.array([r[i] for r in rows], pa.string()) for i, c in enumerate(cols)})
    pq.write_table(table, tmp_path / "idc_index.parquet")
    monkeypatch.setitem(sys.modules, "idc_index_data",
                        types.SimpleNamespace(IDC_INDEX_PARQUET_FILEPATH=tmp_path / "idc_index.parquet"))
    r = fetch_slides([Entry("C3L-00004-21", "kidney", "idc", "idc://cptac_ccrcc/C3L-00004-21")], tmp_path / "slides",
                     show_progress=False)
    assert r.count("fetched") == 1, r.text()
    got = (tmp_path / "slides" / "C3L-00004-21" / "level-0.dcm").read_bytes()
    assert got == objects[1]["C3L-00004-21"][0].read_bytes()


def test_idc_slide_without_series_asks_for_the_index(tmp_path, monkeypatch):
    from engine.fetch.manifest import Entry
    from engine.fetch.sources import idc

    monkeypatch.setitem(sys.modules, "idc_index_data", None)  # as where it is not installed
    with pytest.raises(idc.IdcError, match=r"pip install idc-index-data==25.0.5"):
        idc.series_folder("idc://cptac_ccrcc/C3L-00004-21", (), None)
    r = fetch_slides([Entry("C3L-00004-21", "kidney", "idc", "idc://cptac_ccrcc/C3L-00004-21")], tmp_path,
                     show_progress=False)
    assert r.count("failed") == 1 and "pip install idc-index-data" in r.results[0].error
