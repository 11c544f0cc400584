"""A training run's folder, and the only code that knows its layout:

    runs/NAME/config.yaml      the resolved config (a resumed run must match it, steps aside)
    runs/NAME/split.json       which slides trained and which validated
    runs/NAME/labels.json      the classes of a run conditioned on labels (histogen.labels.Vocabulary)
    runs/NAME/checkpoints/     safetensors + JSON, atomic, the last `keep` kept (histogen.checkpoint)
    runs/NAME/tb/              TensorBoard scalars
    runs/NAME/samples/         a PNG grid every `sample_every` steps

Training fills it (histogen.train); sampling and evaluation read it through one RunFolder, which
reads each file once, when first asked for.
"""
from __future__ import annotations

import dataclasses
import json
from functools import cached_property
from pathlib import Path

from engine.errors import UserError
from engine.store import SlideRef, dict_diff
from histogen import config
from histogen.batches import open_store
from histogen.config import RunConfig
from histogen.labels import Vocabulary
from histogen.selection import select

# Settings a resumed run may change: how long it trains (and its final decay), and how often it logs, samples
# and saves.
FREE_ON_RESUME = {f"train.{k}" for k in ("steps", "cooldown", "log_every", "val_every", "sample_every", "ckpt_every",
                                         "keep", "n_samples", "sample_steps", "guidance")} | {"data.workers"}


class TrainError(UserError):
    """A run that cannot start, go on or be loaded; the message says what to do."""


class RunFolder:
    """runs/NAME: what training wrote there, read once; where training writes."""

    def __init__(self, path: Path | str):
        self.path = Path(path)

    @property
    def started(self) -> bool:
        return (self.path / "config.yaml").is_file()

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    @property
    def tb(self) -> Path:
        return self.path / "tb"

    def grid(self, step: int) -> Path:
        """The sample grid of training step `step`."""
        return self.path / "samples" / f"step-{step:08d}.png"

    @cached_property
    def cfg(self) -> RunConfig:
        if not self.started:
            raise TrainError(f"{self.path}: not a training run (no config.yaml); "
                             "give the --out folder of histogen train")
        cfg = config.load(self.path / "config.yaml")
        if cfg.autoencoder and not Path(cfg.autoencoder).is_absolute():
            # an exported run carries its autoencoder inside (histogen.export): relative to this folder
            cfg = dataclasses.replace(cfg, autoencoder=str((self.path / cfg.autoencoder).resolve()))
        return cfg

    @cached_property
    def vocabulary(self) -> Vocabulary | None:
        """The classes of a run conditioned on labels (None: no labels.json)."""
        path = self.path / "labels.json"
        if not path.is_file():
            return None
        d = json.loads(path.read_text())
        return Vocabulary(tuple(d["classes"]), d["source"])

    @cached_property
    def split(self) -> dict[str, list[SlideRef]]:
        """{"train": [SlideRef], "val": [SlideRef]}, each standing for the patches of its slide that
        pass the check under the run's data.qc (as in training)."""
        qc = self.cfg.data.qc
        return {k: [select(open_store(r["store"]), SlideRef(**r), qc) for r in v] for k, v in self._split.items()}

    @cached_property
    def _split(self) -> dict[str, list[dict]]:
        return json.loads((self.path / "split.json").read_text())

    @cached_property
    def slide_ids(self) -> dict[str, set[str]]:
        """{"train": ids, "val": ids}: the split's slides by id, read without opening a store (a
        shipped run's stores stay on the machine that trained it)."""
        return {k: {r["slide"] for r in v} for k, v in self._split.items()}

    @property
    def stores_here(self) -> bool:
        """Whether the stores the run trained on can be reached (local ones where split.json says; URLs
        are taken as reachable)."""
        return all("://" in r["store"] or Path(r["store"]).exists() for v in self._split.values() for r in v)

    def check_resume(self, cfg: RunConfig) -> None:
        """Refuse to go on with a folder that was started with other settings (writes nothing)."""
        if not self.started:
            return

        def flat(c: RunConfig) -> dict:  # sections are one level deep
            items = []
            for k, v in c.to_dict().items():
                items += [(f"{k}.{k2}", v2) for k2, v2 in v.items()] if isinstance(v, dict) else [(k, v)]
            return {k: v for k, v in items if k not in FREE_ON_RESUME}

        diff = dict_diff(flat(self.cfg), flat(cfg))
        if diff:
            raise TrainError(f"{self.path} was started with other settings ({diff}); "
                             "resume with the same settings or use a new --out")

    def write(self, cfg: RunConfig, train: list[SlideRef], val: list[SlideRef],
              vocab: Vocabulary | None = None) -> None:
        """config.yaml, split.json (the slides as {store, slide, n}: their rows follow from the stores
        and data.qc, so they are not written) and, for a labelled run, labels.json."""
        self.path.mkdir(parents=True, exist_ok=True)
        config.save(cfg, self.path / "config.yaml")
        if vocab is not None:
            labels = {"source": vocab.source, "classes": list(vocab.classes)}
            (self.path / "labels.json").write_text(json.dumps(labels, indent=1))
        split = {k: [{"store": r.store, "slide": r.slide, "n": r.n} for r in refs]
                 for k, refs in (("train", train), ("val", val))}
        (self.path / "split.json").write_text(json.dumps(split, indent=1))
        # What was just written is what a read would give: no file is read back.
        self.__dict__.update(cfg=cfg, vocabulary=vocab, split={"train": list(train), "val": list(val)}, _split=split)
