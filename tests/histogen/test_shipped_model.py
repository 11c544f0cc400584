"""pretrained/he64, the model `make demo` samples: a run folder within its card's 25 MB, holding
exported weights only, that samples H&E-coloured tissue as any run does."""
from __future__ import annotations

import numpy as np
from safetensors.torch import load_file

from histogen.run_folder import RunFolder
from histogen.sample import sample_run
from tests.support.data import ROOT

SHIPPED = ROOT / "pretrained" / "he64"


def test_the_shipped_model_fits_its_card_and_holds_exported_weights_only():
    files = sorted(SHIPPED.rglob("*.safetensors"))
    assert files and sum(f.stat().st_size for f in files) <= 25_000_000
    for f in files:  # one checkpoint per run folder, no optimizer state or RNG (histogen export)
        assert len(list(f.parent.glob("*.safetensors"))) == 1
        assert all(k.startswith("net/") for k in load_file(str(f)))
    cfg = RunFolder(SHIPPED).cfg
    assert cfg.autoencoder is None or cfg.autoencoder.startswith(str(SHIPPED.resolve()))  # it stands alone


def test_the_shipped_model_samples_h_and_e_coloured_tissue(tmp_path):
    pixels = sample_run(SHIPPED, 8, tmp_path, steps=10, seed=0)
    assert pixels.shape == (8, 64, 64, 3) and pixels.dtype == np.uint8
    red, green, blue = pixels.reshape(-1, 3).mean(0)
    assert red > green + 15 and blue > green  # eosin and haematoxylin both absorb green most: pink to purple
    assert min(p.std() for p in pixels) > 5  # texture in every sample, not a flat field
    assert np.abs(pixels[0].astype(int) - pixels[1]).mean() > 10  # different draws, different tissue
