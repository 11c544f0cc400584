"""Stores for tests: small stores of random or synthetic H&E patches, and whole-store equality for
tests that make the same store two ways (one process or a cluster, a local path or an object store)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import zarr

from engine.store import Codec, PatchStore


def store_content(path) -> dict:
    """Everything a run decides: the root attributes and, per complete slide, its attributes and every
    array (images, coords, tissue, qc/*, mask, embeddings) with the array's attributes, and the
    attributes of its subgroups (qc). Nothing is left out: the store records no timings or host names."""
    store = PatchStore.open(path)
    out = {"root": dict(store.root.attrs)}
    for sid in store.slide_ids():
        members = dict(store.slide(sid).members(max_depth=None))
        arrays = {k: (a[:], dict(a.attrs)) for k, a in sorted(members.items()) if isinstance(a, zarr.Array)}
        groups = {k: dict(m.attrs) for k, m in members.items() if isinstance(m, zarr.Group)}
        out[sid] = {"attrs": dict(store.slide(sid).attrs), "groups": groups, "arrays": arrays}
    return out


def assert_same_store(a, b) -> None:
    ca, cb = store_content(a), store_content(b)
    assert ca.keys() == cb.keys()
    assert ca["root"] == cb["root"]
    for sid in ca.keys() - {"root"}:
        assert ca[sid]["attrs"] == cb[sid]["attrs"] and ca[sid]["groups"] == cb[sid]["groups"], sid
        assert ca[sid]["arrays"].keys() == cb[sid]["arrays"].keys(), sid
        for name, (x, attrs) in ca[sid]["arrays"].items():
            y, other = cb[sid]["arrays"][name]
            assert x.dtype == y.dtype and attrs == other, (sid, name)
            np.testing.assert_array_equal(x, y, err_msg=f"{sid}/{name}")


def make_store(path: Path, slides: dict[str, int], patch=64, embeddings=True, seed=0, he=False, qc: dict | None = None,
               check: dict | None = None) -> Path:
    """A store of random patches, or (`he`) of windows of synthetic H&E slides, one per slide id.
    `qc`: slide id -> the PatchQC its patches are stored with, as checked with `check` (CheckParams
    as a dict, default CheckParams()); slides without one are stored as before the check had scores."""
    from engine.qc import CheckParams

    from histosynth import SynthSpec, render_region

    store = PatchStore.create_or_resume(path, patch, {})
    rng = np.random.default_rng(seed)
    for k, (sid, n) in enumerate(slides.items()):
        if he:
            side = patch * int(np.ceil(np.sqrt(n)))
            region = render_region(SynthSpec(width=4 * side, height=4 * side, seed=seed * 100 + k), side, side, side,
                                   side)
            tiles = region.reshape(side // patch, patch, side // patch, patch,
                                   3).swapaxes(1, 2).reshape(-1, patch, patch, 3)
            images = tiles[:n]
        else:
            images = rng.integers(0, 256, (n, patch, patch, 3), dtype=np.uint8)
        given = (qc or {}).get(sid)
        w = store.begin_slide(sid, {}, n, Codec(), check=None if given is None else check or CheckParams().to_dict())
        w.append(images, np.arange(2 * n).reshape(n, 2), np.ones(n) if given is None else given)
        w.finish(np.zeros((2, 2)), {}, {})
        if embeddings:
            store.write_embeddings(sid, rng.standard_normal((n, 384)).astype(np.float32), {"model": "test"})
    return path
