"""Training configuration as data: presets are YAML files in histogen/presets/, a run's resolved
config is saved beside its checkpoints, and `--set key=value` overrides any key.

    kind: diffusion            # a kind of histogen.models.registry: ae | gan | diffusion
    resolution: 64             # training image side, resized from the stored patches
    data:  {...}               # DataConfig
    model: {...}               # the kind's own config dataclass (e.g. DiffusionConfig)
    train: {...}               # TrainConfig

Every section, the model's included, goes through one validator (`build`): unknown keys and
values of the wrong type are refused with the known keys, so a whole config is checked before
anything is written.
"""
from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from engine.encoder_registry import DEFAULT, ENCODERS
from engine.qc import CheckParams
from engine.errors import UserError
from histogen.models.registry import KINDS
from histogen.models.task import require
from histogen.sampling import Sampling

PRESETS = Path(__file__).parent / "presets"


class ConfigError(UserError, ValueError):
    """A preset, key or value that cannot be used; the message says what is allowed."""


# -- the validator ------------------------------------------------------------------------------


def _name(t) -> str:
    return getattr(t, "__name__", str(t))


def _coerce(where: str, t, v):
    """v as the field type `t`: lists become tuples, ints and numeric strings become floats
    (PyYAML reads 1e-4 as a string); anything else of the wrong type raises."""
    if isinstance(t, types.UnionType) and type(None) in typing.get_args(t):
        if v is None:
            return None
        (t,) = [a for a in typing.get_args(t) if a is not type(None)]
    if typing.get_origin(t) is tuple:
        if not isinstance(v, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {v!r}")
        return tuple(_coerce(where, typing.get_args(t)[0], e) for e in v)
    if t is float and isinstance(v, (int, str)) and not isinstance(v, bool):
        try:
            return float(v)
        except ValueError:
            pass
    if not isinstance(v, t) or (t is int and isinstance(v, bool)):
        raise ConfigError(f"{where}: expected {_name(t)}, got {v!r}")
    return v


def build(cls, d, where: str):
    """The dataclass `cls` from a YAML mapping, `where` naming it in messages ("train",
    "diffusion model"): unknown or missing keys and values of the wrong type raise ConfigError,
    and so do the dataclass's own checks (ValueError in __post_init__)."""
    if not isinstance(d, dict):
        raise ConfigError(f"{where} must be a mapping of settings, not {d!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - set(fields))
    if unknown:
        raise ConfigError(f"unknown {where} key(s) {', '.join(unknown)}; known keys: {', '.join(fields)}")
    missing = [k for k, f in fields.items()
               if k not in d and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    if missing:
        raise ConfigError(f"{where}: missing key(s) {', '.join(missing)}")
    hints = typing.get_type_hints(cls)
    values = {k: build(hints[k], {} if v is None else v, k) if dataclasses.is_dataclass(hints[k])  # a section
              else _coerce(f"{where} key {k}", hints[k], v) for k, v in d.items()}
    try:
        return cls(**values)
    except ConfigError:
        raise
    except ValueError as e:
        raise ConfigError(str(e)) from e


# -- the sections -------------------------------------------------------------------------------


@dataclass
class DataConfig:
    val_fraction: float = 0.1  # of the slides (never of patches: neighbours leak)
    flip: bool = True
    rot90: bool = True
    stain_jitter: float = 0.0  # std of the H&E stain scale/shift jitter; 0 = off, ~0.05 is mild
    conditional: bool = False  # condition on each patch's stored embedding by `embedding`
    embedding: str = DEFAULT  # the encoder whose embeddings condition (engine.encoder_registry; engine.embed --encoder)
    # Condition on a slide-level label (histogen.labels): a slide attribute key of the stores (e.g.
    # organ), or a CSV file (ends in .csv) with columns slide,label. Unlabelled slides are left out.
    label: str | None = None
    workers: int = 2  # DataLoader processes reading the stores
    pipeline: str = "auto"  # engine.pipeline backend for resize and augmentation
    # Patch-check thresholds tighter than the store's (e.g. {max_ink: 0.001}): applied to the stored
    # scores, so patches that pass at tiling but fail these are left out without re-tiling.
    qc: dict = field(default_factory=dict)

    def __post_init__(self):
        require(0 <= self.val_fraction < 1, f"data.val_fraction must be in [0, 1), not {self.val_fraction}")
        require(self.embedding in ENCODERS,
                f"data.embedding must be one of {', '.join(ENCODERS)}, not {self.embedding!r}")
        require(self.label is None or self.label.strip() != "",
                "data.label must be a slide attribute key or a CSV path, or null")
        known = qc_thresholds()
        unknown = sorted(set(self.qc) - set(known))
        require(not unknown, f"unknown data.qc key(s) {', '.join(map(str, unknown))}; known keys: {', '.join(known)}")
        for k, v in self.qc.items():
            require(isinstance(v, (int, float)) and not isinstance(v, bool),
                    f"data.qc.{k}: expected a number, got {v!r}")


def qc_thresholds() -> list[str]:
    """The thresholds of engine.check.CheckParams (its min_* and max_* fields): what data.qc may set."""
    return [f.name for f in dataclasses.fields(CheckParams) if f.name.startswith(("min_", "max_"))]


@dataclass
class TrainConfig:
    batch_size: int = 32  # global, split over the processes of a distributed run
    steps: int = 100_000
    grad_clip: float = 1.0  # 0 = off
    ema_decay: float = 0.999
    ema_warmup: int = 10  # the EMA's decay is min(ema_decay, (1 + t) / (ema_warmup + t)) at step t; 0: off
    bf16: bool = True  # autocast to bf16 on CUDA and on CPUs with native bf16 (histogen.compute); fp32 elsewhere
    channels_last: bool = True  # the nets and batches in NHWC: faster convolutions on CPU (oneDNN) and GPU
    compile: bool = False  # torch.compile the nets (measure first: benchmarks train)
    threads: int = 0  # CPU threads per process; 0 = OMP_NUM_THREADS, else the cores shared among local processes
    seed: int = 0
    log_every: int = 50
    val_every: int = 1000
    val_batches: int = 4
    sample_every: int = 5000
    n_samples: int = 16  # in the sample grid
    ckpt_every: int = 1000
    keep: int = 3  # checkpoints kept; older ones are pruned
    sample_steps: int = Sampling().steps  # DDIM steps for the periodic grids
    guidance: float = Sampling().guidance
    # a run folder whose latest weights start this run (fine-tuning): its sampling net's EMA, its other nets'
    # weights; nets it lacks start fresh. Read at step 0 only; the optimizer starts afresh.
    init_from: str | None = None
    # the last `cooldown` steps before train.steps take the learning rate linearly down to 0 (0: constant). A
    # constant-rate run can end on such a decay when resumed: it may be set or changed on resume, as steps.
    cooldown: int = 0

    def __post_init__(self):
        require(0 <= self.ema_decay < 1, f"train.ema_decay must be in [0, 1), not {self.ema_decay}")
        require(self.ema_warmup >= 0, f"train.ema_warmup must be at least 0, not {self.ema_warmup}")
        require(self.cooldown >= 0, f"train.cooldown must be at least 0 (0: a constant rate), not {self.cooldown}")
        require(self.threads >= 0, f"train.threads must be at least 0 (0: from the cores), not {self.threads}")
        for key in ("batch_size", "steps", "log_every", "val_every", "sample_every", "ckpt_every", "keep", "n_samples",
                    "sample_steps"):
            require(getattr(self, key) >= 1, f"train.{key} must be at least 1, not {getattr(self, key)}")


def model_config(kind: str, section: dict):
    """The config dataclass of model `kind` (registry.KINDS) built from a model section."""
    if kind not in KINDS:
        raise ConfigError(f"unknown model kind {kind!r}; known kinds: {', '.join(KINDS)}")
    return build(KINDS[kind].config, section, f"{kind} model")


@dataclass
class RunConfig:
    kind: str
    resolution: int
    data: DataConfig = field(default_factory=DataConfig)
    model: dict = field(default_factory=dict)  # as written (and saved); model_config(kind, model) types it
    train: TrainConfig = field(default_factory=TrainConfig)
    autoencoder: str | None = None  # run folder of a trained autoencoder: latent diffusion

    def __post_init__(self):
        require(8 <= self.resolution <= 1024,
                f"resolution must be an integer number of pixels (64 to 512 for the presets), not {self.resolution!r}")
        model_config(self.kind, self.model)  # the model section is checked with the rest, before any use

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# -- presets, overrides, files ------------------------------------------------------------------


def presets() -> list[str]:
    return sorted(p.stem for p in PRESETS.glob("*.yaml"))


def from_dict(d: dict) -> RunConfig:
    return build(RunConfig, d, "top-level")


def parse_override(item: str) -> tuple[list[str], object]:
    """'train.steps=500' -> (['train', 'steps'], 500); values are YAML (numbers, lists, true)."""
    key, sep, value = item.partition("=")
    if not sep or not key:
        raise ConfigError(f"--set {item!r}: expected key=value, e.g. --set train.steps=500")
    return key.strip().split("."), yaml.safe_load(value)


def apply_overrides(d: dict, overrides: list[str]) -> dict:
    d = yaml.safe_load(yaml.safe_dump(d))  # a deep copy
    for item in overrides:
        path, value = parse_override(item)
        node = d
        for part in path[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {item!r}: {part} is not a section")
        node[path[-1]] = value
    return d


def load_preset(name_or_path: str) -> dict:
    path = Path(name_or_path)
    if not path.suffix:
        path = PRESETS / f"{name_or_path}.yaml"
    if not path.is_file():
        raise ConfigError(f"unknown preset {name_or_path!r}; choose one of {', '.join(presets())} or give a YAML file")
    try:
        d = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({e})") from e
    if not isinstance(d, dict):
        raise ConfigError(f"{path}: a preset is a YAML mapping")
    return d


def resolve(preset: str, overrides: list[str] = ()) -> RunConfig:
    return from_dict(apply_overrides(load_preset(preset), list(overrides)))


def save(cfg: RunConfig, path: Path) -> None:
    path.write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))


def load(path: Path) -> RunConfig:
    return from_dict(yaml.safe_load(path.read_text()))
