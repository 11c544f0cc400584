"""histogen eval end to end on real stores and trained runs: numbers recomputed independently
(reference resize, brute-force neighbourhoods), the floor measured between disjoint real draws,
real patches scored as samples score exactly the floor, memorised copies are caught, the offline
path still runs the model-free metrics, a stand-in encoder is called meaningless, and bad input
gets one line."""
from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr

from engine.store import PatchStore
from histogen import config, metrics
from histogen.cli import main
from histogen.encoders import TorchEncoder, torchscript
from histogen.train import train
from tests.support.references import resize_reference
from tests.support.stores import make_store
from tests.support.references import brute_precision_recall
from tests.support.training import SMALL

SLIDES = {"s1": 12, "s3": 10, "s2": 9}  # diffusion-tiny's split: s2 trains, s1 and s3 validate


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HISTOGEN_CACHE", str(tmp_path / "cache"))
    # The two-sample test's power is proved in test_realism; here it only has to run, so it runs short.
    from functools import partial

    import histogen.cli
    from histogen.evaluate import EvalConfig
    from histogen.two_sample import TwoSampleConfig

    monkeypatch.setattr(histogen.cli, "EvalConfig",
                        partial(EvalConfig, two_sample=TwoSampleConfig(steps=10, min_steps=10)))


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    return make_store(tmp_path_factory.mktemp("data") / "p.zarr", SLIDES, patch=32, embeddings=False, he=True)


@pytest.fixture(scope="module")
def run(store, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "diffusion"
    train(config.resolve("diffusion-tiny", SMALL + ["train.steps=3"]), [store], out, show_progress=False)
    split = json.loads((out / "split.json").read_text())
    assert [r["slide"] for r in split["train"]] == ["s2"]
    return out


@pytest.fixture(scope="module")
def encoder_file(tmp_path_factory) -> Path:
    """A small conv net saved as TorchScript: any torch module plugs in this way."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 7, 4), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(2),
                              torch.nn.Flatten())
    path = tmp_path_factory.mktemp("enc") / "encoder.pt"
    torch.jit.save(torch.jit.script(net), str(path))
    return path


def held_out(store: Path, size: int, slides=("s1", "s3")) -> np.ndarray:
    """The validation slides' patches resized like training does, by the independent reference."""
    s = PatchStore.open(store)
    images = np.concatenate([s.slide(sid)["images"][:] for sid in slides])
    return np.clip(np.round(resize_reference(images, size) * 255), 0, 255).astype(np.uint8)


def features(encoder_file: Path, images: np.ndarray) -> np.ndarray:
    """The encoder's features on reference-resized 224 px inputs (not the evaluation's pipeline)."""
    net = torch.jit.load(str(encoder_file))
    x = torch.from_numpy(resize_reference(images, 224)).permute(0, 3, 1, 2).float()
    with torch.no_grad():
        return net(x).numpy()


def write_samples(d: Path, images: np.ndarray) -> Path:
    d.mkdir(parents=True)
    zarr.create_array(str(d / "samples.zarr"), data=images, chunks=(1,) + images.shape[1:])
    return d


def evaluate_cli(tmp_path, *args) -> tuple[int, dict]:
    out = tmp_path / "report"
    rc = main(["eval", "--out", str(out), *map(str, args)])
    return rc, json.loads((out / "metrics.json").read_text()) if rc == 0 else {}


def test_run_evaluation_matches_independent_recomputation(store, run, encoder_file, tmp_path, caplog):
    rc, m = evaluate_cli(tmp_path, "--run", run, "--real", store, "--n", 12, "--encoder", encoder_file, "--steps", 2)
    assert rc == 0
    out = tmp_path / "report"
    samples = zarr.open_array(str(out / "samples.zarr"), mode="r")[:]
    assert samples.shape == (12, 16, 16, 3)
    # 22 held-out patches make two disjoint real draws of 11: A, the real side, and B, the floor's other side
    assert m["info"]["n_real"] == m["info"]["n_real_floor"] == 11 and m["info"]["n_generated"] == 12
    assert not m["info"]["real_is_training"]

    # Recompute from the draws' rows: the two halves of a seeded draw of 2n, disjoint, together all 22.
    from histogen.batches import list_slides
    from histogen.evaluation.patches import Patches

    held = [r for r in list_slides([store]) if r.slide != "s2"]
    a, b = Patches.draw(held, 24, 0).split(0)
    rows_a, rows_b = {tuple(r) for r in a.rows}, {tuple(r) for r in b.rows}
    assert len(rows_a) == len(rows_b) == 11 and not rows_a & rows_b
    pool = {r.slide: held_out(store, 16, (r.slide,)) for r in held}
    real, real_b = (np.stack([pool[held[k].slide][j] for k, j in d.rows]) for d in (a, b))
    fr, fg, fb = features(encoder_file, real), features(encoder_file, samples), features(encoder_file, real_b)
    fit = lambda x: metrics.GaussianStats(x.shape[1]).update(x)  # noqa: E731
    assert m["metrics"]["frechet_distance"] == pytest.approx(metrics.frechet_of(fit(fr), fit(fg)), rel=1e-3, abs=1e-6)
    assert m["floor"]["frechet_distance"] == pytest.approx(metrics.frechet_of(fit(fr), fit(fb)), rel=1e-3, abs=1e-6)
    p, r = brute_precision_recall(fr.astype(np.float64), fg.astype(np.float64), 3)
    assert (m["metrics"]["precision_recall"]["precision"],
            m["metrics"]["precision_recall"]["recall"]) == pytest.approx((p, r), abs=1 / 11 + 1e-9)
    p, r = brute_precision_recall(fr.astype(np.float64), fb.astype(np.float64), 3)
    assert (m["floor"]["precision_recall"]["precision"],
            m["floor"]["precision_recall"]["recall"]) == pytest.approx((p, r), abs=1 / 11 + 1e-9)
    # every metric has a floor of the same shape, except reconstruction (none here: not an autoencoder)
    assert set(m["floor"]) == set(m["metrics"]) and not m["floor_skipped"]
    for k, v in m["metrics"].items():
        floor = m["floor"][k]
        assert isinstance(v, dict) == isinstance(floor, dict), k
        assert not isinstance(v, dict) or v.keys() == floor.keys(), k
    assert m["metrics"]["c2st"]["n_per_class"] == m["floor"]["c2st"]["n_per_class"] == 11
    spread = metrics.pairwise_l1(real)
    assert m["metrics"]["diversity"]["ratio"] == pytest.approx(metrics.pairwise_l1(samples) / spread, rel=1e-4)
    assert m["floor"]["diversity"]["ratio"] == pytest.approx(metrics.pairwise_l1(real_b) / spread, rel=1e-4)
    h_real, h_gen = metrics.stain_histograms(real), metrics.stain_histograms(samples)
    assert m["metrics"]["stain"]["haematoxylin_w1"] == pytest.approx(metrics.wasserstein_hist(h_real[0], h_gen[0]),
                                                                     abs=0.01)
    assert m["metrics"]["stain"]["eosin_w1"] == pytest.approx(metrics.wasserstein_hist(h_real[1], h_gen[1]), abs=0.01)
    mem = m["metrics"]["memorisation"]
    assert mem["n_train"] == 9 and mem["space"].startswith(str(encoder_file))
    train_f = features(encoder_file, held_out(store, 16, ("s2",)))
    d_gen = np.linalg.norm(fg[:, None] - train_f[None], axis=-1).min(1)
    assert mem["generated_nn_median"] == pytest.approx(np.median(d_gen), rel=1e-3)

    html = (out / "report.html").read_text()
    for needle in ("frechet_distance", "precision_recall", "stain", "memorisation", "data:image/png", "<svg",
                   "Closest to the training set", "c2st", "nuclei", "floor: real vs real", "found most fake",
                   "found most real", "Model-free measures"):
        assert needle in html
    assert "conditioning" not in m["metrics"] and "conditioning" not in m["skipped"]  # unconditional run

    # Again: the real features come from the cache, the seeded samples are the same, so are the numbers.
    shutil.rmtree(out)
    with caplog.at_level(logging.INFO, logger="histogen.evaluation.cache"):
        rc, again = evaluate_cli(tmp_path, "--run", run, "--real", store, "--n", 12, "--encoder", encoder_file,
                                 "--steps", 2)
    assert rc == 0 and "from the cache" in caplog.text
    assert again["metrics"] == m["metrics"]


def test_real_patches_score_the_floor_and_copies_as_memorised(store, run, encoder_file, tmp_path):
    """Samples that are the floor's real draw B, read as evaluation reads it: every number equals its floor."""
    from histogen.batches import list_slides
    from histogen.evaluation.patches import Patches

    held = [r for r in list_slides([store]) if r.slide != "s2"]
    _, b = Patches.draw(held, 200, 0).split(0)
    real_b = np.concatenate([x for x, _ in b.batches(16, 8)])
    rc, m = evaluate_cli(tmp_path / "a", "--run", run, "--samples", write_samples(tmp_path / "real", real_b),
                         "--real", store, "--n", 100, "--encoder", encoder_file)
    assert rc == 0 and m["info"]["n_generated"] == m["info"]["n_real"] == m["info"]["n_real_floor"] == 11
    assert m["metrics"] == m["floor"]
    assert m["metrics"]["memorisation"]["ratio"] == pytest.approx(1.0, abs=0.3)
    # The run's slides are known by id: in a store at another path (re-tiled, copied) s2 is still not held out.
    shutil.copytree(store, tmp_path / "retiled.zarr")
    rc, m = evaluate_cli(tmp_path / "c", "--run", run, "--samples", tmp_path / "real", "--real",
                         tmp_path / "retiled.zarr",
                         "--n", 100, "--encoder", encoder_file)
    assert rc == 0 and m["info"]["n_real"] == m["info"]["n_real_floor"] == 11 and not m["info"]["real_is_training"]

    copies = held_out(store, 16, ("s2",))  # the training slide itself
    rc, m = evaluate_cli(tmp_path / "b", "--run", run, "--samples", write_samples(tmp_path / "copies", copies),
                         "--real", store, "--n", 100, "--encoder", encoder_file)
    mem = m["metrics"]["memorisation"]
    assert rc == 0 and mem["generated_nn_median"] < 1e-3 < mem["real_nn_median"]
    assert mem["share_below_real_p1"] == 1.0 and mem["ratio"] < 0.01


def test_train_floor_is_the_training_patches_scored_as_samples(store, run, encoder_file, tmp_path):
    """--train-floor: the run's training patches in the samples' place, by the model-free measures; the
    numbers those patches get when evaluated as samples, reported beside the floor."""
    from histogen.batches import list_slides
    from histogen.evaluation.patches import Patches

    trained_on = [r for r in list_slides([store]) if r.slide == "s2"]
    drawn = Patches.draw(trained_on, 40, 1)  # the evaluation's seed 0, plus one: the draw memorisation compares with
    patches = np.concatenate([x for x, _ in drawn.batches(16, 8)])
    rc, as_samples = evaluate_cli(tmp_path / "a", "--run", run, "--samples", write_samples(tmp_path / "t", patches),
                                  "--real", store, "--n", 40, "--encoder", encoder_file)
    assert rc == 0 and as_samples["info"]["n_generated"] == 9
    rc, m = evaluate_cli(tmp_path / "b", "--run", run, "--real", store, "--n", 40, "--encoder", encoder_file,
                         "--steps", 2, "--train-floor")
    assert rc == 0 and m["info"]["n_train_floor"] == 9
    assert m["train_floor"] == {k: as_samples["metrics"][k] for k in ("c2st", "nuclei", "stain", "diversity")}
    assert m["train_floor"]["stain"] != m["metrics"]["stain"]  # the samples' own numbers are not it
    assert "training patches vs real" in (tmp_path / "b" / "report" / "report.html").read_text()
    rc, plain = evaluate_cli(tmp_path / "c", "--run", run, "--real", store, "--n", 40, "--encoder", encoder_file,
                             "--steps", 2)
    assert rc == 0 and "train_floor" not in plain
    rc, alone = evaluate_cli(tmp_path / "d", "--samples", tmp_path / "t", "--real", store, "--n", 40, "--encoder",
                             encoder_file, "--train-floor")
    assert rc == 0 and "train_floor" not in alone and any("--train-floor" in n for n in alone["notes"])


def test_offline_runs_the_model_free_metrics_and_says_what_was_skipped(store, run, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # an empty cache: the model is not there
    rc, m = evaluate_cli(tmp_path, "--run", run, "--real", store, "--n", 8, "--steps", 2)
    assert rc == 0
    for name in ("frechet_distance", "precision_recall"):
        assert "Hugging Face" in m["skipped"][name] and "--encoder" in m["skipped"][name]
        assert name not in m["metrics"]
    assert set(m["metrics"]) == {"c2st", "nuclei", "stain", "diversity", "memorisation"} == set(m["floor"])
    assert m["metrics"]["memorisation"]["space"] == "pixels@32px"
    html = (tmp_path / "report" / "report.html").read_text()
    assert "skipped" in html and "Hugging Face" in html


def test_autoencoder_reconstructions_are_scored(store, encoder_file, tmp_path):
    run = tmp_path / "ae"
    train(config.resolve("ae-tiny", SMALL + ["train.steps=2", "resolution=32"]), [store], run, show_progress=False)
    rc, m = evaluate_cli(tmp_path, "--run", run, "--real", store, "--n", 100, "--encoder", encoder_file)
    assert rc == 0
    recon = zarr.open_array(str(tmp_path / "report" / "samples.zarr"), mode="r")[:]
    from histogen.batches import list_slides
    from histogen.evaluation.patches import Patches

    held = [r for r in list_slides([store]) if r.slide != "s2"]
    pool = {r.slide: held_out(store, 32, (r.slide,)) for r in held}
    # draw A, in read order
    real = np.stack([pool[held[k].slide][j] for k, j in Patches.draw(held, 200, 0).split(0)[0].rows])
    assert recon.shape == real.shape
    rec = m["metrics"]["reconstruction"]
    assert rec["n"] == 11 and "reconstruction" in m["floor_skipped"] and "reconstruction" not in m["floor"]
    assert rec["psnr_db"] == pytest.approx(metrics.psnr(real, recon).mean(), abs=0.05)
    assert rec["ssim"] == pytest.approx(metrics.ssim_uint8(real, recon).mean(), abs=0.01)


def test_torch_encoder_sees_the_shared_resize():
    """A mean-colour module: its features are the means of the 224 px resized inputs."""

    class MeanColour(torch.nn.Module):
        def forward(self, x):
            return x.mean(dim=(2, 3))

    images = np.random.default_rng(0).integers(0, 256, (5, 48, 48, 3), dtype=np.uint8)
    enc = TorchEncoder(MeanColour(), "mean-colour", pipeline="torch")
    assert enc.width == 3
    np.testing.assert_allclose(enc(images), resize_reference(images, 224).mean(axis=(1, 2)), atol=1e-4)


def test_bad_input_gets_one_clear_line(store, run, tmp_path, caplog, encoder_file):
    cases = [
        (["--real", store], "nothing to evaluate"),
        (["--samples", tmp_path, "--real", store], "no samples.zarr and no PNG files"),
        (["--run", run, "--real", tmp_path / "missing.zarr"], "not a patch store"),
        (["--run", tmp_path, "--real", store], "not a training run"),
    ]
    for args, message in cases:
        caplog.clear()
        assert main(["eval", "--out", str(tmp_path / "r"), *map(str, args)]) == 2
        errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
        assert len(errors) == 1 and message in errors[0].getMessage(), (args, caplog.text)
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not torchscript")
    with pytest.raises(RuntimeError):
        torchscript(bad)
    rc, m = evaluate_cli(tmp_path / "x", "--run", run, "--real", store, "--n", 8, "--steps", 1, "--encoder", bad)
    assert rc == 0 and "not a TorchScript module" in m["skipped"]["frechet_distance"]


@pytest.fixture(scope="module")
def embedded(store, tmp_path_factory) -> tuple[Path, Path]:
    """The store embedded by a TensorFlow stand-in with Path Foundation's interface."""
    from engine.embed import EmbedConfig, embed_store
    from histosynth.standin_model import save_standin

    d = tmp_path_factory.mktemp("cond")
    model = save_standin(d / "standin")
    path = d / "p.zarr"
    shutil.copytree(store, path)
    embed_store(path, EmbedConfig(model=str(model), pipeline="torch"), show_progress=False)
    return path, model


def test_conditioning_is_measured_with_the_model_that_made_the_conditions(store, embedded, encoder_file, tmp_path,
                                                                          caplog):
    path, model = embedded
    run = tmp_path / "cond"
    train(config.resolve("diffusion-tiny", SMALL + ["train.steps=2", "data.conditional=true"]), [path], run,
          show_progress=False)
    rc, m = evaluate_cli(tmp_path / "a", "--run", run, "--real", path, "--n", 10, "--steps", 2, "--encoder", model)
    assert rc == 0
    c = m["metrics"]["conditioning"]
    cond = np.load(tmp_path / "a" / "report" / "conditions.npy")
    s = PatchStore.open(path)
    held = np.concatenate([s.embeddings("s1"), s.embeddings("s3")])
    assert all(np.isclose(held, row).all(1).any() for row in cond)  # each condition is a held-out patch's embedding
    samples = zarr.open_array(str(tmp_path / "a" / "report" / "samples.zarr"), mode="r")[:]
    import tensorflow as tf

    fn = tf.saved_model.load(str(model)).signatures["serving_default"]
    f = fn(x=tf.constant(resize_reference(samples, 224)))["output_0"].numpy()
    assert c["cosine_matched"] == pytest.approx(metrics.cosine_pairs(f, cond).mean(), abs=1e-4)
    assert -1 <= c["cosine_random"] <= 1 and c["gap"] == pytest.approx(c["cosine_matched"] - c["cosine_random"])
    # the floor: held-out real patches (draw B) against their own stored embeddings, as a perfect generator would score
    assert m["floor"]["conditioning"]["gap"] > 0 and m["floor"]["conditioning"]["cosine_matched"] > c["cosine_random"]
    # the stand-in carries the untrained marker: its learned-space numbers are called meaningless, first thing
    assert "stand-in with random weights" in m["info"]["encoder_untrained"]
    assert m["info"]["meaningless"] == ["frechet_distance", "precision_recall"] and "mean nothing" in m["notes"][0]
    html = (tmp_path / "a" / "report" / "report.html").read_text()
    assert html.index("mean nothing") < html.index("Model-free measures") < html.index("frechet_distance")
    # another encoder's space cannot judge these conditions: skipped, with the reason
    rc, m = evaluate_cli(tmp_path / "b", "--run", run, "--real", path, "--n", 10, "--steps", 2, "--encoder",
                         encoder_file)
    assert rc == 0 and "conditions are embeddings by" in m["skipped"]["conditioning"]
    # a conditional run evaluated on a store without embeddings: one line, exit 2
    caplog.clear()
    assert main(["eval", "--run", str(run), "--real", str(store), "--out", str(tmp_path / "c"), "--encoder",
                 str(model)]) == 2
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "has no path-foundation embeddings to condition on" in errors[0]


def test_a_run_evaluates_where_its_training_stores_are_not(store, run, encoder_file, tmp_path):
    """A shipped run (its split.json naming stores on the machine that trained it) against a copy of
    the data elsewhere: held out by slide id as before, memorisation skipped with the reason."""
    import shutil

    moved = tmp_path / "elsewhere" / "p.zarr"
    shutil.copytree(store, moved)
    shipped = tmp_path / "shipped"
    shutil.copytree(run, shipped)
    split = json.loads((shipped / "split.json").read_text())
    for refs in split.values():
        for r in refs:
            r["store"] = "/machine/that/trained/p.zarr"
    (shipped / "split.json").write_text(json.dumps(split))
    args = ("--real", moved, "--n", 12, "--encoder", encoder_file, "--steps", 2)
    rc, m = evaluate_cli(tmp_path / "a", "--run", shipped, *args)
    rc0, m0 = evaluate_cli(tmp_path / "b", "--run", run, *args)
    assert rc == rc0 == 0
    assert "training stores" in m["skipped"]["memorisation"] and "memorisation" in m0["metrics"]
    assert m["info"]["n_real"] == m0["info"]["n_real"] and not m["info"]["real_is_training"]
    assert m["metrics"]["stain"] == m0["metrics"]["stain"]  # the same held-out draw and the same samples
