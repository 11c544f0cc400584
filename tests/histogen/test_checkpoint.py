"""histogen.checkpoint: safetensors + JSON round trip, damaged files passed over, pruning, and a
disk that fills up: never half a checkpoint, and `histogen train` resumes from the last whole one."""
from __future__ import annotations

import errno
import json

import pytest
import torch
from safetensors.torch import load_file

from histogen import checkpoint
from histogen.cli import main
from histogen.kernels import AdamWEMA
from tests.support.filesystems import grow, small_filesystem
from tests.support.stores import make_store
from tests.support.training import SMALL


def setup(seed=0):
    torch.manual_seed(seed)
    nets = {"a": torch.nn.Sequential(torch.nn.Linear(3, 5), torch.nn.GroupNorm(1, 5)), "b": torch.nn.Linear(5, 2)}
    opts = {"o": AdamWEMA([p for n in nets.values() for p in n.parameters()], lr=1e-2, ema_decay=0.9)}
    return nets, opts


def steps(nets, opts, n):
    for _ in range(n):
        loss = nets["b"](nets["a"](torch.randn(4, 3))).square().mean()
        loss.backward()
        opts["o"].step()
        opts["o"].zero_grad()


def test_round_trip_continues_exactly(tmp_path):
    nets, opts = setup()
    steps(nets, opts, 3)
    checkpoint.save(tmp_path, 3, nets, opts)
    steps(nets, opts, 2)
    want = [p.clone() for n in nets.values() for p in n.parameters()]
    want_ema = [e.clone() for e in opts["o"].ema_parameters()]
    nets2, opts2 = setup(seed=1)  # other initial weights: everything must come from the file
    meta, tensors = checkpoint.latest(tmp_path)
    assert meta["step"] == 3
    checkpoint.restore(meta, tensors, nets2, opts2)
    steps(nets2, opts2, 2)  # the RNG state was restored too: the same inputs are drawn
    for p, w in zip([p for n in nets2.values() for p in n.parameters()], want):
        torch.testing.assert_close(p, w, rtol=0, atol=0)
    for e, w in zip(opts2["o"].ema_parameters(), want_ema):
        torch.testing.assert_close(e, w, rtol=0, atol=0)


def test_damaged_checkpoint_is_passed_over_and_old_ones_pruned(tmp_path, caplog):
    nets, opts = setup()
    for s in (1, 2, 3, 4):
        checkpoint.save(tmp_path, s, nets, opts, keep=3)
    assert sorted(p.name for p in tmp_path.glob("*.json")) == ["step-00000002.json", "step-00000003.json",
                                                               "step-00000004.json"]
    newest = tmp_path / "step-00000004.safetensors"
    data = bytearray(newest.read_bytes())
    data[-10] ^= 0xFF
    newest.write_bytes(bytes(data))
    meta, _ = checkpoint.latest(tmp_path)
    assert meta["step"] == 3 and "step-00000004.json: damaged checkpoint" in caplog.text
    (tmp_path / "step-00000003.json").write_text("{not json")
    assert checkpoint.latest(tmp_path)[0]["step"] == 2
    (tmp_path / "step-00000002.safetensors").unlink()
    assert checkpoint.latest(tmp_path) is None
    assert not list(tmp_path.glob("*.tmp"))


def test_checkpoint_has_no_pickle(tmp_path):
    nets, opts = setup()
    steps(nets, opts, 1)
    path = checkpoint.save(tmp_path, 1, nets, opts)
    meta = json.loads(path.read_text())
    assert meta["format"] == "histogen-checkpoint" and len(meta["sha256"]) == 64
    from safetensors import safe_open

    with safe_open(str(path.with_suffix(".safetensors")), "pt") as f:
        keys = set(f.keys())
    assert "net/a/0.weight" in keys and "opt/o/0/ema" in keys and "rng/torch" in keys


def test_full_disk_leaves_no_half_checkpoint(tmp_path):
    torch.manual_seed(0)
    nets = {"a": torch.nn.Linear(256, 256)}  # a checkpoint of about 1 MB (weights, two moments, EMA)
    opts = {"o": AdamWEMA(nets["a"].parameters(), lr=1e-2, ema_decay=0.9)}
    nets["a"](torch.randn(4, 256)).square().mean().backward()
    opts["o"].step()  # the optimizer's state exists from its first step
    with small_filesystem(tmp_path / "fs", 5 << 19) as fs:
        saved = []
        with pytest.raises(OSError) as raised:
            for step in range(1, 10):
                checkpoint.save(fs, step, nets, opts, keep=10)
                saved.append(step)
        assert raised.value.errno == errno.ENOSPC and raised.value.filename.endswith(".safetensors.tmp")
        assert saved and sorted(p.name for p in fs.iterdir()) == [
            f"step-{s:08d}.{ext}" for s in saved for ext in ("json", "safetensors")]
        meta, tensors = checkpoint.latest(fs)
        assert meta["step"] == saved[-1]
        torch.testing.assert_close(tensors["net/a/weight"], nets["a"].weight.detach(), rtol=0, atol=0)


def test_train_on_a_full_disk_says_so_once_and_resumes(tmp_path, caplog):
    store = make_store(tmp_path / "p.zarr", {"s1": 12, "s2": 10, "s3": 9}, patch=32)
    sets = [x for s in SMALL + ["train.steps=8", "train.ckpt_every=2", "train.sample_every=100", "train.val_every=100"]
            for x in ("--set", s)]
    args = ["train", "--model", "diffusion", "--data", str(store), "--preset", "diffusion-tiny", "--quiet", *sets]
    assert main(args + ["--out", str(tmp_path / "straight")]) == 0
    one = (tmp_path / "straight" / "checkpoints" / "step-00000008.safetensors").stat().st_size
    with small_filesystem(tmp_path / "fs", 5 * one // 2) as fs:  # room for two checkpoints
        assert main(args + ["--out", str(fs / "run")]) == 1
        errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
        assert len(errors) == 1 and errors[0].startswith(f"no space left on the disk writing {fs / 'run'}")
        assert errors[0].endswith("free space there, or write elsewhere; the last checkpoint is kept; "
                                  "run the same command to resume")
        left = sorted(p.name for p in (fs / "run" / "checkpoints").iterdir())
        assert left == ["step-00000002.json", "step-00000002.safetensors", "step-00000004.json",
                        "step-00000004.safetensors"]
        grow(fs, 8 * one)
        assert main(args + ["--out", str(fs / "run")]) == 0
        resumed = load_file(str(fs / "run" / "checkpoints" / "step-00000008.safetensors"))
    straight = load_file(str(tmp_path / "straight" / "checkpoints" / "step-00000008.safetensors"))
    for k in straight:
        if not k.startswith("rng/"):
            torch.testing.assert_close(resumed[k], straight[k], rtol=0, atol=0, msg=k)
