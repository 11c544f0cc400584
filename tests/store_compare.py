"""Whole-store equality for tests that make the same store two ways (one process or a cluster, a
local path or an object store)."""
from __future__ import annotations

import numpy as np

from engine.store import PatchStore


def store_content(path) -> dict:
    """Everything a run decides: the root attributes and, per complete slide, its attributes and every
    array (images, coords, tissue, mask, embeddings) with the array's attributes. Nothing is left
    out: the store records no timings or host names."""
    store = PatchStore.open(path)
    out = {"root": dict(store.root.attrs)}
    for sid in store.slide_ids():
        g = store.slide(sid)
        out[sid] = {"attrs": dict(g.attrs), "arrays": {k: (g[k][:], dict(g[k].attrs)) for k in sorted(g.array_keys())}}
    return out


def assert_same_store(a, b) -> None:
    ca, cb = store_content(a), store_content(b)
    assert ca.keys() == cb.keys()
    assert ca["root"] == cb["root"]
    for sid in ca.keys() - {"root"}:
        assert ca[sid]["attrs"] == cb[sid]["attrs"], sid
        assert ca[sid]["arrays"].keys() == cb[sid]["arrays"].keys(), sid
        for name, (x, attrs) in ca[sid]["arrays"].items():
            y, other = cb[sid]["arrays"][name]
            assert x.dtype == y.dtype and attrs == other, (sid, name)
            np.testing.assert_array_equal(x, y, err_msg=f"{sid}/{name}")
