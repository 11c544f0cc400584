"""Training configuration as data: presets are YAML files in histogen/presets/, a run's resolved
config is saved beside its checkpoints, and `--set key=value` overrides any key.

    kind: diffusion            # ae | gan | diffusion
    resolution: 64             # training image side, resized from the stored patches
    data:  {...}               # DataConfig
    model: {...}               # the model's own section, validated by histogen.models.build_task
    train: {...}               # TrainConfig
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from engine.errors import UserError

PRESETS = Path(__file__).parent / "presets"
KINDS = ("ae", "gan", "diffusion")


class ConfigError(UserError, ValueError):
    """A preset, key or value that cannot be used; the message says what is allowed."""


@dataclass
class DataConfig:
    val_fraction: float = 0.1  # of the slides (never of patches: neighbours leak)
    flip: bool = True
    rot90: bool = True
    stain_jitter: float = 0.0  # std of the H&E stain scale/shift jitter; 0 = off, ~0.05 is mild
    conditional: bool = False  # condition on the slide's Path Foundation embedding of each patch
    workers: int = 2  # DataLoader processes reading the stores
    pipeline: str = "auto"  # engine.pipeline backend for resize and augmentation


@dataclass
class TrainConfig:
    batch_size: int = 32  # global, split over the processes of a distributed run
    steps: int = 100_000
    grad_clip: float = 1.0  # 0 = off
    ema_decay: float = 0.999
    bf16: bool = True  # autocast on CUDA; ignored on the CPU
    seed: int = 0
    log_every: int = 50
    val_every: int = 1000
    val_batches: int = 4
    sample_every: int = 5000
    n_samples: int = 16  # in the sample grid
    ckpt_every: int = 1000
    keep: int = 3  # checkpoints kept; older ones are pruned
    sample_steps: int = 50  # DDIM steps for the periodic grids
    guidance: float = 1.0


@dataclass
class RunConfig:
    kind: str
    resolution: int
    data: DataConfig = field(default_factory=DataConfig)
    model: dict = field(default_factory=dict)
    train: TrainConfig = field(default_factory=TrainConfig)
    autoencoder: str | None = None  # run folder of a trained autoencoder: latent diffusion

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def presets() -> list[str]:
    return sorted(p.stem for p in PRESETS.glob("*.yaml"))


def _build(cls, d: dict, where: str):
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - names)
    if unknown:
        raise ConfigError(f"unknown {where} key(s) {', '.join(unknown)}; known: {', '.join(sorted(names))}")
    return cls(**d)


def from_dict(d: dict) -> RunConfig:
    d = dict(d)
    if d.get("kind") not in KINDS:
        raise ConfigError(f"kind must be one of {', '.join(KINDS)}, not {d.get('kind')!r}")
    if not isinstance(d.get("resolution"), int) or not 8 <= d["resolution"] <= 1024:
        raise ConfigError(f"resolution must be an integer number of pixels (64 to 512 for the presets), not {d.get('resolution')!r}")
    cfg = _build(RunConfig, {k: v for k, v in d.items() if k not in ("data", "train")}, "top-level")
    cfg.data = _build(DataConfig, d.get("data") or {}, "data")
    cfg.train = _build(TrainConfig, d.get("train") or {}, "train")
    if not isinstance(cfg.model, dict):
        raise ConfigError(f"model must be a mapping of the model's settings, not {cfg.model!r}")
    for key, value in [("data.val_fraction", cfg.data.val_fraction), ("train.ema_decay", cfg.train.ema_decay)]:
        if not 0 <= value < 1:
            raise ConfigError(f"{key} must be in [0, 1), not {value}")
    for key in ("batch_size", "steps", "log_every", "val_every", "sample_every", "ckpt_every", "keep", "n_samples", "sample_steps"):
        if getattr(cfg.train, key) < 1:
            raise ConfigError(f"train.{key} must be at least 1, not {getattr(cfg.train, key)}")
    return cfg


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
