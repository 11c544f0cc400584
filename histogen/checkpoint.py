"""Checkpoints: tensors in safetensors, everything else in JSON; never pickle.

    runs/NAME/checkpoints/step-00001000.safetensors   nets, optimizer state (moments, EMA), RNG
    runs/NAME/checkpoints/step-00001000.json          step, optimizer hyper-parameters, the
                                                       tensors file's SHA-256; written last

An exported run (histogen.export) holds weights only, in float16, with no optimizer state or RNG.

Both are written to temporary names and renamed, the JSON last, so a checkpoint exists only when
whole; one that fails (a full disk) leaves nothing behind. A file that does not match its recorded
hash is reported and passed over.
"""
from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from engine.errors import UserError

log = logging.getLogger("histogen.checkpoint")
FORMAT = "histogen-checkpoint"


class CheckpointError(UserError):
    """No usable checkpoint where one is needed; the message says what to do."""


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def _flatten_optimizer(name: str, opt: torch.optim.Optimizer, tensors: dict) -> dict:
    sd = opt.state_dict()
    for idx, state in sd["state"].items():
        for key, value in state.items():
            tensors[f"opt/{name}/{idx}/{key}"] = value.detach().cpu().contiguous().clone()
    return {"param_groups": sd["param_groups"]}


def _rng_state() -> dict:
    states = {"rng/torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            states[f"rng/cuda/{i}"] = s
    return states


def save(folder: Path, step: int, nets: dict[str, torch.nn.Module], opts: dict[str, torch.optim.Optimizer],
         extra: dict | None = None, keep: int = 3) -> Path:
    tensors: dict[str, torch.Tensor] = {}
    for name, net in nets.items():
        for key, value in net.state_dict().items():
            tensors[f"net/{name}/{key}"] = value.detach().cpu().contiguous().clone()  # no shared storage in safetensors
    optimizers = {n: _flatten_optimizer(n, o, tensors) for n, o in opts.items()}
    tensors.update(_rng_state())
    return write(folder, step, tensors, optimizers, extra, keep)


def write(folder: Path, step: int, tensors: dict[str, torch.Tensor], optimizers: dict, extra: dict | None = None,
          keep: int = 3) -> Path:
    """Write one checkpoint of `tensors` (net/NAME/KEY, opt/NAME/..., rng/...) atomically and prune
    the folder to its last `keep`; `optimizers` holds each optimizer's param_groups."""
    folder.mkdir(parents=True, exist_ok=True)
    meta = {"format": FORMAT, "step": step, "optimizers": optimizers, "extra": extra or {}}
    stem = folder / f"step-{step:08d}"
    written = [stem.with_suffix(".safetensors.tmp"), stem.with_suffix(".safetensors"), stem.with_suffix(".json.tmp")]
    try:
        _save_tensors(tensors, written[0])
        os.replace(written[0], written[1])
        meta["sha256"] = _sha256(written[1])
        written[2].write_text(json.dumps(meta, indent=1))
        os.replace(written[2], stem.with_suffix(".json"))  # last: the checkpoint exists from here on
    except BaseException:
        # A full disk or Ctrl-C: what this checkpoint wrote goes, the space with it; earlier ones stay whole.
        for path in written:
            path.unlink(missing_ok=True)
        raise
    prune(folder, keep)
    return stem.with_suffix(".json")


def _save_tensors(tensors: dict, path: Path) -> None:
    """safetensors' save_file, with its I/O error of a full disk raised as the OSError it is."""
    try:
        save_file(tensors, str(path))
    except SafetensorError as e:
        if "os error 28" in str(e):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path)) from e
        raise


def prune(folder: Path, keep: int) -> None:
    for meta in sorted(folder.glob("step-*.json"))[:-keep]:
        meta.with_suffix(".safetensors").unlink(missing_ok=True)
        meta.unlink()


def latest(folder: Path) -> tuple[dict, dict] | None:
    """(meta, tensors) of the newest whole checkpoint; damaged ones are reported and skipped."""
    for meta_path in sorted(folder.glob("step-*.json"), reverse=True):
        tensors_path = meta_path.with_suffix(".safetensors")
        try:
            meta = json.loads(meta_path.read_text())
            if meta.get("format") != FORMAT:
                raise ValueError("not a histogen checkpoint")
            if not tensors_path.is_file() or _sha256(tensors_path) != meta["sha256"]:
                raise ValueError("its tensors file is missing or does not match its recorded SHA-256")
            return meta, load_file(str(tensors_path))
        except (ValueError, KeyError, OSError) as e:
            log.warning("%s: damaged checkpoint (%s); trying the one before", meta_path, e)
    return None


def restore(meta: dict, tensors: dict, nets: dict[str, torch.nn.Module], opts: dict[str, torch.optim.Optimizer],
            rng: bool = True) -> None:
    """Load a checkpoint into `nets` and `opts`. An exported one (histogen.export: weights only, the
    sampling net's being its EMA) leaves the optimizers fresh: their moments start at zero and their
    EMA at the weights."""
    for name, net in nets.items():
        prefix = f"net/{name}/"
        net.load_state_dict({k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)})
    for name, opt in opts.items():
        if name not in meta["optimizers"]:
            continue
        state: dict = {}
        prefix = f"opt/{name}/"
        for k, v in tensors.items():
            if k.startswith(prefix):
                idx, key = k[len(prefix):].split("/", 1)
                state.setdefault(int(idx), {})[key] = v
        opt.load_state_dict({"state": state, "param_groups": meta["optimizers"][name]["param_groups"]})
    if rng and "rng/torch" in tensors:
        torch.set_rng_state(tensors["rng/torch"])
        if torch.cuda.is_available():
            cuda = [tensors[k] for k in sorted(k for k in tensors if k.startswith("rng/cuda/"))]
            if len(cuda) == torch.cuda.device_count():
                torch.cuda.set_rng_state_all(cuda)
