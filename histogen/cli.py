"""histogen train | sample | eval | export: the command line; the work is in histogen.train,
histogen.sample, histogen.evaluate and histogen.export. Flag defaults come from the settings they fill
(Sampling, EvalConfig)."""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from engine.errors import run_command, setup_logging
from histogen import config
from histogen.config import ConfigError
from histogen.evaluate import EvalConfig, evaluate
from histogen.evaluation.settings import encoder_flags
from histogen.export import export_run
from histogen.report import console_lines
from histogen.models.registry import KINDS
from histogen.sample import sample_run
from histogen.samples_folder import SamplesFolder
from histogen.sampling import Sampling
from histogen.train import train

log = logging.getLogger("histogen")
INTERRUPTED = "the last checkpoint is kept; run the same command to resume"


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="histogen",
                                description="Train generative models of histopathology on patch stores.")
    sub = p.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="train (or resume) a model on patch stores")
    t.add_argument("--model", required=True, choices=list(KINDS))
    t.add_argument("--data", required=True, type=Path, nargs="+", help="patch store(s) made by python -m engine.tile")
    t.add_argument("--out", required=True, type=Path, help="run folder, e.g. runs/NAME; the same command resumes it")
    t.add_argument("--preset", help=f"a preset name ({', '.join(config.presets())}) or a YAML file; default per model: "
                                    + ", ".join(f"{k} {v.preset}" for k, v in KINDS.items()))
    t.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, e.g. --set train.steps=500 --set model.channels=64 (repeatable)")
    t.add_argument("--quiet", action="store_true", help="no progress bar")
    s = sub.add_parser("sample", help="write samples of a trained run")
    s.add_argument("--run", required=True, type=Path)
    s.add_argument("--n", type=int, default=64)
    s.add_argument("--out", required=True, type=Path)
    s.add_argument("--cond-from", type=Path, help="patch store whose embeddings condition a conditional model")
    s.add_argument("--label",
                   help="the class to sample, for a run trained with data.label (default: every class in turn)")
    s.add_argument("--guidance", type=float, default=Sampling().guidance,
                   help="classifier-free guidance scale (1 = none)")
    s.add_argument("--steps", type=int, default=Sampling().steps, help="DDIM steps")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--beside", type=Path,
                   help="a picture (e.g. a run's grid of real patches) to put beside the samples' grid "
                        "in OUT/beside.png")
    d = EvalConfig()
    e = sub.add_parser("eval", help="measure how real a run's samples are; writes metrics.json and report.html")
    e.add_argument("--run", type=Path, help="run folder of histogen train (samples are drawn from it)")
    e.add_argument("--samples", type=Path,
                   help="evaluate images made elsewhere: a folder with samples.zarr or PNG files "
                        "(without --run, real patches are compared at the samples' size)")
    e.add_argument("--real", required=True, type=Path, nargs="+",
                   help="patch store(s) with real patches; "
                        "the run's validation slides are used, never its training slides")
    e.add_argument("--out", required=True, type=Path, help="report folder")
    e.add_argument("--n", type=int, default=d.n, help="generated samples, and at most this many real patches")
    e.add_argument("--encoder", action="append", metavar="NAME[=WEIGHTS]",
                   help="encoder of the learned-space metrics: a name of engine.encoder_registry, with =PATH for "
                        f"local weights (default {d.encoder}), a SavedModel folder or a TorchScript file (.pt); repeat "
                        "it for Fréchet distance and precision/recall in each further encoder's space too")
    e.add_argument("--revision", help="hub revision of the encoder")
    e.add_argument("--allow-pickle", action="store_true",
                   help="an encoder's local weights may be a pickled checkpoint (tensors only, never code)")
    e.add_argument("--steps", type=int, default=d.steps, help="DDIM steps")
    e.add_argument("--guidance", type=float, default=d.guidance)
    e.add_argument("--batch-size", type=int, default=d.batch_size)
    e.add_argument("--seed", type=int, default=d.seed)
    e.add_argument("--train-floor", action="store_true",
                   help="also measure the run's training patches against the held-out ones (model-free measures): "
                        "how far the tissue it learned from is from held-out tissue, which no model of it can be "
                        "expected to beat")
    x = sub.add_parser("export", help="write a run's latest EMA weights (float16, no optimizer state) as a run "
                                      "folder to ship; latent diffusion's autoencoder goes inside it")
    x.add_argument("--run", required=True, type=Path)
    x.add_argument("--out", required=True, type=Path, help="a new folder")
    x.add_argument("--autoencoder", type=Path,
                   help="latent diffusion: ship this autoencoder run instead of the one it trained on (a decoder "
                        "fine-tuned on the same encoder, model.train_encoder=false)")
    return p


def run_export(a) -> int:
    step = export_run(a.run, a.out, a.autoencoder)
    size = sum(f.stat().st_size for f in a.out.rglob("*.safetensors"))
    print(f"{a.out}: step {step} of {a.run}, {size / 1e6:.1f} MB of weights")
    return 0


def run_train(a) -> int:
    cfg = config.resolve(a.preset or KINDS[a.model].preset, a.overrides)
    if cfg.kind != a.model:
        raise ConfigError(f"preset {a.preset} trains a {cfg.kind}, not a {a.model}; pick a {a.model} preset")
    result = train(cfg, a.data, a.out, show_progress=False if a.quiet else None)
    print(f"{a.out}: step {result.step}, {result.images_per_s:.1f} images/s, "
          + ", ".join(f"{k} {v:.4g}" for k, v in result.metrics.items()))
    return 0


def run_sample(a) -> int:
    if a.n < 1 or a.steps < 1:
        raise ConfigError("--n and --steps must be at least 1")
    pixels = sample_run(a.run, a.n, a.out, a.cond_from, a.guidance, a.steps, a.seed, label=a.label)
    folder = SamplesFolder(a.out)
    print(f"{len(pixels)} samples in {a.out} (grid: {folder.grid}, array: {folder.array})")
    if a.beside:
        print(f"{a.beside} beside the samples: {folder.write_beside(a.beside)}")
    return 0


def run_eval(a) -> int:
    if a.n < 2 or a.steps < 1 or a.batch_size < 1:
        raise ConfigError("--n must be at least 2, --steps and --batch-size at least 1")
    first, *more = a.encoder or [EvalConfig().encoder]
    cfg = EvalConfig(n=a.n, batch_size=a.batch_size, seed=a.seed, steps=a.steps, guidance=a.guidance, encoder=first,
                     more_encoders=tuple(more), revision=a.revision, allow_pickle=a.allow_pickle,
                     train_floor=a.train_floor)
    ev = evaluate(a.real, a.out, run=a.run, samples=a.samples, cfg=cfg)
    print("\n".join(console_lines(ev)))
    print(f"report: {a.out / 'report.html'}, numbers: {a.out / 'metrics.json'}")
    return 0


def main(argv=None) -> int:
    a = parser().parse_args(argv)
    setup_logging()
    job = {"train": run_train, "sample": run_sample, "eval": run_eval, "export": run_export}[a.command]
    flags = encoder_flags((a.encoder or [EvalConfig().encoder])[0]) if a.command == "eval" else None
    return run_command(lambda: job(a), log, INTERRUPTED, flags=flags)


if __name__ == "__main__":
    sys.exit(main())
