"""Realism on real tissue: tile a folder of H&E slides or images, train diffusion and a GAN at 64 px
for a fixed budget, sample, evaluate on the slides the runs held out (histogen.evaluate), and
write sample grids beside real grids and a table of every metric with its real-vs-real floor.

    python -m benchmarks quality [--data DIR] [--budget smoke|short|cpu|he64|gpu] [--models diffusion gan diffusion-pf]
                                 [--set KEY=VALUE ...] [--encoder NAME[=WEIGHTS] | --encoder DIR]

`diffusion-pf` is the study's route: the stores are embedded with --encoder (a name of
engine.encoder_registry, Path Foundation by default, or a SavedModel folder with its interface)
and the diffusion preset is conditioned on each patch's embedding by it (data.embedding), with
classifier-free dropout of the condition; evaluation conditions on the held-out patches' embeddings.

Each sub-folder of DIR (or DIR itself when it holds slides) becomes one patch store, tiled at
TARGET_MPP so that every 64 px patch covers the same tissue area whatever the folder's
magnification. Stores and runs live under --work and are reused: a second call resumes or skips
what is done; a run with other settings (--set) gets a folder of its own.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import logging
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path


from benchmarks import report
from engine.embed import EmbedConfig, EmbedError, embed_store
from engine.encoder_registry import DEFAULT, named
from engine.errors import UserError, run_command, setup_logging
from engine.discover import find_slides
from engine.plan import PlanParams
from engine.mask import MaskParams
from engine.tile import TileConfig, tile_slides
from histogen import config
from histogen.evaluate import EvalConfig, evaluate
from histogen.evaluation.settings import encoder_flags
from histogen.export import export_run
from histogen.images import beside, grid
from histogen.run_folder import RunFolder
from histogen.train import train

log = logging.getLogger("benchmarks.quality")

CHECKOUT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = CHECKOUT.parent / "shared" / "data" / "he"  # ../shared/data/he beside the checkout
KINDS_TRAINED = ("diffusion", "gan")  # the default; diffusion-pf also needs an encoder to embed with
KINDS = (*KINDS_TRAINED, "diffusion-pf")
# A kind's (preset kind, overrides on top of it): the conditioned route is the budget's diffusion
# preset with these settings.
KIND_OVERRIDES = {"diffusion-pf": ("diffusion", ("data.conditional=true", "model.cond_drop=0.1"))}
PATCH = 64  # output pixels: the resolution both models train at
TARGET_MPP = 1.0  # µm/px: a 64 µm field, nuclei 5-10 px wide; no folder of the shared set needs upsampling

# µm/px of the shared H&E folders, whose files carry none: the publishers' magnification (its
# README) where stated, else read off nuclear size (lymphocyte nuclei about 7 µm, colonic
# epithelial nuclei about 5 µm wide). Folders not listed use the files' own MPP or --assume-mpp.
ASSUMED_MPP = {
    "osteosarcoma": 1.0,  # 10x
    "glas": 0.62,  # 20x, the GlaS challenge's stated 0.62 µm/px
    "gbm": 0.25,  # 40x
    "lung-colon": 0.5,  # not stated; nuclei 15-20 px long
    "camelyon": 0.9,  # "resampled"; lymphocyte nuclei about 8 px
    "ebhi-polyp": 0.65,  # "400x optics", but the 512 px files are downsampled: nuclei 7.7 px wide (measured)
}
# Checked by `python -m benchmarks nuclear-scale` (median nuclear diameter per folder against the
# folders of stated magnification): every entry is within 15 % of the scale it implies (RESULTS.md).


@dataclass(frozen=True)
class Budget:
    """How much work one call does: the preset of each model, overrides on top of it, and the
    evaluation's size."""

    presets: dict  # model kind -> preset name
    overrides: tuple = ()  # --set items applied to every preset
    n_eval: int = 1000  # generated samples, and real held-out patches at most
    sample_steps: int = 50  # DDIM steps when sampling for evaluation
    images_per_folder: int | None = None  # a subset of each folder (smoke)
    folders: tuple[str, ...] | None = None  # only these sub-folders of --data (None: all)
    # Latent diffusion: the autoencoder preset trained first, whose run the diffusion's `autoencoder` names, and a
    # preset fine-tuning its decoder from that run (train.init_from) to ship with the diffusion (histogen export
    # --autoencoder); the evaluation samples the exported run, as a user of the shipped model would.
    autoencoder: str | None = None
    decoder: str | None = None
    train_floor: bool = False  # the table also gives each metric for the runs' training patches (eval --train-floor)


BUDGETS = {
    # End to end in about a minute on 2 cores: only that every stage runs (the test runs it).
    "smoke": Budget({"diffusion": "diffusion-64-cpu", "gan": "gan-64-cpu"},
                    ("train.steps=2", "train.batch_size=4", "train.val_every=1", "train.val_batches=1",
                     "train.sample_every=2", "train.n_samples=4", "train.sample_steps=2", "data.val_fraction=0.5"),
                    n_eval=16, sample_steps=4, images_per_folder=3),
    # A first look in a few minutes per model on an idle 2-core CPU (half an hour on a busy one): the
    # cpu presets stopped early, with an EMA short enough to have left the initial weights (the EMA
    # starts from them: 0.999 over 100 steps would still be 90 % initial weights), fewer samples.
    "short": Budget({"diffusion": "diffusion-64-cpu", "gan": "gan-64-cpu"},
                    ("train.steps=100", "train.ema_decay=0.95", "train.val_every=50", "train.sample_every=50",
                     "train.ckpt_every=25"),
                    n_eval=256, sample_steps=20),
    # About 30 minutes per model on an idle 2-core CPU (steps chosen from measured CPU s/step, see the presets).
    "cpu": Budget({"diffusion": "diffusion-64-cpu", "gan": "gan-64-cpu"}, n_eval=1000, sample_steps=50),
    # The shipped model pretrained/he64 (its MODEL_CARD.md): latent diffusion on an f=4 autoencoder whose decoder is
    # then fine-tuned, on the folders whose licences allow a derived model to be redistributed (CAMELYON16 CC0,
    # osteosarcoma CC BY 3.0). About 3 hours on an idle 2-core CPU, most of it the diffusion's 14 000 steps.
    "he64": Budget({"diffusion": "ldm-f4-he"}, n_eval=1000, sample_steps=50, folders=("camelyon", "osteosarcoma"),
                   autoencoder="ae-f4-he", decoder="ae-f4-he-decoder", train_floor=True),
    # The full-size 64 px models for a GPU.
    "gpu": Budget({"diffusion": "diffusion-64", "gan": "gan-64"}, ("train.steps=20000",), n_eval=5000, sample_steps=50),
}


class QualityError(UserError):
    """Input this benchmark cannot use; the message says what to do."""


def folders(data: Path) -> list[Path]:
    """The folders to tile, one store each: DIR's sub-folders that hold slides, or DIR itself."""
    if not data.is_dir():
        raise QualityError(f"{data}: no such folder of slides or images",
                           "pass {data} DIR (the default is ../shared/data/he beside the checkout)")
    subs = [d for d in sorted(data.iterdir()) if d.is_dir() and find_slides(d)[0]]
    if subs:
        return subs
    if find_slides(data)[0]:
        return [data]
    raise QualityError(f"{data}: no slides or images in it or its sub-folders", "pass {data} DIR")


def subset(folder: Path, n: int | None, work: Path) -> Path:
    """`folder`, or a folder of links to its first `n` slides (the smoke budget)."""
    if n is None:
        return folder
    out = work / "subsets" / f"{folder.name}-{n}"
    out.mkdir(parents=True, exist_ok=True)
    for p in find_slides(folder)[0][:n]:
        link = out / p.name
        if not link.exists():
            link.symlink_to(p.resolve())
    return out


def tile(data: Path, work: Path, budget: Budget, assume_mpp: float | None, show: bool | None) -> list[Path]:
    """One store per folder at TARGET_MPP (resumed when it exists); a folder that fails stops the run."""
    chosen = [f for f in folders(data) if budget.folders is None or f.name in budget.folders]
    if not chosen:
        raise QualityError(f"{data}: none of the folders {', '.join(budget.folders)} that this budget trains on",
                           "pass {data} DIR holding them")
    stores = []
    for folder in chosen:
        src = subset(folder, budget.images_per_folder, work)
        suffix = "" if budget.images_per_folder is None else f"-first{budget.images_per_folder}"
        # The published regions carry no marker, and the red family takes bone, osteoid and blood for ink
        # (8 % of the osteosarcoma folder, benchmarks/RESULTS.md): looked for without it.
        cfg = TileConfig(plan=PlanParams(PATCH), mpp=TARGET_MPP, assume_mpp=ASSUMED_MPP.get(folder.name, assume_mpp),
                         qa=False, mask=MaskParams(inks=("green", "black", "blue")))
        # Named by the tiler's parameters: a tiler with other defaults writes a store of its own.
        out = work / "stores" / f"{folder.name}{suffix}-{PATCH}px-{TARGET_MPP}mpp-{digest(cfg.store_params())}.zarr"
        summary = tile_slides(src, out, cfg, show_progress=show)
        if summary.count("failed"):
            raise QualityError(f"{folder}: {summary.count('failed')} slide(s) failed to tile:\n{summary.text()}",
                               "fix or remove them; where the files carry no MPP, pass {assume_mpp} VALUE")
        log.info("%s: %d patches tiled now (slides done before are kept)", out.name, summary.n_patches)
        stores.append(out)
    return stores


def embed_config(encoder: str) -> EmbedConfig:
    """--encoder as engine.embed takes it: a registry NAME[=WEIGHTS], else Path Foundation's SavedModel folder."""
    if named(encoder) is None:
        return EmbedConfig(model=encoder)
    name, weights = named(encoder)
    return EmbedConfig(encoder=name, weights=weights)


def embed(stores: list[Path], encoder: str, show: bool | None) -> None:
    """Embed every store with `encoder` (slides already embedded by it are skipped)."""
    for store in stores:
        try:
            summary = embed_store(store, embed_config(encoder), show_progress=show)
        except EmbedError as e:
            raise QualityError(f"diffusion-pf needs an encoder to condition on: {e.problem}",
                               "pass {model} DIR, a SavedModel with Path Foundation's interface "
                               "(python -m histosynth.standin_model DIR makes a stand-in with random weights), "
                               "or {model} NAME=WEIGHTS for another encoder of engine.encoder_registry") from e
        if summary.count("failed"):
            raise QualityError(f"{store}: {summary.count('failed')} slide(s) failed to embed:\n{summary.text()}",
                               "see the lines above")


def digest(value) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:8]


def run_folder(work: Path, budget: str, preset: str, cfg, stores: list[Path]) -> Path:
    """Where a run of these resolved settings and these stores lives: other ones (an override, or an
    edited preset), another folder."""
    return work / "runs" / f"{budget}-{preset}-{digest([asdict(cfg), [s.name for s in stores]])}"


def train_preset(preset: str, overrides: list[str], stores: list[Path], work: Path, budget_name: str,
                 show: bool | None) -> tuple[Path, dict]:
    """Train (or resume) one preset; (run folder, what the table says about the run)."""
    cfg = config.resolve(preset, overrides)
    run = run_folder(work, budget_name, preset, cfg, stores)
    result = train(cfg, stores, run, show_progress=show)
    info = {"preset": preset, "overrides": " ".join(overrides) or "none", "steps": cfg.train.steps,
            "batch": cfg.train.batch_size, "run": str(run)}
    if result.seconds:  # 0 when the run was already trained: no timing to report
        info.update({"train seconds": result.seconds, "steps/s": result.images_per_s / cfg.train.batch_size,
                     "images/s": result.images_per_s})
    return run, info


def train_model(kind: str, stores: list[Path], work: Path, budget_name: str, budget: Budget, extra: list[str],
                show: bool | None, embedding: str = DEFAULT) -> tuple[Path, dict]:
    """Train (or resume) `kind` under the budget, conditioned on `embedding`'s embeddings where it is
    conditional, after its autoencoder and with its decoder where the budget has them; (the run to
    evaluate, what the table says about it)."""
    base, kind_overrides = KIND_OVERRIDES.get(kind, (kind, ()))
    conditional = "data.conditional=true" in kind_overrides
    named_embedding = [f"data.embedding={embedding}"] if conditional and embedding != DEFAULT else []
    every = [*budget.overrides, *extra]  # the user's --set last: it wins, in every preset the budget trains
    overrides = [*budget.overrides, *kind_overrides, *named_embedding, *extra]
    if base != "diffusion" or budget.autoencoder is None:
        return train_preset(budget.presets[base], overrides, stores, work, budget_name, show)
    ae, ae_info = train_preset(budget.autoencoder, every, stores, work, budget_name, show)
    run, info = train_preset(budget.presets[base], [*overrides, f"autoencoder={ae}"], stores, work, budget_name,
                             show)
    info.update({f"autoencoder {k}": v for k, v in ae_info.items()})
    if budget.decoder is None:
        return run, info
    decoder, decoder_info = train_preset(budget.decoder, [*every, f"train.init_from={ae}"], stores, work,
                                         budget_name, show)
    info.update({f"decoder {k}": v for k, v in decoder_info.items()})
    shipped = run.with_name(f"{run.name}-export-{digest(decoder.name)}")
    if not RunFolder(shipped).started:  # export writes its config.yaml last
        shutil.rmtree(shipped, ignore_errors=True)  # what an interrupted export left
        export_run(run, shipped, autoencoder=decoder)
    info["exported"] = str(shipped)
    return shipped, info


def flat(metrics: dict, prefix: str = "") -> dict[str, float]:
    """{"stain": {"eosin_w1": 0.1}} -> {"stain.eosin_w1": 0.1}: every number, nested keys joined by '.'."""
    out = {}
    for k, v in metrics.items():
        name = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flat(v, f"{name}."))
        elif isinstance(v, (int, float)) and not isinstance(v, bool):
            out[name] = float(v)
    return out


def table(evals: dict) -> list[dict]:
    """One row per metric: each model's value, the real-vs-real floor of its evaluation (Evaluation.floor,
    shaped as its metrics) and, where measured, its training patches' (Evaluation.train_floor), in the
    order evaluate() reports them."""
    values = {kind: flat(ev.metrics) for kind, ev in evals.items()}
    floors = {kind: flat(ev.floor) for kind, ev in evals.items()}
    trained_on = {kind: flat(ev.train_floor) for kind, ev in evals.items() if ev.train_floor}
    names = list(dict.fromkeys(k for v in values.values() for k in v))
    rows = []
    for name in names:
        row = {"metric": name}
        for kind in evals:
            row[kind] = values[kind].get(name, "")
            row[f"{kind} floor"] = floors[kind].get(name, "")
            if kind in trained_on:
                row[f"{kind} training patches"] = trained_on[kind].get(name, "")
        rows.append(row)
    return rows




def budget_kinds(budget: Budget) -> list[str]:
    """The models a budget trains unless --models says otherwise."""
    return [k for k in KINDS_TRAINED if k in budget.presets]


def run_quality(data: Path, work: Path, out: Path, budget_name: str, kinds: list[str] | None, extra: list[str],
                encoder: str, assume_mpp: float | None = None, show: bool | None = None) -> str:
    """The whole benchmark (`kinds` None: the budget's models); returns the markdown it wrote to
    out/quality-BUDGET[-OVERRIDES].md."""
    budget = BUDGETS[budget_name]
    trained = budget_kinds(budget)
    kinds = list(kinds or trained)
    untrained = [k for k in kinds if KIND_OVERRIDES.get(k, (k,))[0] not in budget.presets]
    if untrained:
        raise QualityError(f"budget {budget_name} has no preset for {', '.join(untrained)}",
                           f"pass {{models}} {' '.join(trained)}, or another budget")
    t0 = time.perf_counter()
    stores = tile(data, work, budget, assume_mpp, show)
    tile_s = time.perf_counter() - t0
    # Runs of other models or settings do not overwrite the plain table.
    name = "-".join([f"quality-{budget_name}", *(kinds if set(kinds) != set(trained) else []),
                     *([digest(extra)] if extra else [])])
    pictures = out / name
    pictures.mkdir(parents=True, exist_ok=True)
    if "diffusion-pf" in kinds:
        embed(stores, encoder, show)
    evals, runs = {}, {}
    for kind in kinds:
        run, runs[kind] = train_model(kind, stores, work, budget_name, budget, extra, show,
                                      embed_config(encoder).encoder)
        t1 = time.perf_counter()
        evals[kind] = evaluate(stores, pictures / f"eval-{kind}", run=run,
                               cfg=EvalConfig(n=budget.n_eval, steps=budget.sample_steps, encoder=encoder,
                                              train_floor=budget.train_floor))
        runs[kind]["eval seconds"] = time.perf_counter() - t1
        ev = evals[kind]
        for k, why in ev.skipped.items():
            log.info("%s: %s skipped (%s)", kind, k, why)
        beside(grid(ev.pictures["real"]),
               grid(ev.pictures["generated"])).save(pictures / f"{kind}-real-vs-generated.png")
    info = {"data": str(data), "budget": budget_name, "stores": ", ".join(s.name for s in stores),
            "tiling seconds": tile_s, "target mpp": TARGET_MPP, "patch px": PATCH}
    for kind, ev in evals.items():
        info.update({f"{kind} {k}": v for k, v in runs[kind].items()})
        info.update({f"{kind} n real (held out)": ev.info.get("n_real"),
                     f"{kind} n generated": ev.info.get("n_generated"), f"{kind} encoder": ev.info.get("encoder"),
                     f"{kind} pictures": str(pictures / f"{kind}-real-vs-generated.png"),
                     f"{kind} report": str(pictures / f"eval-{kind}" / "report.html")})
        info.update({f"{kind} skipped {k}": why for k, why in ev.skipped.items()})
    info["overrides"] = " ".join(extra) or "none"
    return report.write(out, name, table(evals), info)


def main(argv, work: Path, out: Path) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks quality", description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, default=DEFAULT_DATA, help="folder of slides or images, or of such folders "
                                                                     "(default: ../shared/data/he beside the checkout)")
    p.add_argument("--budget", choices=sorted(BUDGETS), default="cpu",
                   help="smoke: a minute, every stage; short: a first look, minutes per model; cpu: about 30 min per "
                        "model on 2 cores; he64: the shipped model's recipe, about 3 hours on 2 cores; gpu: the "
                        "full-size models")
    p.add_argument("--models", nargs="+", choices=KINDS, default=None,
                   help="default: the budget's (diffusion and gan; he64: diffusion); diffusion-pf: diffusion "
                        "conditioned on --encoder's embedding of each patch "
                        "(the stores are embedded first)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a key of every preset the budget trains, e.g. --set model.lr=3e-4 (a run folder "
                        "of its own)")
    p.add_argument("--assume-mpp", type=float, default=None, help="µm/px of folders without an entry in the built-in "
                                                                   "table whose files carry no MPP")
    p.add_argument("--encoder", default=DEFAULT, metavar="NAME[=WEIGHTS]",
                   help="a name of engine.encoder_registry (=PATH: local weights) or a SavedModel folder with Path "
                        "Foundation's interface: for evaluation's learned-space metrics (skipped when it cannot load) "
                        "and diffusion-pf's conditions; default %(default)s")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    a = p.parse_args(argv)
    setup_logging()

    def job() -> int:
        print(run_quality(a.data, work / "quality", out, a.budget, a.models, a.overrides, a.encoder, a.assume_mpp,
                          False if a.quiet else None))
        return 0

    return run_command(job, log, "stores and finished runs are kept; run the same command to resume",
                       flags={"data": "--data", "assume_mpp": "--assume-mpp", "models": "--models",
                              **encoder_flags(a.encoder)})
