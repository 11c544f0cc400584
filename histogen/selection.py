"""Which stored patches a run uses: those that pass the patch check (engine.check) under the
thresholds their slide was tiled with, tightened by the run's `data.qc`. Every stored patch keeps
its scores (engine.store's qc group), so tightening needs no re-tiling; loosening would need the
patches the tiler did not keep, and is refused.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from engine.qc import CheckParams, reasons_of
from engine.store import PatchStore, SlideRef
from histogen.config import ConfigError


def thresholds(stored: dict, overrides: dict, where: str, strict: bool = True) -> CheckParams:
    """The slide's CheckParams (`stored`: as tiled) with `overrides` where they are tighter (a
    larger min_*, a smaller max_*). A looser one raises ConfigError when `strict`, else the
    stored value holds."""
    known = {f.name for f in dataclasses.fields(CheckParams)}
    params = {k: v for k, v in stored.items() if k in known}
    for k, v in overrides.items():
        old = params.get(k)
        looser = old is not None and (v < old if k.startswith("min_") else v > old)
        if looser and strict:
            raise ConfigError(f"data.qc.{k}={v} is looser than the {old} that {where} was tiled with: the patches it "
                              "would let in were not stored; only tighter thresholds apply at training time "
                              "(tile again with the looser one to use them)")
        if not looser:
            params[k] = v
    return CheckParams(**params)


def passing_rows(store: PatchStore, slide: str, overrides: dict, strict: bool = True) -> np.ndarray:
    """int64 store rows of the slide's patches that pass: stored without a rejection reason (a
    store tiled with --keep-rejected holds rejected ones too) and, under `overrides`, within the
    tightened thresholds. A slide tiled before the check had scores: all its patches, and no
    overrides."""
    where = f"{store.path}: slide {slide}"
    qc = store.qc(slide)
    if qc is None:
        if overrides:
            raise ConfigError(f"{where} has no patch-check scores (tiled before they were stored), so data.qc cannot "
                              "apply to it; tile it again, or leave data.qc out")
        return np.arange(store.n_patches(slide), dtype=np.int64)
    passed = qc.reasons == 0
    if overrides:
        params = thresholds(store.qc_attrs(slide)["params"], overrides, where, strict)
        try:
            passed &= reasons_of(qc.scores, params) == 0
        except KeyError as e:
            raise ConfigError(f"{where} has no {e.args[0]} score for data.qc; tile it again") from e
    return np.flatnonzero(passed).astype(np.int64)


def select(store: PatchStore, ref: SlideRef, overrides: dict, strict: bool = True) -> SlideRef:
    """`ref` standing for its passing patches: n of them, at store rows `rows`."""
    rows = passing_rows(store, ref.slide, overrides, strict)
    return SlideRef(ref.store, ref.slide, len(rows), rows)
