"""A trained run as a model to ship (`histogen export --run RUN --out DIR`): a run folder whose one
checkpoint holds the sampling network's EMA weights and the other networks' weights, in float16,
without optimizer state or RNG: an eighth of a training checkpoint (fp32 weights, two Adam moments
and the EMA). Latent diffusion's autoencoder run is exported into DIR/autoencoder and config.yaml
names it relative to DIR, so the folder stands alone. `histogen sample` and `histogen eval` take it as
any run; `histogen train --out DIR` goes on from its weights with fresh optimizer moments."""
from __future__ import annotations

import dataclasses
import logging
import shutil
from pathlib import Path

import torch

from histogen import checkpoint, config
from histogen.run import load_autoencoder, load_run, sampling_nets
from histogen.run_folder import RunFolder, TrainError

log = logging.getLogger("histogen.export")
AUTOENCODER = "autoencoder"  # the exported autoencoder's folder, inside the exported run


def export_run(run: Path, out: Path, autoencoder: Path | None = None) -> int:
    """Write `run`'s latest checkpoint as an exported run in `out`; returns its step. `autoencoder`:
    for latent diffusion, another autoencoder run to ship in place of the one it trained on, whose
    encoder must be that one's (a decoder fine-tuned with model.train_encoder false)."""
    source = RunFolder(run)
    if RunFolder(out).started:
        raise TrainError(f"{out} already holds a run; export into a new folder")
    task, opts, meta = load_run(source, torch.device("cpu"))
    if autoencoder is not None:
        trained_on = getattr(task, "autoencoder", None)  # latent diffusion's frozen autoencoder, loaded with it
        if trained_on is None:
            raise TrainError(f"--autoencoder: {run} is not latent diffusion; it has no autoencoder to replace")
        check_same_encoder(trained_on, source, RunFolder(autoencoder))
    step = int(meta["step"])
    nets = sampling_nets(task, opts)
    tensors = {f"net/{name}/{key}": (v.half() if v.is_floating_point() else v).contiguous().clone()
               for name, net in nets.items() for key, v in net.state_dict().items()}
    cfg = source.cfg
    if cfg.autoencoder:
        export_run(autoencoder or Path(cfg.autoencoder), out / AUTOENCODER)
        cfg = dataclasses.replace(cfg, autoencoder=AUTOENCODER)
    out.mkdir(parents=True, exist_ok=True)
    for name in ("split.json", "labels.json"):
        if (source.path / name).is_file():
            shutil.copyfile(source.path / name, out / name)
    extra = {**meta["extra"], "exported_from": str(run)}
    written = checkpoint.write(RunFolder(out).checkpoints, step, tensors, {}, extra, keep=1)
    config.save(cfg, out / "config.yaml")  # last: the folder is a run once its checkpoint is whole
    log.info("%s: step %d exported to %s (%.1f MB)", run, step, out,
             written.with_suffix(".safetensors").stat().st_size / 1e6)
    return step


def check_same_encoder(trained_on: torch.nn.Module, run: RunFolder, autoencoder: RunFolder) -> None:
    """Refuse an autoencoder whose encoder differs from `trained_on`, the one `run`'s latents came from."""
    given = load_autoencoder(autoencoder, torch.device("cpu")).encoder.state_dict()
    trained_on = trained_on.encoder.state_dict()
    if trained_on.keys() != given.keys() or not all(torch.equal(trained_on[k], given[k]) for k in given):
        raise TrainError(f"--autoencoder: {autoencoder.path}'s encoder is not the one {run.path} was trained on "
                         f"({run.cfg.autoencoder}); give a decoder fine-tuned from it with model.train_encoder=false")
