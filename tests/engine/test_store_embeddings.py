"""Several encoders' embeddings side by side in one store (embeddings/<name>), and stores embedded
before that (one `embeddings` array) reading as Path Foundation's, kept when another is added."""
from __future__ import annotations

import numpy as np
import zarr

from engine.store import LEGACY_EMBEDDINGS, PatchStore
from tests.support.stores import make_store


def legacy_store(path):
    """A store as engine.embed wrote them before: slides/<id>/embeddings, one float32 array."""
    make_store(path, {"a": 5, "b": 3}, embeddings=False)
    for sid, n in (("a", 5), ("b", 3)):
        g = zarr.open_group(str(path / "slides" / sid), mode="r+")
        arr = g.create_array("embeddings", shape=(n, 4), dtype="float32")
        arr[:] = np.arange(4 * n, dtype=np.float32).reshape(n, 4)
        arr.attrs.update({"model": "google/path-foundation", "revision": "abc", "status": "complete"})
    return path


def test_an_older_store_reads_as_path_foundation(tmp_path):
    store = PatchStore.open(legacy_store(tmp_path / "old.zarr"))
    assert store.embedding_names("a") == [LEGACY_EMBEDDINGS] == ["path-foundation"]
    assert store.embeddings_attrs("a") == {"encoder": "path-foundation", "model": "google/path-foundation",
                                           "revision": "abc", "status": "complete"}
    np.testing.assert_array_equal(store.embeddings("a", [4, 0]), [[16, 17, 18, 19], [0, 1, 2, 3]])
    assert store.embedding_width() == 4 and store.embedding_width("uni") is None
    assert store.embeddings_attrs("a", "uni") is None


def test_a_second_encoder_sits_beside_the_first(tmp_path):
    path = legacy_store(tmp_path / "old.zarr")
    store = PatchStore.open(path)
    uni = np.ones((5, 6), np.float32)
    store.write_embeddings("a", uni, {"model": "MahmoodLab/UNI", "revision": "r1"}, name="uni")
    assert store.embedding_names("a") == ["path-foundation", "uni"]
    np.testing.assert_array_equal(store.embeddings("a", name="uni"), uni)
    np.testing.assert_array_equal(store.embeddings("a")[1], [4, 5, 6, 7])  # the older one moved, unchanged
    assert store.embeddings_attrs("a")["revision"] == "abc"
    assert store.embeddings_attrs("a", "uni")["encoder"] == "uni"
    assert store.embedding_width("uni") == 6 and store.embedding_width() == 4
    assert sorted(zarr.open_group(str(path / "slides" / "a" / "embeddings")).array_keys()) == ["path-foundation", "uni"]

    store.remove_embeddings("a", "uni")
    assert store.embedding_names("a") == ["path-foundation"]
    store.write_embeddings("b", np.zeros((3, 2), np.float32), {}, name="path-foundation")  # replaces the old one
    assert store.embedding_names("b") == ["path-foundation"] and store.embedding_width() == 4  # slide a first
    assert store.embeddings("b").shape == (3, 2)
