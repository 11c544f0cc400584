"""histogen export: a run folder to ship (EMA weights in float16, no optimizer state) that samples as
its source run does, stands alone with its autoencoder inside, and trains on from its weights; a
decoder fine-tuned on a frozen encoder (train.init_from, model.train_encoder false) shipped in place
of the autoencoder a latent diffusion trained on, and only where the encoder is that one."""
from __future__ import annotations

import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from histogen import checkpoint, config
from histogen.cli import main
from histogen.export import export_run
from histogen.run import ema_net, load_run
from histogen.run_folder import RunFolder, TrainError
from histogen.sample import sample_run
from histogen.train import train
from tests.support.stores import make_store
from tests.support.training import SMALL

STEPS = ["train.ckpt_every=3", "train.sample_every=3", "train.val_every=3"]


def ldm_cfg(ae: Path, steps: int):
    return config.resolve("ldm-tiny", SMALL + [f"autoencoder={ae}", "model.attention_resolutions=[2]",
                                               "data.conditional=false", f"train.steps={steps}"] + STEPS)


AE = ["resolution=16", "train.batch_size=4", "train.steps=3", "model.channel_mult=[1, 2, 2, 2]",
      "model.disc_channels=8", "model.disc_layers=2"] + STEPS


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> tuple[Path, Path, Path]:
    """(store, autoencoder run, latent diffusion run on it), trained 3 steps each."""
    root = tmp_path_factory.mktemp("export")
    store = make_store(root / "p.zarr", {"s1": 12, "s2": 10, "s3": 9}, patch=32)
    ae = root / "ae"
    train(config.resolve("ae-tiny", AE), [store], ae, show_progress=False)
    ldm = root / "ldm"
    train(ldm_cfg(ae, 3), [store], ldm, show_progress=False)
    return store, ae, ldm


def test_exported_weights_are_the_ema_in_float16_without_optimizer_state(runs, tmp_path):
    _, ae, ldm = runs
    assert main(["export", "--run", str(ldm), "--out", str(tmp_path / "x")]) == 0
    for source, exported in ((ldm, tmp_path / "x"), (ae, tmp_path / "x" / "autoencoder")):
        task, opts, meta = load_run(RunFolder(source), torch.device("cpu"))
        step = int(meta["step"])
        ema = ema_net(task, opts).state_dict()
        files = list((exported / "checkpoints").glob("*.safetensors"))
        assert [f.name for f in files] == [f"step-{step:08d}.safetensors"]
        tensors = load_file(str(files[0]))
        assert not [k for k in tensors if not k.startswith("net/")]  # no moments, no EMA copy, no RNG
        prefix = f"net/{task.sample_net}/"
        assert {k[len(prefix):] for k in tensors if k.startswith(prefix)} == set(ema)
        for key, value in ema.items():
            if value.is_floating_point():
                assert tensors[prefix + key].dtype == torch.float16
                torch.testing.assert_close(tensors[prefix + key], value.half(), rtol=0, atol=0)
        # the EMA differs from the raw weights after 3 steps: the export took the EMA, not the weights
        raw = task.nets[task.sample_net].state_dict()
        assert any(not torch.equal(raw[k], ema[k]) for k in ema if ema[k].is_floating_point())


def test_an_exported_latent_run_stands_alone_and_samples_as_its_source(runs, tmp_path):
    _, ae, ldm = runs
    before = sample_run(ldm, 6, tmp_path / "before", steps=4, seed=5)
    shipped = tmp_path / "shipped"
    main(["export", "--run", str(ldm), "--out", str(tmp_path / "x")])
    shutil.move(tmp_path / "x", shipped)  # moved: its config names the autoencoder inside it, not by a path
    assert RunFolder(shipped).cfg.autoencoder == str((shipped / "autoencoder").resolve())
    after = sample_run(shipped, 6, tmp_path / "after", steps=4, seed=5)
    diff = np.abs(before.astype(int) - after.astype(int))
    assert diff.mean() < 1.0 and diff.max() <= 8, (diff.mean(), diff.max())  # float16 weights: rounding only
    assert before.std() > 5  # not a blank picture that would match anything


def test_training_goes_on_from_an_exported_run(runs, tmp_path, caplog):
    store, _, ldm = runs
    caplog.set_level(logging.INFO, logger="histogen")
    out = tmp_path / "x"
    export_step = int(checkpoint.latest(ldm / "checkpoints")[0]["step"])
    main(["export", "--run", str(ldm), "--out", str(out)])
    result = train(ldm_cfg(out / "autoencoder", export_step + 3), [store], out, show_progress=False)
    assert result.step == export_step + 3 and all(np.isfinite(v) for v in result.metrics.values())
    assert "exported weights only" in caplog.text
    meta, tensors = checkpoint.latest(out / "checkpoints")
    assert meta["optimizers"] and any(k.startswith("opt/") for k in tensors)  # a training checkpoint again


def test_export_refuses_a_folder_that_holds_a_run(runs):
    _, ae, ldm = runs
    with pytest.raises(TrainError, match="already holds a run"):
        export_run(ldm, ae)


def ae_of(run: Path) -> torch.nn.Module:
    task, opts, _ = load_run(RunFolder(run), torch.device("cpu"))
    return ema_net(task, opts)


def test_a_decoder_fine_tuned_on_the_frozen_encoder_ships_with_the_latent_run(runs, tmp_path):
    store, ae, ldm = runs
    decoder = tmp_path / "decoder"
    train(config.resolve("ae-tiny", AE + ["model.train_encoder=false", "model.disc_start=0",
                                          f"train.init_from={ae}"]), [store], decoder, show_progress=False)
    before, after = ae_of(ae), ae_of(decoder)
    for key, value in before.encoder.state_dict().items():  # the encoder is the EMA one the diffusion used
        torch.testing.assert_close(after.encoder.state_dict()[key], value, rtol=0, atol=0)
    trained = after.decoder.state_dict()
    assert any(not torch.equal(trained[k], v) for k, v in before.decoder.state_dict().items())

    main(["export", "--run", str(ldm), "--out", str(tmp_path / "x"), "--autoencoder", str(decoder)])
    shipped = ae_of(tmp_path / "x" / "autoencoder")
    for key, value in trained.items():
        torch.testing.assert_close(shipped.decoder.state_dict()[key].float(), value.half().float(), rtol=0, atol=0)

    other = tmp_path / "other"  # trained on its own: another encoder, another latent space
    train(config.resolve("ae-tiny", AE + ["train.seed=1"]), [store], other, show_progress=False)
    with pytest.raises(TrainError, match="encoder is not the one"):
        export_run(ldm, tmp_path / "y", other)
    assert not (tmp_path / "y").exists()


def test_a_frozen_encoder_needs_a_run_to_start_from(runs, tmp_path):
    with pytest.raises(TrainError, match="train.init_from"):
        train(config.resolve("ae-tiny", AE + ["model.train_encoder=false"]), [runs[0]], tmp_path / "r",
              show_progress=False)
    assert not (tmp_path / "r").exists()  # refused before anything is written
