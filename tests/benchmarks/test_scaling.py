"""benchmarks scaling (the realism curve's fit, its run-at-a-step view and its plot) and benchmarks
nuclear-scale (nuclear size in pixels), on made data with known answers."""
from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from benchmarks import plot
from benchmarks.nuclear_scale import median_diameter
from benchmarks.scaling import at_step, kept_steps, power_fit, predict
from histogen import checkpoint


def test_power_fit_recovers_a_power_law_and_predicts_from_the_floor():
    x = [1000.0, 2000.0, 4000.0, 8000.0, 16000.0]
    a, b = power_fit(x, [3.0 * v**-0.5 for v in x])
    assert a == pytest.approx(3.0) and b == pytest.approx(-0.5)
    assert power_fit(x[:2], [1.0, 0.5]) is None  # under three points: no fit
    rows = [{"images seen": v, "c2st.accuracy": 0.5 + 20 * v**-0.5, "c2st.accuracy floor": 0.5} for v in x]
    got = predict(rows, 64000.0)
    assert got["c2st.accuracy at 64000 images"] == pytest.approx(0.5 + 20 * 64000**-0.5)
    assert got["c2st.accuracy exponent"] == pytest.approx(-0.5)


def test_a_run_at_a_step_reads_as_the_run_did_then(tmp_path):
    import torch

    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.yaml").write_text("kind: diffusion\n")
    (run / "split.json").write_text(json.dumps({"train": [], "val": []}))
    net = torch.nn.Linear(2, 2)
    for step in (100, 200, 300):
        with torch.no_grad():
            net.weight.fill_(step)
        checkpoint.save(run / "checkpoints", step, {"net": net}, {}, keep=10)
    assert kept_steps(run) == [100, 200, 300]
    view = at_step(run, 200, tmp_path / "work")
    assert (view / "config.yaml").read_text() == "kind: diffusion\n" and (view / "split.json").is_file()
    meta, tensors = checkpoint.latest(view / "checkpoints")
    assert meta["step"] == 200 and float(tensors["net/net/weight"][0, 0]) == 200.0
    assert kept_steps(run) == [100, 200, 300]  # the run itself is untouched


def test_plot_draws_each_series_in_its_colour(tmp_path):
    path = tmp_path / "p.png"
    plot.panels([plot.Panel("t", [1e3, 1e4, 1e5], {"a": [0.9, 0.8, 0.7], "b": [0.6, None, 0.5]}, reference=0.5)], path)
    img = np.asarray(Image.open(path).convert("RGB"))
    assert img.shape == (plot.H, plot.W, 3)
    for colour in plot.COLOURS[:2]:
        assert (img == colour).all(-1).sum() > 20  # the line and markers are drawn


def test_median_nuclear_diameter_of_drawn_discs():
    """Dark violet discs of known diameter on pale pink: the measured median is that diameter."""
    yy, xx = np.mgrid[:128, :128]
    images = np.empty((4, 128, 128, 3), np.uint8)
    images[:] = (235, 200, 215)
    for i in range(4):
        for cy in range(16, 128, 32):
            for cx in range(16, 128, 32):
                disc = (yy - cy) ** 2 + (xx - cx) ** 2 <= 5**2  # diameter about 10.5 px (area 81)
                images[i][disc] = (70, 40, 120)
    d, n = median_diameter(images, threshold=0.5, min_area=12)
    assert n == 4 * 16
    assert d == pytest.approx(2 * np.sqrt(81 / np.pi), rel=0.02)
