"""Conditioning on slide-level labels: labels from slide attributes and from a CSV, slides without
one left out, the run's vocabulary, a tiny diffusion that learns two colour-coded classes, the GAN's
label path, classifier-free guidance against its two-call reference, and clear errors."""
from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch
import yaml

from engine.store import Codec, PatchStore
from histogen import config
from histogen.cli import main
from histogen.labels import LabelError, Vocabulary, labelled, slide_labels
from histogen.models.diffusion import guide
from histogen.models.task import draw
from histogen.run import build_task
from histogen.run_folder import RunFolder
from histogen.sample import sample_run
from histogen.samples_folder import SamplesFolder
from histogen.train import train

RED, BLUE = (200, 40, 40), (40, 40, 200)
# Slides of solid red (class A) or blue (class B) patches with a little noise; "u" has no label.
SLIDES = {"r1": (RED, "A"), "r2": (RED, "A"), "b1": (BLUE, "B"), "b2": (BLUE, "B"), "u": (RED, None)}
TINY = ["resolution=8", "model.channels=16", "model.head_channels=16", "model.groups=8", "model.channel_mult=[1, 2]",
        "model.attention_resolutions=[]", "model.lr=3e-3", "data.val_fraction=0", "data.flip=false", "data.rot90=false",
        "train.batch_size=8", "train.log_every=10", "train.sample_every=1000", "train.val_every=1000",
        "train.ckpt_every=1000",
        "train.ema_decay=0.9"]


def colour_store(path, n=8, patch=8):
    store = PatchStore.create_or_resume(path, patch, {})
    rng = np.random.default_rng(0)
    for sid, (colour, organ) in SLIDES.items():
        images = np.clip(np.array(colour) + rng.normal(0, 8, (n, patch, patch, 3)), 0, 255).astype(np.uint8)
        w = store.begin_slide(sid, {} if organ is None else {"organ": organ}, n, Codec())
        w.append(images, np.arange(2 * n).reshape(n, 2), np.ones(n))
        w.finish(np.zeros((2, 2)), {}, {})
    return path


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return colour_store(tmp_path_factory.mktemp("labels") / "colours.zarr")


@pytest.fixture(scope="module")
def run(store, tmp_path_factory):
    """A tiny pixel diffusion trained on the A (red) and B (blue) slides, labels from the `organ` attribute."""
    out = tmp_path_factory.mktemp("runs") / "labelled"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # faster than two on a shared, busy CPU at this size
    try:
        train(config.resolve("diffusion-tiny", TINY + ["data.label=organ", "train.steps=60"]), [store], out,
              show_progress=False)
    finally:
        torch.set_num_threads(threads)
    return out


def test_labels_from_attributes_and_csv(store, tmp_path, caplog):
    refs = PatchStore.open(store).slide_refs()
    assert [r.slide for r in refs] == sorted(SLIDES)
    assert slide_labels(refs, "organ") == [SLIDES[r.slide][1] for r in refs]
    csv = tmp_path / "labels.csv"
    csv.write_text("slide,label,note\nr1,lung,x\nb1, colon ,\nb2,,empty\nnot-in-store,liver,\n")
    assert slide_labels(refs, str(csv)) == [{"r1": "lung", "b1": "colon"}.get(r.slide) for r in refs]
    with caplog.at_level(logging.WARNING):
        kept, names = labelled(refs, str(csv))
    assert [r.slide for r in kept] == ["b1", "r1"] and names == ["colon", "lung"]
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1 and lines[0].startswith("3 of 5 slides have no label in the CSV") and "b2, r2, u" in lines[0]
    for text, message in [("slide,organ\nr1,A\n", "columns slide,label"), ("slide,label\nr1,A\nr1,B\n", "two labels")]:
        csv.write_text(text)
        with pytest.raises(LabelError, match=message):
            slide_labels(refs, str(csv))
    with pytest.raises(LabelError, match="no slide has a label as the slide attribute 'tissue'"):
        labelled(refs, "tissue")
    with pytest.raises(LabelError, match="cannot read the label CSV"):
        slide_labels(refs, str(tmp_path / "missing.csv"))


def test_csv_labels_make_the_vocabulary(store, tmp_path):
    csv = tmp_path / "labels.csv"
    csv.write_text("slide,label\nr1,lung\nr2,lung\nb1,colon\nb2,colon\nu,brain\n")
    out = tmp_path / "run"
    train(config.resolve("diffusion-tiny", TINY + [f"data.label={csv}", "train.steps=1"]), [store], out,
          show_progress=False)
    vocab = RunFolder(out).vocabulary
    assert vocab.classes == ("brain", "colon", "lung") and vocab.source == str(csv.resolve())
    assert config.load(out / "config.yaml").data.label == str(csv)


def colour_distance(pixels: np.ndarray, colour) -> float:
    return float(np.abs(pixels.reshape(-1, 3).mean(0) - np.array(colour)).mean())


def test_labelled_diffusion_samples_its_class(run, tmp_path):
    """Samples of A are red and samples of B blue (guided, w = 3): each far closer to its class's
    mean colour than to the other's."""
    assert RunFolder(run).vocabulary == Vocabulary(("A", "B"), "organ")
    split = json.loads((run / "split.json").read_text())
    assert sorted(r["slide"] for r in split["train"]) == ["b1", "b2", "r1", "r2"]  # "u" has no label: left out
    a = sample_run(run, 8, tmp_path / "a", label="A", steps=10)
    b = sample_run(run, 8, tmp_path / "b", label="B", steps=10, guidance=3.0)
    to_a, to_b = colour_distance(a, RED), colour_distance(a, BLUE)
    assert to_a < 40 and to_b > 2 * to_a, a.reshape(-1, 3).mean(0)
    to_a, to_b = colour_distance(b, RED), colour_distance(b, BLUE)
    assert to_b < 40 and to_a > 2 * to_b, b.reshape(-1, 3).mean(0)
    assert SamplesFolder(tmp_path / "a").read(8).labels == ["A"] * 8
    every = sample_run(run, 4, tmp_path / "every", steps=10)  # no --label: every class in turn
    assert SamplesFolder(tmp_path / "every").read(4).labels == ["A", "B", "A", "B"]
    assert colour_distance(every[0::2], RED) < colour_distance(every[0::2], BLUE)
    assert colour_distance(every[1::2], BLUE) < colour_distance(every[1::2], RED)


def test_unknown_label_and_label_on_an_unlabelled_run(run, store, tmp_path, caplog):
    caplog.clear()
    assert main(["sample", "--run", str(run), "--out", str(tmp_path / "s"), "--n", "2", "--label", "lung"]) == 2
    assert f"{run}: unknown label 'lung'; this run knows: A, B" in caplog.text
    assert not (tmp_path / "s").exists()
    plain = tmp_path / "plain"
    train(config.resolve("diffusion-tiny", TINY + ["train.steps=1"]), [store], plain, show_progress=False)
    assert RunFolder(plain).vocabulary is None and not (plain / "sample_labels.json").exists()
    # a run folder from before labels (no data.label in its config) loads and samples as before
    saved = yaml.safe_load((plain / "config.yaml").read_text())
    assert saved["data"].pop("label") is None
    (plain / "config.yaml").write_text(yaml.safe_dump(saved, sort_keys=False))
    assert sample_run(plain, 2, tmp_path / "old", steps=2).shape == (2, 8, 8, 3)
    assert not (tmp_path / "old" / "sample_labels.json").exists()
    caplog.clear()
    assert main(["sample", "--run", str(plain), "--out", str(tmp_path / "s"), "--n", "2", "--label", "A"]) == 2
    assert "is not conditioned on labels; leave out --label" in caplog.text
    caplog.clear()
    assert main(["train", "--model", "ae", "--data", str(store), "--out", str(tmp_path / "ae"), "--preset", "ae-tiny",
                 "--quiet",
                 "--set", "data.label=organ", "--set", "resolution=8", "--set", "model.channel_mult=[1, 2]"]) == 2
    assert "an autoencoder is not conditioned on labels" in caplog.text


def test_guidance_matches_its_reference():
    """guide() against two separate calls (conditioned; null: embedding and label dropped): equal at
    w = 1 to the plain conditioned call, and u + w (c - u) at w = 3, with an embedding and a label."""
    torch.manual_seed(0)
    task = build_task("diffusion", config.resolve("diffusion-tiny", TINY).model, 8, 5, n_labels=3)
    unet = task.nets["unet"].eval()
    for p in unet.parameters():  # zero-initialised output layers would make every output 0
        torch.nn.init.normal_(p, std=0.2)
    x, t, cond, label = torch.randn(4, 3, 8, 8), torch.rand(4), torch.randn(4, 5), torch.tensor([0, 1, 2, 1])
    with torch.no_grad():
        c = unet(x, t, cond, label=label)
        u = unet(x, t, cond, torch.ones(4, dtype=torch.bool), label=label)
        assert (c - u).abs().mean() > 1e-2, "the condition must act"
        torch.testing.assert_close(guide(unet, x, t, cond, label, 1.0), c, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(guide(unet, x, t, cond, label, 3.0), u + 3 * (c - u), rtol=1e-5, atol=1e-5)
        # a missing label is the null class, as a dropped one
        dropped = torch.ones(4, dtype=torch.bool)
        torch.testing.assert_close(unet(x, t, None, label=None), unet(x, t, None, dropped, label=label))


def test_label_dropout_shares_the_condition_draw():
    """Labels are dropped (null class) with probability cond_drop, by the draw that drops the embedding."""
    seeds = torch.arange(2000)
    task = build_task("diffusion", config.resolve("diffusion-tiny", TINY).model, 8, None, n_labels=2)
    seen = {}
    task._loss = lambda unet, x, t, cond, drop, seeds, label, weighted: (seen.update(drop=drop, label=label)
                                                                         or (x.sum() * 0).requires_grad_())
    task.backward_step = lambda *a: 0.0
    batch = {"images": torch.zeros(2000, 3, 8, 8), "label": torch.ones(2000, dtype=torch.long), "seeds": seeds}
    task.train_step(batch, 0, dict(task.nets), {"unet": None}, 0.0)
    torch.testing.assert_close(seen["drop"], draw(seeds, 2000, (), "cpu", normal=False, salt=1) < task.cfg.cond_drop)
    assert seen["drop"].float().mean().item() == pytest.approx(0.1, abs=0.02)


def test_gan_label_path():
    torch.manual_seed(0)
    model = config.resolve("gan-tiny", ["model.channel_base=64", "model.channel_max=16", "model.z_dim=8"]).model
    task = build_task("gan", model, 8, None, n_labels=2)
    nets = dict(task.nets)
    batch = {"images": torch.rand(4, 3, 8, 8) * 2 - 1, "label": torch.tensor([0, 1, 0, 1]), "cond": None}
    from histogen.kernels import AdamWEMA

    opts = {n: AdamWEMA(task.nets[n].parameters(), **task.opt_hyper(n), ema_decay=0.9) for n in task.opt_groups()}
    metrics = task.train_step(batch, 1, nets, opts, 0.0)
    assert all(np.isfinite(v) for v in metrics.values())
    gen = lambda: torch.Generator().manual_seed(1)  # noqa: E731
    a = task.sample(nets, 4, gen(), label=torch.zeros(4, dtype=torch.long))
    b = task.sample(nets, 4, gen(), label=torch.ones(4, dtype=torch.long))
    assert torch.equal(a, task.sample(nets, 4, gen(), label=torch.zeros(4, dtype=torch.long)))
    assert (a - b).abs().mean() > 1e-4, "the label must act"
    disc = task.nets["disc"]
    zeros, ones = torch.zeros(4, dtype=torch.long), torch.ones(4, dtype=torch.long)
    assert (disc(a, label=zeros) - disc(a, label=ones)).abs().max() > 0
    with pytest.raises(ValueError, match="conditioned on 2 labels"):
        task.sample(nets, 4, gen())
    with pytest.raises(ValueError, match=r"class ids must be in \[0, 2\)"):
        task.sample(nets, 2, gen(), label=torch.tensor([0, 2]))


def test_eval_measures_each_label(run, store, tmp_path, monkeypatch):
    """Evaluating a labelled run: samples take the classes of the real draw (so both sides have one
    mix), each labelled sample has its class's colour, and every class gets its measures and floor.
    The run's config is read once; the labels written with the samples are read back with them:
    evaluating those samples as made elsewhere (--samples) gives every class the same numbers."""
    from histogen.encoders import PixelEncoder
    from histogen.evaluate import EvalConfig, evaluate
    from histogen.report import console_lines
    from histogen.two_sample import TwoSampleConfig

    monkeypatch.setenv("HISTOGEN_CACHE", str(tmp_path / "cache"))
    cfg = EvalConfig(n=16, steps=10, two_sample=TwoSampleConfig(folds=2, steps=5, min_steps=5))
    loads, load = [], config.load
    monkeypatch.setattr(config, "load", lambda path: loads.append(path) or load(path))
    ev = evaluate([store], tmp_path / "eval", run=run, cfg=cfg, encoder=PixelEncoder())
    assert loads == [run / "config.yaml"]
    written = SamplesFolder(tmp_path / "eval").read(16)
    names, pixels = written.labels, written.images
    assert sorted(set(names)) == ["A", "B"] and len(names) == 16
    for name, own, other in (("A", RED, BLUE), ("B", BLUE, RED)):
        mine = pixels[np.array(names) == name]
        assert colour_distance(mine, own) < colour_distance(mine, other)
    assert set(ev.per_label) == {"A", "B"}
    for name, d in ev.per_label.items():
        assert d["metrics"]["patches"] == names.count(name) and d["floor"]["patches"] > 0
        assert {"c2st", "haematoxylin_w1", "eosin_w1"} <= set(d["metrics"]) and {"c2st", "eosin_w1"} <= set(d["floor"])
    written = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert written["per_label"]["A"] == json.loads(json.dumps(ev.per_label["A"]))
    assert sum(line.startswith("label ") for line in console_lines(ev)) == 2
    again = evaluate([store], tmp_path / "again", run=run, samples=tmp_path / "eval", cfg=cfg, encoder=PixelEncoder())
    assert again.per_label == ev.per_label
