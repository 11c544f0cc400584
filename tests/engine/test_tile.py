"""The tiler end to end: real readers, real stores on disk, bad input that never stops a run."""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import histosynth as synth
from engine.check import patch_qc_reference
from engine.qc import REASONS, CheckParams, reasons_of
from engine.mask import INK, TISSUE, tissue_mask_reference
from engine.plan import PlanParams, plan_tiles_reference
from engine.qa import FAILED, INK_OUTLINE, KEPT, OUTLINE, qa_picture, reason_colours
from engine.readers import open_slide
from engine.store import PatchStore
from engine.tile import TileConfig, main, tile_slides

from tests.support.data import ROOT  # noqa: E402
from tests.support.filesystems import du, grow, small_filesystem
from tests.support.ink import HE as HE_DIR
from tests.support.tiling import ARGS
FAST = dict(workers=2, batch_size=8)


def expected_patches(path, cfg: TileConfig, backend: str = "openslide"):
    """The tiler's answer derived independently: numpy reference mask, plan and check on a
    direct read (OpenSlide where it opens the file)."""
    with open_slide(path, backend) as s:
        thumb = s.thumbnail(cfg.mask_downsample)
        mres = tissue_mask_reference(thumb, cfg.mask)
        size = cfg.plan.patch_size
        coords, _ = plan_tiles_reference(mres.mask, s.dimensions, size, cfg.plan.stride or size, cfg.plan.min_tissue)
        patches = (s.read_regions([tuple(c) for c in coords.tolist()], 0, (size, size)) if len(coords)
                   else np.zeros((0, size, size, 3), np.uint8))
    scores = patch_qc_reference(patches, mres.threshold, cfg.mask, cfg.check)
    keep = reasons_of(scores, cfg.check) == 0
    return coords[keep], patches[keep], scores["tissue"][keep]


def test_real_slide_exact(tmp_path, cmu_svs):
    slides = tmp_path / "slides"
    slides.mkdir()
    shutil.copy(cmu_svs, slides)
    cfg = TileConfig(**FAST)
    summary = tile_slides(slides, tmp_path / "p.zarr", cfg)
    assert summary.count("done") == 1 and summary.count("failed") == 0
    g = PatchStore.open(tmp_path / "p.zarr").slide("CMU-1-Small-Region")
    coords, patches, frac = expected_patches(cmu_svs, cfg)
    assert g.attrs["n_patches"] == len(coords) == 7  # seven 512 px tissue patches on this 2220x2967 slide
    np.testing.assert_array_equal(g["coords"][:], coords)
    np.testing.assert_array_equal(g["images"][:], patches)  # JPEG decoded by the same libjpeg-turbo
    np.testing.assert_allclose(g["tissue"][:], frac, atol=1e-6)
    assert (coords % 512 == 0).all() and (coords[:, 0] + 512 <= 2220).all() and (coords[:, 1] + 512 <= 2967).all()
    mask = g["mask"][:]
    ds = g["mask"].attrs["downsample"]
    centres = ((coords + 256) / np.array(ds)).astype(int)
    assert mask[centres[:, 1], centres[:, 0]].all()  # every patch centre lies in tissue
    assert g.attrs["mpp_x"] == pytest.approx(0.499) and g.attrs["mpp_source"] == "aperio.MPP"
    assert g.attrs["backend"] in ("tifffile", "cucim")
    assert (tmp_path / "p.qa" / "CMU-1-Small-Region.png").is_file()


def test_real_plain_tiff_without_mpp(tmp_path, kidney_tif):
    """A non-tiled, uncompressed IHC TIFF with no resolution tags and almost no tissue."""
    slides = tmp_path / "slides"
    slides.mkdir()
    shutil.copy(kidney_tif, slides)
    cfg = TileConfig(plan=PlanParams(256), **FAST)
    assert tile_slides(slides, tmp_path / "p.zarr", cfg).count("done") == 1
    g = PatchStore.open(tmp_path / "p.zarr").slide("kidney-48-5")
    coords, patches, _ = expected_patches(kidney_tif, cfg, backend="tifffile")  # OpenSlide refuses untiled TIFFs
    assert g.attrs["n_patches"] == len(coords) and g.attrs["mpp_source"] == "missing"
    np.testing.assert_array_equal(g["coords"][:], coords)
    np.testing.assert_array_equal(g["images"][:], patches)
    assert g["mask"][:].mean() < 0.2  # almost all background


def test_backends_write_the_same_store(tmp_path, svs_slide):
    slides = tmp_path / "slides"
    slides.mkdir()
    shutil.copy(svs_slide, slides)
    stores = {}
    for backend in ("tifffile", "openslide", "cucim"):
        tile_slides(slides, tmp_path / f"{backend}.zarr", TileConfig(backend=backend, qa=False, **FAST))
        stores[backend] = PatchStore.open(tmp_path / f"{backend}.zarr").slide("aperio")
    ref = stores["openslide"]
    assert ref.attrs["n_patches"] >= 4
    for b, g in stores.items():
        np.testing.assert_array_equal(g["coords"][:], ref["coords"][:])
        assert np.abs(g["images"][:].astype(int) - ref["images"][:]).max() <= 3, b


def test_target_mpp_reads_the_right_level_and_resizes(tmp_path, tiff_slide, svs_slide):
    slides = tmp_path / "slides"
    slides.mkdir()
    shutil.copy(tiff_slide, slides)  # 0.5 µm/px, levels 1, 2, 4
    shutil.copy(svs_slide, slides)  # 0.25 µm/px, levels 1, 4
    cfg = TileConfig(plan=PlanParams(256), mpp=1.0, qa=False, **FAST)
    assert tile_slides(slides, tmp_path / "p.zarr", cfg).count("done") == 2
    store = PatchStore.open(tmp_path / "p.zarr")
    cam, ape = store.slide("camelyon"), store.slide("aperio")
    # CAMELYON: 1.0 µm/px is exactly level 1: read 256 px there, no resize.
    assert (cam.attrs["level"], cam.attrs["read_size"], cam.attrs["tile0"]) == (1, 256, 512)
    with open_slide(tiff_slide, "openslide") as s:
        x, y = cam["coords"][0]
        direct = s.read_region((int(x), int(y)), 1, (256, 256))
    assert np.abs(cam["images"][0].astype(int) - direct).max() <= 3
    # Aperio at 0.25 µm/px: 4x is level 1 (downsample 4): read 256 there as well.
    assert (ape.attrs["level"], ape.attrs["read_size"], ape.attrs["tile0"]) == (1, 256, 1024)
    # 0.5 µm/px from the Aperio slide: level 0 decoded at 1/2 (JPEG's DCT scaling), 256 px read there;
    # with dct_scaling off, 512 px read at full size and resized to 256 (the reference).
    from PIL import Image

    cfg2 = TileConfig(plan=PlanParams(256), mpp=0.5, qa=False, **FAST)
    tile_slides(slides, tmp_path / "q.zarr", cfg2)
    g = PatchStore.open(tmp_path / "q.zarr").slide("aperio")
    assert (g.attrs["level"], g.attrs["decode_scale"], g.attrs["read_size"]) == (0, 2, 256)
    tile_slides(slides, tmp_path / "r.zarr", dataclasses.replace(cfg2, dct_scaling=False))
    ref = PatchStore.open(tmp_path / "r.zarr").slide("aperio")
    assert (ref.attrs["level"], ref.attrs["decode_scale"], ref.attrs["read_size"]) == (0, 1, 512)
    x, y = ref["coords"][0]
    with open_slide(svs_slide) as s:
        region = Image.fromarray(s.read_region((int(x), int(y)), 0, (512, 512)))
        want = np.asarray(region.resize((256, 256), Image.Resampling.LANCZOS))
    np.testing.assert_array_equal(ref["images"][0], want)
    # The same patches both ways, within what a different downsampling filter changes.
    np.testing.assert_array_equal(g["coords"][:], ref["coords"][:])
    diff = np.abs(g["images"][:].astype(int) - ref["images"][:])
    assert diff.mean() < 3 and np.percentile(diff, 99) < 30, (diff.mean(), np.percentile(diff, 99))


def test_stride_gives_overlapping_grid(tmp_path, tiff_slide):
    slides = tmp_path / "slides"
    slides.mkdir()
    shutil.copy(tiff_slide, slides)
    tile_slides(slides, tmp_path / "p.zarr", TileConfig(plan=PlanParams(512, 256), qa=False, **FAST))
    c = PatchStore.open(tmp_path / "p.zarr").slide("camelyon")["coords"][:]
    assert (c % 256 == 0).all() and ((c % 512) != 0).any()
    assert len(np.unique(c, axis=0)) == len(c)


def corrupt_copy(svs_slide, dest, tmp_path):
    """A copy of the slide with the source tile under the centre of one of its patches broken."""
    shutil.copy(svs_slide, dest)
    probe = tmp_path / "probe"
    probe.mkdir(exist_ok=True)
    shutil.copy(svs_slide, probe)
    tile_slides(probe, tmp_path / "probe.zarr", TileConfig(qa=False, **FAST))
    x, y = PatchStore.open(tmp_path / "probe.zarr").slide("aperio")["coords"][1] + 256
    with open_slide(svs_slide) as s:
        synth.corrupt_tile(dest, index=int(y // 240 * -(-s.dimensions[0] // 240) + x // 240))
    return dest


@pytest.mark.parametrize("backend", ["tifffile", "openslide"])
def test_corrupt_tile_costs_only_its_patches(tmp_path, svs_slide, backend):
    """cuCIM is not in this list: it returns undefined pixels for a corrupt JPEG tile instead of
    raising (seen with cucim 26.10), so only the patch check can catch what it returns."""
    slides = tmp_path / "slides"
    slides.mkdir()
    corrupt_copy(svs_slide, slides / "aperio.svs", tmp_path)
    tile_slides(slides, tmp_path / "p.zarr", TileConfig(backend=backend, qa=False, **FAST))
    bad = PatchStore.open(tmp_path / "p.zarr").slide("aperio")
    good = PatchStore.open(tmp_path / "probe.zarr").slide("aperio")
    lost = {(f["x"], f["y"]) for f in bad.attrs["failed_patches"]}
    assert 1 <= len(lost) <= 4  # the patches over one 240 px tile
    assert [tuple(c) for c in bad["coords"][:].tolist()] == [tuple(c) for c in good["coords"][:].tolist()
                                                             if tuple(c) not in lost]
    keep = [i for i, c in enumerate(good["coords"][:].tolist()) if tuple(c) not in lost]
    assert np.abs(bad["images"][:].astype(int) - good["images"][:][keep]).max() <= 3


@pytest.fixture()
def messy_folder(tmp_path, svs_slide, tiff_slide):
    """Every kind of trouble in one folder, beside two good slides."""
    d = tmp_path / "slides"
    (d / "a").mkdir(parents=True)
    (d / "b").mkdir()
    shutil.copy(svs_slide, d / "a" / "case.svs")  # same stem as b/case.tif
    shutil.copy(tiff_slide, d / "b" / "case.tif")
    (d / "notes.txt").write_text("not a slide")
    (d / "fake.svs").write_text("not a slide either")
    cut = d / "cut.svs"
    shutil.copy(svs_slide, cut)
    synth.truncate(cut, 0.4)
    corrupt_copy(svs_slide, d / "corrupt.svs", tmp_path)
    synth.write_tiled_tiff(d / "blank.tif", synth.SynthSpec(width=1536, height=1024, seed=5, tissue=False),
                           levels=(1, 4))
    return d


def test_bad_input_never_stops_the_run(tmp_path, messy_folder, caplog):
    out = tmp_path / "p.zarr"
    rc = main(["--slides", str(messy_folder), "--out", str(out), "--quiet", "--workers", "2"])
    assert rc == 1  # something failed
    store = PatchStore.open(out)
    assert set(store.slide_ids()) == {"a__case.svs", "b__case.tif", "corrupt", "blank"}
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 2 and all(len(e.splitlines()) == 1 for e in errors)
    assert any("fake.svs" in e for e in errors) and any("cut.svs" in e for e in errors)
    assert any("notes.txt" in r.getMessage() for r in caplog.records)  # told, not failed
    # No tissue: a complete group with 0 patches.
    assert store.slide("blank").attrs["n_patches"] == 0 and store.slide("blank")["images"].shape[0] == 0
    # The corrupt tile costs only the patches over it, recorded with their coordinates.
    bad, good = store.slide("corrupt"), store.slide("a__case.svs")
    failed = bad.attrs["failed_patches"]
    assert bad.attrs["n_failed"] == len(failed) >= 1 and "does not decode" in failed[0]["error"]
    lost = {(f["x"], f["y"]) for f in failed}
    want = [tuple(c) for c in good["coords"][:].tolist() if tuple(c) not in lost]
    assert [tuple(c) for c in bad["coords"][:].tolist()] == want
    # What was written before is intact: rerunning skips the complete slides and fails the same two.
    caplog.clear()
    assert main(["--slides", str(messy_folder), "--out", str(out), "--quiet"]) == 1
    assert len([r for r in caplog.records if r.levelname == "ERROR"]) == 2


def test_run_level_errors_are_one_line_exit_2(tmp_path, capsys, caplog, svs_slide):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["--slides", str(empty), "--out", str(tmp_path / "p.zarr")]) == 2
    assert "no slides found" in caplog.text and "--slides" in caplog.text
    assert main(["--slides", str(tmp_path / "nope"), "--out", str(tmp_path / "p.zarr")]) == 2
    slides = tmp_path / "s"
    slides.mkdir()
    shutil.copy(svs_slide, slides)
    blocker = tmp_path / "file"
    blocker.write_text("x")
    caplog.clear()
    assert main(["--slides", str(slides), "--out", str(blocker / "p.zarr")]) == 2
    assert "cannot write" in caplog.text
    assert main(["--slides", str(slides), "--out", str(tmp_path / "p.zarr"), "--patch-size", "0"]) == 2


def test_missing_mpp_only_matters_with_a_target(tmp_path):
    slides = tmp_path / "slides"
    slides.mkdir()
    synth.write_tiled_tiff(slides / "bare.tif", synth.SynthSpec(width=2048, height=2048, seed=6, mpp=None),
                           levels=(1, 2))
    assert main(["--slides", str(slides), "--out", str(tmp_path / "a.zarr"), "--quiet", "--no-qa"]) == 0
    assert PatchStore.open(tmp_path / "a.zarr").slide("bare").attrs["mpp_source"] == "missing"
    summary = tile_slides(slides, tmp_path / "b.zarr", TileConfig(mpp=1.0, qa=False))
    assert summary.count("failed") == 1
    assert "--assume-mpp" in summary.results[0].error and "bare.tif" in summary.results[0].error
    summary = tile_slides(slides, tmp_path / "c.zarr", TileConfig(mpp=1.0, assume_mpp=0.5, qa=False))
    g = PatchStore.open(tmp_path / "c.zarr").slide("bare")
    assert summary.count("done") == 1 and g.attrs["level"] == 1 and g.attrs["mpp_source"] == "--assume-mpp"


def test_other_parameters_never_overwrite(tmp_path, svs_slide, caplog):
    slides = tmp_path / "slides"
    slides.mkdir()
    shutil.copy(svs_slide, slides)
    out = tmp_path / "p.zarr"
    assert main(["--slides", str(slides), "--out", str(out), "--quiet"]) == 0
    before = PatchStore.open(out).slide("aperio")["images"][:]
    assert main(["--slides", str(slides), "--out", str(out), "--quiet", "--stride", "256"]) == 2
    assert "other parameters" in caplog.text and "--overwrite" in caplog.text
    np.testing.assert_array_equal(PatchStore.open(out).slide("aperio")["images"][:], before)


def _store_content(path):
    store = PatchStore.open(path)
    out = {}
    for sid in store.slide_ids():
        g = store.slide(sid)
        a = {k: v for k, v in g.attrs.items() if k not in ("created_by",)}
        out[sid] = (g["images"][:], g["coords"][:], g["tissue"][:], json.dumps(a, sort_keys=True))
    return out


def test_killed_run_resumes_redoing_only_unfinished_slides(tmp_path, svs_slide, tiff_slide):
    """A real `python -m engine.tile` process killed with SIGKILL once its first slide is
    complete; the same command then finishes the rest and gives the store a clean run gives."""
    slides = tmp_path / "slides"
    slides.mkdir()
    for i in range(3):
        shutil.copy(svs_slide, slides / f"s{i}.svs")
    shutil.copy(tiff_slide, slides / "t.tif")
    out = tmp_path / "p.zarr"
    cmd = [sys.executable, "-m", "engine.tile", "--slides", str(slides), "--out", str(out), "--quiet", "--workers", "1",
           "--batch-size", "2"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    first = out / "slides" / "s0" / "zarr.json"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if first.is_file() and '"complete"' in first.read_text():
            break
        time.sleep(0.02)
    killed = proc.poll() is None
    if killed:
        os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    resumed = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    if killed:
        assert "skipped (already complete)" in resumed.stdout and " 0 skipped" not in resumed.stdout
    clean = tmp_path / "clean.zarr"
    assert main(["--slides", str(slides), "--out", str(clean), "--quiet", "--no-qa"]) == 0
    a, b = _store_content(out), _store_content(clean)
    assert a.keys() == b.keys() == {"s0", "s1", "s2", "t"}
    for sid in a:
        for x, y in zip(a[sid][:3], b[sid][:3]):
            np.testing.assert_array_equal(x, y)


def test_full_disk_stops_the_run_once_and_keeps_the_store_valid(tmp_path, slides, reference, capsys, caplog):
    """A tmpfs with room for one slide: the first is kept whole, the one the disk fills up on is
    removed, the rest are not started, and one line says so; with space, the same command resumes
    and gives the store a run with room gives."""
    one_slide = du(reference / "slides" / "s0")
    with small_filesystem(tmp_path / "fs", one_slide * 3 // 2) as fs:
        cmd = ["--slides", str(slides), "--out", str(fs / "p.zarr"), *ARGS]
        assert main(cmd) == 1
        out = capsys.readouterr().out
        assert "slides: 1 done, 2 failed, 0 skipped (already complete), 1 not started" in out
        full = [line for line in out.splitlines() if "no space left" in line]
        assert full == [f"failed: {fs / 'p.zarr'}: no space left on the disk: s1 removed unfinished, 1 slide(s) not "
                        "started, 1 complete kept; free space there or choose another --out, then run the same "
                        "command again to resume"]
        assert "Errno 28" not in out + caplog.text
        store = PatchStore.open(fs / "p.zarr")
        assert store.slide_ids() == ["s0"] and store.status("s1") is None  # nothing half written is left
        grow(fs, 4 * du(reference))
        assert main(cmd) == 1  # fake.svs still fails
        assert "2 done, 1 failed, 1 skipped" in capsys.readouterr().out
        a, b = _store_content(fs / "p.zarr"), _store_content(reference)
        assert a.keys() == b.keys() == {"s0", "s1", "s2"}
        for sid in a:
            for x, y in zip(a[sid][:3], b[sid][:3]):
                np.testing.assert_array_equal(x, y)


def test_progress_in_a_log_file_is_status_lines(tmp_path, slides):
    """Output that is not a terminal (`> log 2>&1`, a batch job): a status line per update here
    (HISTOGEN_PROGRESS_SECONDS=0) instead of bars, for the slides and each slide's patches; with
    --quiet none."""
    env = {**os.environ, "HISTOGEN_PROGRESS_SECONDS": "0"}
    texts = {}
    for quiet in (False, True):
        log = tmp_path / f"quiet-{quiet}.log"
        cmd = [sys.executable, "-m", "engine.tile", "--slides", str(slides), "--out", str(tmp_path / f"{quiet}.zarr"),
               "--patch-size", "256", "--no-qa", "--batch-size", "8", *(["--quiet"] if quiet else [])]
        with open(log, "w") as f:
            r = subprocess.run(cmd, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT, env=env, timeout=300)
        assert r.returncode == 1  # fake.svs
        texts[quiet] = log.read_text()
    lines = texts[False].splitlines()
    assert "INFO slides: 1/4 slide (25%)" in "\n".join(lines) and any(line.startswith("INFO slides: 4/4 slide (100%)")
                                                                      for line in lines)
    assert any(line.startswith("INFO s0: 8/") and "patch/s" in line and line.endswith(" left") for line in lines)
    assert "\r" not in texts[False] and "slides: 3 done, 1 failed" in texts[False]
    assert "slide/s" not in texts[True] and "patch/s" not in texts[True] and "slides: 3 done, 1 failed" in texts[True]


def test_rejected_patches_are_counted_by_reason_and_kept_on_request(tmp_path, svs_slide, capsys):
    slides = tmp_path / "slides"
    slides.mkdir()
    shutil.copy(svs_slide, slides)
    args = ["--slides", str(slides), "--quiet", "--no-qa", "--batch-size", "8", "--check-min-tissue", "0.6"]
    assert main([*args, "--out", str(tmp_path / "p.zarr")]) == 0
    printed = capsys.readouterr().out
    assert main([*args, "--out", str(tmp_path / "k.zarr"), "--keep-rejected"]) == 0
    p, k = PatchStore.open(tmp_path / "p.zarr"), PatchStore.open(tmp_path / "k.zarr")
    a, b = p.attrs("aperio"), k.attrs("aperio")
    kq = k.qc("aperio")
    # two reasons: counted in both
    by = {name: int(np.count_nonzero(kq.reasons & bit)) for name, bit in REASONS.items()}
    assert a["n_rejected"] == np.count_nonzero(kq.reasons) and a["n_rejected_by"] == by and by["tissue"] > 0
    assert f"rejected: {a['n_rejected']} ({', '.join(f'{r} {n}' for r, n in by.items() if n)})" in printed.splitlines()
    qc = p.qc("aperio")
    assert (qc.reasons == 0).all() and (qc.scores["tissue"] >= 0.6).all()
    np.testing.assert_array_equal(qc.scores["tissue"], p.tissue("aperio"))
    assert p.qc_attrs("aperio")["params"] == CheckParams(min_tissue=0.6).to_dict()
    # --keep-rejected: the same patches plus the rejected ones, in plan order, with their reasons.
    assert (b["n_rejected"], b["n_rejected_by"]) == (a["n_rejected"], a["n_rejected_by"])
    assert b["n_patches"] == a["n_patches"] + a["n_rejected"]
    passed = kq.reasons == 0
    np.testing.assert_array_equal(kq.reasons, reasons_of(kq.scores, CheckParams(min_tissue=0.6)))
    np.testing.assert_array_equal(k.coords("aperio")[passed], p.coords("aperio"))
    np.testing.assert_array_equal(k.read_patches("aperio", np.flatnonzero(passed)), p.read_patches("aperio"))


def test_qa_picture_colours_rejections_by_first_reason_with_a_legend():
    thumb = np.full((60, 60, 3), 230, np.uint8)  # enlarged 10x to 600 px; 160 px patches at downsample 16
    mask = np.zeros((60, 60), np.uint8)
    reasons = np.array([REASONS["ink"] | REASONS["blur"], REASONS["tissue"] | REASONS["ink"]], np.uint8)
    pic = np.asarray(qa_picture(thumb, mask, 16.0, 160, [(0, 0)], [(160, 0), (320, 0)], reasons, [(480, 0)]))
    colours = reason_colours()
    assert pic.shape[0] > 600 and pic.shape[1] == 600  # the legend is a band under the slide
    assert tuple(pic[0, 0]) == KEPT and tuple(pic[0, 100]) == colours["ink"] and tuple(pic[0, 200]) == colours["tissue"]
    assert tuple(pic[0, 300]) == FAILED
    legend = {tuple(c) for c in pic[600:].reshape(-1, 3)}
    # only entries present
    assert {KEPT, FAILED, colours["ink"], colours["tissue"]} <= legend and colours["blur"] not in legend
    plain = np.asarray(qa_picture(thumb, mask, 16.0, 160, [(0, 0)]))
    assert {tuple(c) for c in plain[600:].reshape(-1, 3)} & {FAILED, colours["tissue"], OUTLINE, INK_OUTLINE} == set()


def test_qa_picture_outlines_tissue_and_the_mask_s_ink_apart():
    """Tissue the mask took for ink (bone, blood as red ink) shows as ink on the picture, not as tissue."""
    thumb = np.full((60, 60, 3), 230, np.uint8)
    mask = np.zeros((60, 60), np.uint8)
    mask[10:30, 10:30] = TISSUE
    mask[10:30, 30:50] = INK  # ink beside the tissue, sharing its right edge
    pic = np.asarray(qa_picture(thumb, mask, 16.0, 160, []))[:600]  # 10x: thumbnail pixel (y, x) at (10y, 10x)
    assert tuple(pic[105, 150]) == OUTLINE and tuple(pic[105, 295]) == OUTLINE  # tissue's top and right edge
    assert tuple(pic[105, 305]) == INK_OUTLINE and tuple(pic[155, 495]) == INK_OUTLINE  # ink's left and right edge
    assert tuple(pic[200, 200]) == (230, 230, 230) and tuple(pic[200, 400]) == (230, 230, 230)  # insides untouched
    legend = {tuple(c) for c in np.asarray(qa_picture(thumb, mask, 16.0, 160, []))[600:].reshape(-1, 3)}
    assert {OUTLINE, INK_OUTLINE} <= legend


@pytest.mark.parametrize("native", [True, False], ids=["native", "reference"])
def test_tile_cache_sized_to_the_slide_decodes_no_tile_twice(tmp_path, svs_slide, monkeypatch, native):
    """The decoded-tile cache holds four tile rows across the slide (issue 19: a fixed 256 MiB was most
    of the tiler's peak memory); that still covers what one row of patches shares with the next, so
    with one patch per batch, in order (one worker), the tiler decodes exactly as many tiles as with an
    unbounded cache, and a cache of one tile row decodes more (what the test would miss). The same
    for the native batch decode and the tifffile reference."""
    import engine.readers as readers

    slides = tmp_path / "slides"
    slides.mkdir()
    shutil.copy(svs_slide, slides)  # 2400 x 1800, 240 px tiles: 10 across
    tile_row = 10 * 240 * 240 * 3
    decoded, held, caps = {}, [], []
    remember = readers.TiffSlide._remember

    def watching_remember(self, items):  # every tile decoded goes through here once
        items = list(items)
        decoded[self._cache_key] += len(items)
        remember(self, items)
        held.append(self._cache.bytes)
        caps.append(self._cache.cap)

    monkeypatch.setattr(readers.TiffSlide, "_remember", watching_remember)
    for cache in (None, 1 << 40, tile_row):
        monkeypatch.setattr(readers.TiffSlide.__init__, "__defaults__", (cache, native, 1))
        monkeypatch.setattr(readers.TiffSlide, "_cache_key", cache, raising=False)
        decoded[cache] = 0
        held.clear()
        caps.clear()
        tile_slides(slides, tmp_path / f"{cache}.zarr", TileConfig(backend="tifffile", qa=False, workers=1,
                                                                   batch_size=1))
        if cache is None:
            assert set(caps) == {4 * tile_row}
            assert max(held) <= 4 * tile_row
    assert decoded[None] == decoded[1 << 40] > 0
    assert decoded[tile_row] > decoded[None]
    a, b = (PatchStore.open(tmp_path / f"{c}.zarr").slide("aperio") for c in (None, 1 << 40))
    assert a.attrs["n_patches"] >= 4
    np.testing.assert_array_equal(a["coords"][:], b["coords"][:])
    np.testing.assert_array_equal(a["images"][:], b["images"][:])


BONE_SLIDE = "osteosarcoma/Non-Tumor___Case-3-A17-7799-34542_102.jpg"  # cortical bone: red ink's own colour


@pytest.mark.skipif(not (HE_DIR / BONE_SLIDE).is_file(), reason=f"real H&E {HE_DIR / BONE_SLIDE} is absent")
def test_bone_read_as_red_ink_is_told_and_tiled_without_red(tmp_path, caplog):
    """A field of bone: the default mask takes it for red ink, tiles almost nothing and says so in one
    line naming the file and the flag; --inks without red tiles the bone, and the store records it."""
    slides = tmp_path / "slides"
    slides.mkdir()
    shutil.copy(HE_DIR / BONE_SLIDE, slides)
    args = ["--slides", str(slides), "--patch-size", "256", "--quiet", "--no-qa"]
    assert main([*args, "--out", str(tmp_path / "a.zarr")]) == 0
    warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING" and "marker ink" in r.getMessage()]
    assert len(warned) == 1 and BONE_SLIDE.split("/")[1] in warned[0] and "--inks green,black,blue" in warned[0]
    default = PatchStore.open(tmp_path / "a.zarr")
    caplog.clear()
    assert main([*args, "--out", str(tmp_path / "b.zarr"), "--inks", "green,black,blue"]) == 0
    assert not [r for r in caplog.records if "marker ink" in r.getMessage()]
    no_red = PatchStore.open(tmp_path / "b.zarr")
    sid = no_red.slide_ids()[0]
    assert default.n_patches(sid) <= 2 and no_red.n_patches(sid) >= 12  # of the 16 in the 1024 px field
    assert no_red.attrs(sid)["params"]["mask"]["inks"] == ["green", "black", "blue"]


def test_unknown_ink_family_is_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["--slides", str(tmp_path), "--out", str(tmp_path / "p.zarr"), "--inks", "red,purple"])
    assert e.value.code == 2 and "unknown ink family purple" in capsys.readouterr().err
