"""python -m benchmarks quality end to end at the smoke budget on synthetic H&E images (so that it
runs everywhere and cannot rot), its table against the evaluations' metrics.json, and bad input."""
from __future__ import annotations

import json
import logging
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from benchmarks.__main__ import main
from benchmarks.quality import flat, table
from engine.store import PatchStore
from histogen.images import grid
from histosynth.tissue import SynthSpec, render_region


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HISTOGEN_CACHE", str(tmp_path / "cache"))


def images(folder: Path, seed: int, n: int = 3, size: int = 192) -> None:
    """n tissue-filled PNG regions of a synthetic slide: plain images without MPP, like the shared set."""
    folder.mkdir(parents=True)
    spec, found, y = SynthSpec(width=4096, height=4096, seed=seed), 0, 0
    while found < n:
        for x in range(0, 4096, size):
            im = render_region(spec, x, y, size, size)
            if (im.mean(axis=2) < 215).mean() > 0.9 and found < n:  # tissue, not glass
                Image.fromarray(im).save(folder / f"r{found}.png")
                found += 1
        y += size


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    root = tmp_path_factory.mktemp("quality")
    for i, name in enumerate(("tissue-a", "tissue-b")):
        images(root / "data" / name, seed=i + 1)
    mp = pytest.MonkeyPatch()
    mp.setenv("HISTOGEN_CACHE", str(root / "cache"))
    argv = ["quality", "--work", str(root / "work"), "--out", str(root / "out"), "--data", str(root / "data"),
            "--budget", "smoke", "--assume-mpp", "0.5", "--quiet", "--encoder", str(root / "no-encoder")]
    rc = main(argv)
    mp.undo()
    return SimpleNamespace(root=root, rc=rc, out=root / "out", work=root / "work" / "quality")


def test_smoke_runs_every_stage(smoke):
    assert smoke.rc == 0
    # Tiled at 1 µm/px from images assumed at 0.5: 128 px read per 64 px patch, one store per folder.
    stores = sorted((smoke.work / "stores").glob("*.zarr"))
    assert [s.name.split("-first")[0] for s in stores] == ["tissue-a", "tissue-b"]
    for s in stores:
        store = PatchStore.open(s)
        assert store.patch_size == 64
        attrs = store.attrs(store.slide_ids()[0])
        assert attrs["read_size"] == 128 and attrs["mpp_x"] == 0.5
    payload = json.loads((smoke.out / "quality-smoke.json").read_text())
    for kind in ("diffusion", "gan"):
        ev = json.loads((smoke.out / "quality-smoke" / f"eval-{kind}" / "metrics.json").read_text())
        # The real side is the slides the run held out, never its training slides.
        assert ev["info"]["real_is_training"] is False and ev["info"]["resolution"] == 64
        split = json.loads((Path(payload[f"{kind} run"]) / "split.json").read_text())
        assert split["val"] and split["train"]
        # Every number evaluate() returned is a row of the table, with its value.
        rows = {r["metric"]: r[kind] for r in payload["rows"]}
        assert flat(ev["metrics"]) and {k: rows[k] for k in flat(ev["metrics"])} == flat(ev["metrics"])
        floors = {r["metric"]: r[f"{kind} floor"] for r in payload["rows"] if r[f"{kind} floor"] != ""}
        assert floors == flat(ev["floor"])
        pic = np.asarray(Image.open(smoke.out / "quality-smoke" / f"{kind}-real-vs-generated.png"))
        a, b = (np.asarray(grid(np.zeros((ev["info"][f"n_{s}"], 64, 64, 3), np.uint8))).shape
                for s in ("real", "generated"))
        assert pic.shape == (max(a[0], b[0]), a[1] + 16 + b[1], 3)
        real, generated = pic[: a[0], : a[1]], pic[: b[0], a[1] + 16 :]
        assert real[2:66, 2:66].std() > 10 and generated[2:66, 2:66].std() > 0
        assert not np.array_equal(real[:66, :66], generated[:66, :66])
    assert "| metric |" in (smoke.out / "quality-smoke.md").read_text()


def test_second_call_reuses_stores_and_runs(smoke):
    """Stores and trained runs are kept: the same call only evaluates again."""
    before = {p: p.stat().st_mtime_ns for p in (smoke.work / "runs").rglob("checkpoints/*.json")}
    argv = ["quality", "--work", str(smoke.root / "work"), "--out", str(smoke.root / "out2"), "--data",
            str(smoke.root / "data"),
            "--budget", "smoke", "--assume-mpp", "0.5", "--quiet", "--encoder", str(smoke.root / "no-encoder"),
            "--models", "gan"]
    assert main(argv) == 0
    assert before and {p: p.stat().st_mtime_ns for p in before} == before
    payload = json.loads((smoke.root / "out2" / "quality-smoke-gan.json").read_text())  # one model: a table of its own
    assert "gan train seconds" not in payload  # nothing trained, so no training speed is claimed


def test_table_takes_each_metric_and_its_floor():
    """The floor column comes from the evaluation's floor, shaped as its metrics; strings are left out."""
    ev = lambda m, f, t=None: SimpleNamespace(metrics=m, floor=f, train_floor=t or {})  # noqa: E731
    rows = table({"gan": ev({"stain": {"eosin_w1": 0.3, "tissue_pixels_real": 7}, "c2st": 0.9},
                            {"stain": {"eosin_w1": 0.01}}),
                  "diffusion": ev({"c2st": 0.6, "memorisation": {"space": "pixels", "ratio": 1.5}}, {}, {"c2st": 0.7})})
    t = "diffusion training patches"
    assert rows == [
        {"metric": "stain.eosin_w1", "gan": 0.3, "gan floor": 0.01, "diffusion": "", "diffusion floor": "", t: ""},
        {"metric": "stain.tissue_pixels_real", "gan": 7.0, "gan floor": "", "diffusion": "", "diffusion floor": "",
         t: ""},
        {"metric": "c2st", "gan": 0.9, "gan floor": "", "diffusion": 0.6, "diffusion floor": "", t: 0.7},
        {"metric": "memorisation.ratio", "gan": "", "gan floor": "", "diffusion": 1.5, "diffusion floor": "", t: ""},
    ]


def test_missing_data_folder_is_one_line(tmp_path, caplog):
    with caplog.at_level(logging.ERROR):
        rc = main(["quality", "--work", str(tmp_path), "--out", str(tmp_path / "out"), "--data",
                   str(tmp_path / "absent"),
                   "--budget", "smoke"])
    assert rc == 2
    (msg,) = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert str(tmp_path / "absent") in msg and "--data" in msg and "\n" not in msg


def test_smoke_of_the_conditioned_route(tmp_path, monkeypatch):
    """diffusion-pf: the stores are embedded with the encoder, the run is conditional, evaluation
    conditions on the held-out embeddings and measures how well samples keep them; a second call
    embeds nothing again and trains nothing again."""
    from histosynth.standin_model import save_standin

    images(tmp_path / "data" / "tissue-a", seed=3)
    encoder = save_standin(tmp_path / "standin")
    argv = ["quality", "--work", str(tmp_path / "work"), "--out", str(tmp_path / "out"), "--data",
            str(tmp_path / "data"),
            "--budget", "smoke", "--assume-mpp", "0.5", "--quiet", "--encoder", str(encoder), "--models",
            "diffusion-pf"]
    assert main(argv) == 0
    store = PatchStore.open(next((tmp_path / "work" / "quality" / "stores").glob("*.zarr")))
    sid = store.slide_ids()[0]
    assert store.embeddings(sid).shape == (store.n_patches(sid), 384)
    payload = json.loads((tmp_path / "out" / "quality-smoke-diffusion-pf.json").read_text())
    run = Path(payload["diffusion-pf run"])
    assert "data.conditional=true" in payload["diffusion-pf overrides"]
    assert "conditional: true" in (run / "config.yaml").read_text()
    ev = json.loads((tmp_path / "out" / "quality-smoke-diffusion-pf" / "eval-diffusion-pf" / "metrics.json")
                    .read_text())
    assert "conditioning" in ev["metrics"] or "conditioning" in ev["skipped"]
    assert "diffusion-pf train seconds" in payload
    before = store.embeddings_attrs(sid)
    assert main(argv) == 0
    again = json.loads((tmp_path / "out" / "quality-smoke-diffusion-pf.json").read_text())
    # resumed: already trained
    assert "diffusion-pf train seconds" not in again and again["diffusion-pf run"] == str(run)
    assert PatchStore.open(store.path).embeddings_attrs(sid) == before


def test_conditioned_route_with_a_registry_encoder(tmp_path, monkeypatch):
    """--encoder NAME=WEIGHTS: the stores get embeddings/NAME, the run conditions on them, evaluation is in
    its space."""
    from histosynth.standin_model import save_torch_standin

    monkeypatch.setattr("engine.torch_encoder.native_bf16", lambda device: False)
    images(tmp_path / "data" / "tissue-a", seed=5)
    weights = save_torch_standin(tmp_path / "vit")
    argv = ["quality", "--work", str(tmp_path / "work"), "--out", str(tmp_path / "out"), "--data",
            str(tmp_path / "data"), "--budget", "smoke", "--assume-mpp", "0.5", "--quiet", "--encoder",
            f"standin-vit={weights}", "--models", "diffusion-pf"]
    assert main(argv) == 0
    store = PatchStore.open(next((tmp_path / "work" / "quality" / "stores").glob("*.zarr")))
    sid = store.slide_ids()[0]
    assert store.embedding_names(sid) == ["standin-vit"] and store.embedding_width("standin-vit") == 192
    payload = json.loads((tmp_path / "out" / "quality-smoke-diffusion-pf.json").read_text())
    assert "data.embedding=standin-vit" in payload["diffusion-pf overrides"]
    assert "embedding: standin-vit" in (Path(payload["diffusion-pf run"]) / "config.yaml").read_text()
    assert payload["diffusion-pf encoder"].startswith(str(weights.resolve()))


def test_conditioned_route_without_an_encoder_says_what_to_do(tmp_path, caplog):
    images(tmp_path / "data" / "tissue-a", seed=4)
    argv = ["quality", "--work", str(tmp_path / "work"), "--out", str(tmp_path / "out"), "--data",
            str(tmp_path / "data"),
            "--budget", "smoke", "--assume-mpp", "0.5", "--quiet", "--encoder", str(tmp_path / "no-encoder"),
            "--models", "diffusion-pf"]
    assert main(argv) == 2
    [line] = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert "diffusion-pf needs an encoder" in line and "no-encoder: no such directory" in line
    assert "pass --encoder DIR" in line and "histosynth.standin_model" in line and "--model" not in line


def test_he64_budget_chains_the_shipped_recipe(tmp_path, monkeypatch, caplog):
    """--budget he64 (its runs cut to the smoke budget's size): the autoencoder, the latent diffusion on
    it, the decoder fine-tuned from it, and the export that ships the two, which is what is evaluated;
    a second call trains and exports nothing again; a model the budget has no preset for is one line."""
    import dataclasses

    import torch
    import yaml

    from benchmarks import quality
    from histogen.run import ema_net, load_run
    from histogen.run_folder import RunFolder

    smoke = quality.BUDGETS["smoke"]
    monkeypatch.setitem(quality.BUDGETS, "he64", dataclasses.replace(
        quality.BUDGETS["he64"], overrides=smoke.overrides, n_eval=smoke.n_eval, sample_steps=smoke.sample_steps))
    for i, name in enumerate(("camelyon", "osteosarcoma", "glas")):  # glas: not a folder this budget trains on
        images(tmp_path / "data" / name, seed=i + 6)
    argv = ["quality", "--work", str(tmp_path / "work"), "--out", str(tmp_path / "out"), "--data",
            str(tmp_path / "data"), "--budget", "he64", "--quiet", "--encoder", str(tmp_path / "no-encoder")]
    assert main(argv) == 0
    stores = sorted(p.name.split("-")[0] for p in (tmp_path / "work" / "quality" / "stores").glob("*.zarr"))
    assert stores == ["camelyon", "osteosarcoma"]
    payload = json.loads((tmp_path / "out" / "quality-he64.json").read_text())
    assert (payload["diffusion preset"], payload["diffusion autoencoder preset"],
            payload["diffusion decoder preset"]) == ("ldm-f4-he", "ae-f4-he", "ae-f4-he-decoder")
    ae, ldm, decoder, shipped = (Path(payload[f"diffusion {k}"]) for k in ("autoencoder run", "run", "decoder run",
                                                                             "exported"))
    config_of = lambda run: yaml.safe_load((run / "config.yaml").read_text())  # noqa: E731
    assert config_of(ldm)["autoencoder"] == str(ae) and config_of(decoder)["train"]["init_from"] == str(ae)
    assert config_of(shipped)["autoencoder"] == "autoencoder"
    ev = json.loads((tmp_path / "out" / "quality-he64" / "eval-diffusion" / "metrics.json").read_text())
    assert ev["info"]["run"] == str(shipped) and ev["info"]["real_is_training"] is False
    assert 0 <= ev["metrics"]["c2st"]["accuracy"] <= 1
    rows = {r["metric"]: r for r in payload["rows"]}  # the training data's own numbers beside the floor
    assert rows["c2st.accuracy"]["diffusion training patches"] == ev["train_floor"]["c2st"]["accuracy"]

    def ema(run):
        task, opts, _ = load_run(RunFolder(run), torch.device("cpu"))
        return ema_net(task, opts)

    # The shipped autoencoder is the fine-tuned decoder (in float16) on the encoder the diffusion trained on.
    got, want, first = ema(shipped / "autoencoder"), ema(decoder), ema(ae)
    for part, source in (("decoder", want), ("encoder", first)):
        ours, theirs = getattr(got, part).state_dict(), getattr(source, part).state_dict()
        for key, value in theirs.items():
            torch.testing.assert_close(ours[key].float(), value.half().float(), rtol=0, atol=0)
    assert any(not torch.equal(want.decoder.state_dict()[k], v) for k, v in first.decoder.state_dict().items())

    exported = {p: p.stat().st_mtime_ns for p in shipped.rglob("*.safetensors")}
    assert main(argv) == 0
    again = json.loads((tmp_path / "out" / "quality-he64.json").read_text())
    assert not [k for k in again if k.endswith("train seconds")] and again["diffusion exported"] == str(shipped)
    assert exported and {p: p.stat().st_mtime_ns for p in exported} == exported

    caplog.clear()
    with caplog.at_level(logging.ERROR):
        assert main([*argv, "--models", "gan"]) == 2
    [line] = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert "budget he64 has no preset for gan" in line and "pass --models diffusion" in line
