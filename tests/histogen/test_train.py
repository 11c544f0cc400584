"""histogen train / sample end to end on real stores: exact resume (also after SIGKILL), seeded
sampling, every kind through the one loop, DDP with two processes, and clear errors."""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr
from safetensors.torch import load_file

from histogen import config
from histogen.cli import main
from histogen.config import ConfigError
from histogen.run import build_task
from histogen.run_folder import TrainError
from histogen.sample import sample_run
from histogen.train import lr_scale, train
from tests.support.stores import make_store
from tests.support.training import SMALL

from tests.support.data import ROOT  # noqa: E402

@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    return make_store(tmp_path_factory.mktemp("data") / "p.zarr", {"s1": 12, "s2": 10, "s3": 9}, patch=32)


def cfg(preset="diffusion-tiny", *extra):
    return config.resolve(preset, SMALL + list(extra))


def final(run: Path) -> dict[str, torch.Tensor]:
    last = sorted((run / "checkpoints").glob("step-*.safetensors"))[-1]
    return {k: v for k, v in load_file(str(last)).items() if not k.startswith("rng/")}


def assert_same(a: dict, b: dict):
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)


def test_resume_gives_the_same_weights(store, tmp_path):
    c = cfg("diffusion-tiny", "train.steps=4", "train.ckpt_every=2", "train.sample_every=2", "train.val_every=2")
    train(c, [store], tmp_path / "straight", show_progress=False)
    half = config.resolve("diffusion-tiny", SMALL + ["train.steps=2", "train.ckpt_every=2", "train.sample_every=2",
                                                     "train.val_every=2"])
    train(half, [store], tmp_path / "resumed", show_progress=False)
    assert json.loads(sorted((tmp_path / "resumed" / "checkpoints").glob("*.json"))[-1].read_text())["step"] == 2
    result = train(c, [store], tmp_path / "resumed", show_progress=False)  # the same command, more steps
    assert result.step == 4
    assert_same(final(tmp_path / "straight"), final(tmp_path / "resumed"))
    a = final(tmp_path / "straight")
    assert any(("ema" in k) and not torch.equal(a[k], a[k.replace("/ema", "/exp_avg")]) for k in a)


def test_a_resumed_run_may_end_on_a_cooldown(store, tmp_path):
    """train.cooldown, set when a constant-rate run is resumed: the last steps' updates shrink with the rate."""
    sets = ["train.ckpt_every=1", "train.sample_every=100", "train.val_every=100"]
    train(cfg("diffusion-tiny", "train.steps=3", *sets), [store], tmp_path / "a", show_progress=False)
    for name in ("constant", "cooled"):
        shutil.copytree(tmp_path / "a", tmp_path / name)
    train(cfg("diffusion-tiny", "train.steps=4", *sets), [store], tmp_path / "constant", show_progress=False)
    train(cfg("diffusion-tiny", "train.steps=4", "train.cooldown=2", *sets), [store], tmp_path / "cooled",
          show_progress=False)
    before = final(tmp_path / "a")
    constant, cooled = final(tmp_path / "constant"), final(tmp_path / "cooled")
    assert lr_scale(3, 4, 2) == 0.5
    weights = [k for k in before if k.startswith("net/unet/") and k.endswith("weight")]
    # AdamW's step (moments and decoupled decay alike) is proportional to the rate; the moments are the same
    for k in weights:
        torch.testing.assert_close(cooled[k] - before[k], 0.5 * (constant[k] - before[k]), rtol=1e-3, atol=1e-7,
                                   msg=k)
    assert sum(float((constant[k] - before[k]).abs().sum()) for k in weights) > 0
    exp_avg = [k for k in constant if k.endswith("/exp_avg")]
    assert exp_avg and all(torch.equal(constant[k], cooled[k]) for k in exp_avg)
    assert [lr_scale(s, 10, 4) for s in range(10)] == [1, 1, 1, 1, 1, 1, 1, 0.75, 0.5, 0.25]
    assert lr_scale(5, 10, 0) == 1


# `python -m histogen`, SIGKILLed by itself right after the checkpoint of step 4 is written: a
# deterministic kill point, where a kill timed from outside could come after the last step.
KILLED_AFTER_STEP_4 = """
import os, signal, sys
from histogen import checkpoint
from histogen.cli import main
save = checkpoint.save
def save_then_die(folder, step, *args, **kwargs):
    save(folder, step, *args, **kwargs)
    if step == 4:
        os.kill(os.getpid(), signal.SIGKILL)
checkpoint.save = save_then_die
sys.exit(main(sys.argv[1:]))
"""


def test_killed_run_resumes_exactly(store, tmp_path):
    args = ["train", "--model", "diffusion", "--data", str(store), "--preset", "diffusion-tiny", "--quiet"]
    sets = [x for s in SMALL + ["train.steps=8", "train.ckpt_every=2", "train.sample_every=100", "train.val_every=100"]
            for x in ("--set", s)]
    assert main(args + ["--out", str(tmp_path / "straight")] + sets) == 0
    killed = subprocess.run([sys.executable, "-c", KILLED_AFTER_STEP_4, *args, "--out", str(tmp_path / "killed"),
                             *sets],
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=300)
    assert killed.returncode == -signal.SIGKILL
    checkpoints = sorted(p.name for p in (tmp_path / "killed" / "checkpoints").glob("*.json"))
    assert checkpoints[-1] == "step-00000004.json"
    assert main(args + ["--out", str(tmp_path / "killed")] + sets) == 0
    assert_same(final(tmp_path / "straight"), final(tmp_path / "killed"))


def test_outputs_and_seeded_sampling(store, tmp_path):
    run = tmp_path / "run"
    train(cfg("diffusion-tiny", "train.steps=2", "train.sample_every=2", "train.val_every=2", "train.ckpt_every=2"),
          [store], run, show_progress=False)
    assert (run / "samples" / "step-00000002.png").is_file()
    split = json.loads((run / "split.json").read_text())
    # 3 slides, val_fraction 0.5 (the tiny preset): round(1.5)
    assert len(split["val"]) == 2 and len(split["train"]) == 1
    scalars = read_scalars(next((run / "tb").glob("events.out.tfevents.*")))
    assert {"train/loss", "val/loss", "train/images_per_s"} <= set(scalars)
    assert [s for s, _ in scalars["train/loss"]] == [1, 2] and all(np.isfinite(v) for _, v in scalars["train/loss"])
    a = sample_run(run, 5, tmp_path / "s1", seed=1, steps=3)
    b = sample_run(run, 5, tmp_path / "s2", seed=1, steps=3)
    c = sample_run(run, 5, tmp_path / "s3", seed=2, steps=3)
    np.testing.assert_array_equal(a, b)
    assert a.shape == (5, 16, 16, 3) and a.dtype == np.uint8 and not np.array_equal(a, c)
    np.testing.assert_array_equal(zarr.open_array(str(tmp_path / "s1" / "samples.zarr"))[:], a)
    assert len(list((tmp_path / "s1").glob("sample-*.png"))) == 5 and (tmp_path / "s1" / "grid.png").is_file()


def test_progress_lines_in_a_log_file(store, tmp_path):
    """`histogen train ... > log 2>&1`: no terminal, so the progress is logged as status lines."""
    sets = [x for s in SMALL + ["train.steps=3", "train.sample_every=100", "train.val_every=100"] for x in ("--set", s)]
    log = tmp_path / "train.log"
    with open(log, "w") as f:
        r = subprocess.run([sys.executable, "-m", "histogen", "train", "--model", "diffusion", "--data", str(store),
                            "--out", str(tmp_path / "run"), "--preset", "diffusion-tiny", *sets], cwd=ROOT,
                           env={**os.environ, "HISTOGEN_PROGRESS_SECONDS": "0"},
                           stdout=f, stderr=subprocess.STDOUT, timeout=600)
    text = log.read_text()
    assert r.returncode == 0, text[-3000:]
    for step in (1, 2, 3):
        assert re.search(rf"INFO run: {step}/3 step \(\d+%\), [\d.]+ step/s, loss [\d.e+-]+, ", text), text


def test_bad_settings_write_nothing(store, tmp_path, caplog):
    """A typo in --set is refused before the run folder is written, so the corrected command runs."""
    run = tmp_path / "run"
    args = ["train", "--model", "diffusion", "--data", str(store), "--out", str(run), "--preset", "diffusion-tiny",
            "--quiet"]
    args += [x for s in SMALL + ["train.steps=1", "train.sample_every=100", "train.val_every=100"]
             for x in ("--set", s)]
    for bad, message in [("model.chanels=16", "unknown diffusion model key(s) chanels"),
                         ("model.channels=sixteen", "expected int"),
                         ("resolution=15", "multiple of 2")]:
        caplog.clear()
        assert main(args + ["--set", bad]) == 2
        assert message in caplog.text
        assert not run.exists()
    assert main(args + ["--set", "model.channels=16"]) == 0
    assert (run / "config.yaml").is_file() and (run / "checkpoints" / "step-00000001.json").is_file()


def read_scalars(path: Path) -> dict[str, list]:
    """Parse the TFRecord-framed event file independently of the writer."""
    from tensorboard.compat.proto.event_pb2 import Event

    data, out, pos = path.read_bytes(), {}, 0
    while pos < len(data):
        (n,) = struct.unpack("<Q", data[pos : pos + 8])
        event = Event.FromString(data[pos + 12 : pos + 12 + n])
        pos += 12 + n + 4
        for v in event.summary.value:
            out.setdefault(v.tag, []).append((event.step, v.simple_value))
    return out


@pytest.mark.parametrize("preset", ["ae-tiny", "gan-tiny"])
def test_other_kinds_train_and_sample(store, tmp_path, preset):
    run = tmp_path / preset
    extra = (["model.disc_channels=8", "model.disc_layers=2", "model.channel_mult=[1, 2]"] if preset == "ae-tiny"
             else ["model.channel_base=256", "model.channel_max=16"])
    steps = ["train.steps=2", "train.ckpt_every=2", "train.sample_every=2", "train.val_every=2"]
    c = config.resolve(preset, [s for s in SMALL if not s.startswith("model.")] + extra + steps)
    result = train(c, [store], run, show_progress=False)
    assert result.step == 2 and all(np.isfinite(v) for v in result.metrics.values())
    pixels = sample_run(run, 3, tmp_path / "samples")
    assert pixels.shape == (3, 16, 16, 3)


def test_latent_diffusion_on_a_trained_autoencoder(store, tmp_path):
    ae = tmp_path / "ae"
    train(config.resolve("ae-tiny", ["resolution=16", "train.batch_size=4", "train.steps=2", "train.ckpt_every=2",
                                     "train.sample_every=2", "train.val_every=2", "model.channel_mult=[1, 2, 2, 2]",
                                     "model.disc_channels=8", "model.disc_layers=2"]), [store], ae, show_progress=False)
    run = tmp_path / "ldm"
    c = config.resolve("ldm-tiny", SMALL + [f"autoencoder={ae}", "model.attention_resolutions=[2]", "train.steps=2",
                                            "train.ckpt_every=2", "train.sample_every=2", "train.val_every=2"])
    train(c, [store], run, show_progress=False)
    with pytest.raises(TrainError, match="--cond-from"):
        sample_run(run, 2, tmp_path / "s")
    pixels = sample_run(run, 2, tmp_path / "s", cond_from=store, guidance=2.0, steps=2)
    assert pixels.shape == (2, 16, 16, 3)


@pytest.mark.parametrize("name", ["ae-f8", "gan-128", "diffusion-64", "ldm-256"])
def test_every_preset_builds(name):
    c = config.resolve(name)
    ae = None
    if c.model.get("latent"):
        ae = build_task("ae", config.resolve("ae-f8").model, 256, None).nets["ae"]
    task = build_task(c.kind, c.model, c.resolution, 384 if c.data.conditional else None, ae)
    assert sum(p.numel() for p in task.nets.parameters()) > 1e6


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ddp_two_processes_match_one(store, tmp_path):
    """torchrun with 2 CPU processes (gloo, loopback) on a global batch of 4 ends with the weights
    of one process on the same global batch."""
    # fp32: bf16 autocast rounds differently when the batch is split over processes.
    sets = [x for s in SMALL + ["train.bf16=false", "train.steps=3", "train.ckpt_every=3", "train.sample_every=100",
                                "train.val_every=100", "data.flip=false", "data.rot90=false"] for x in ("--set", s)]
    args = ["train", "--model", "diffusion", "--data", str(store), "--preset", "diffusion-tiny", "--quiet"] + sets
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MASTER_ADDR": "127.0.0.1"}
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                        str(free_port()), "-m", "histogen"] + args + ["--out", str(tmp_path / "ddp")], cwd=ROOT,
                       env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert main(args + ["--out", str(tmp_path / "one")]) == 0
    a, b = final(tmp_path / "ddp"), final(tmp_path / "one")
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5, msg=k)


def test_nan_guard_keeps_the_last_good_checkpoint(store, tmp_path, caplog):
    run = tmp_path / "run"
    code = main(["train", "--model", "diffusion", "--data", str(store), "--out", str(run), "--preset", "diffusion-tiny",
                 "--quiet"]
                + [x for s in SMALL + ["train.steps=20", "train.ckpt_every=1", "train.grad_clip=0", "model.lr=1e30"]
                   for x in ("--set", s)])
    assert code == 2
    assert "not finite" in caplog.text and "is intact" in caplog.text
    saved = sorted((run / "checkpoints").glob("step-*.json"))
    assert saved
    from histogen import checkpoint

    meta, tensors = checkpoint.latest(run / "checkpoints")
    assert all(torch.isfinite(v).all() for k, v in tensors.items() if k.startswith("net/"))


def test_bad_input_gets_one_clear_line(store, tmp_path, caplog):
    base = ["train", "--data", str(store), "--quiet"]
    empty = tmp_path / "empty.zarr"
    from engine.store import PatchStore

    PatchStore.create_or_resume(empty, 32, {})
    plain = make_store(tmp_path / "plain.zarr", {"a": 4}, patch=32, embeddings=False)
    cases = [
        (["train", "--model", "diffusion", "--data", str(empty), "--out", str(tmp_path / "r1"), "--preset",
          "diffusion-tiny"], "no complete slide"),
        (["train", "--model", "diffusion", "--data", str(plain), "--out", str(tmp_path / "r2"), "--preset", "ldm-tiny"],
         "no path-foundation embeddings but the preset is conditional"),
        (base + ["--model", "diffusion", "--out", str(tmp_path / "r3"), "--preset", "nope"], "unknown preset"),
        (base + ["--model", "diffusion", "--out", str(tmp_path / "r4"), "--preset", "diffusion-tiny", "--set",
                 "model.chanels=3"], "unknown diffusion model key"),
        (base + ["--model", "diffusion", "--out", str(tmp_path / "r5"), "--preset", "diffusion-tiny", "--set",
                 "resolution=64"], "larger than its 32 px patches"),
        (base + ["--model", "gan", "--out", str(tmp_path / "r6"), "--preset", "diffusion-tiny"], "not a gan"),
        (["sample", "--run", str(tmp_path / "nothing"), "--out", str(tmp_path / "s")], "not a training run"),
    ]
    for argv, message in cases:
        caplog.clear()
        assert main(argv) == 2, argv
        assert message in caplog.text, (argv, caplog.text)
    # a run whose only checkpoint is damaged, and a resume with other settings
    run = tmp_path / "run"
    train(cfg("diffusion-tiny", "train.steps=1", "train.sample_every=100", "train.val_every=100"), [store], run,
          show_progress=False)
    with pytest.raises(TrainError, match="other settings.*model.channels"):
        train(config.resolve("diffusion-tiny", SMALL + ["model.channels=8", "train.steps=2"]), [store], run,
              show_progress=False)
    blob = next((run / "checkpoints").glob("*.safetensors"))
    blob.write_bytes(blob.read_bytes()[:-100])
    caplog.clear()
    assert main(["sample", "--run", str(run), "--out", str(tmp_path / "s")]) == 2
    assert "damaged checkpoint" in caplog.text and "no usable checkpoint" in caplog.text
    with pytest.raises(ConfigError, match="latent"):
        train(config.resolve("ldm-tiny", SMALL), [store], tmp_path / "ldm", show_progress=False)
