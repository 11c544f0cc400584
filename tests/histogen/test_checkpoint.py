"""histogen.checkpoint: safetensors + JSON round trip, damaged files passed over, pruning."""
from __future__ import annotations

import json

import torch

from histogen import checkpoint
from histogen.kernels import AdamWEMA


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
