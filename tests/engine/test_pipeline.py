"""engine.pipeline: DALI (CPU here, GPU where present) and the torch fallback give the numbers of an
independent reference resize, on random and real patches; augmentation and store reads."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from engine.pipeline import TOLERANCE, PipelineError, Transform, make_resizer, resolve_backend, store_batches
from engine.readers import open_slide
from engine.store import Codec, PatchStore
from tests.support.references import resize_reference

BACKENDS = ["dali-cpu", "torch"]


@pytest.fixture(scope="module")
def real_patches(cmu_svs) -> np.ndarray:
    with open_slide(cmu_svs) as s:
        return s.read_regions([(0, 0), (700, 400), (1400, 900), (1700, 1500)], 0, (512, 512))


def random_patches(n=6, size=512, seed=None) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def normalise(x: np.ndarray, t: Transform) -> np.ndarray:
    y = (x - np.array(t.mean, np.float32)) / np.array(t.std, np.float32)
    return y.transpose(0, 3, 1, 2) if t.layout == "NCHW" else y


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("t", [
    Transform(224),
    Transform(64, mean=(0.5,) * 3, std=(0.5,) * 3, layout="NCHW"),
    Transform(300, mean=(0.7, 0.5, 0.6), std=(0.2, 0.25, 0.3)),
    Transform(512),
    Transform(600),
], ids=["224", "64-nchw-pm1", "300-stain-norm", "512-identity", "600-up"])
def test_backend_matches_reference_resize(backend, t, real_patches):
    resize = make_resizer(t, backend, max_batch=4)
    for images in (random_patches(5), real_patches):  # 5 > max_batch: split and joined
        got = resize(images)
        assert isinstance(got, torch.Tensor) and got.dtype == torch.float32
        want = normalise(resize_reference(images, t.size), t)
        assert got.shape == want.shape
        err = np.abs(got.numpy() - want).max() * min(t.std)  # compare in [0, 1] units
        assert err < TOLERANCE, err


def test_backends_agree_with_each_other(real_patches):
    a, b = (make_resizer(Transform(224), be)(real_patches) for be in BACKENDS)
    assert (a - b).abs().max().item() < TOLERANCE
    assert a.std() > 0.01  # real tissue, not a blank


@pytest.mark.gpu
def test_dali_gpu_matches_torch(real_patches):
    t = Transform(224)
    got = make_resizer(t, "dali-gpu")(real_patches)
    assert got.is_cuda
    want = make_resizer(t, "torch")(real_patches)
    assert (got.cpu() - want).abs().max().item() < TOLERANCE


def dihedral(x: np.ndarray) -> list[np.ndarray]:
    """The 8 symmetries of an HWC square: rot90 k times counter-clockwise, then optionally mirrored."""
    return [np.flip(np.rot90(x, k), 1) if f else np.rot90(x, k) for f in (0, 1) for k in range(4)]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("flip,rot90,expected", [(True, False, {0, 4}), (False, True, {0, 1, 2, 3}),
                                                 (True, True, set(range(8)))])
def test_augmentation_draws_symmetries(backend, flip, rot90, expected):
    images = random_patches(64, 64, seed=3)
    plain = make_resizer(Transform(32), backend)(images).numpy()
    aug = make_resizer(Transform(32, flip=flip, rot90=rot90), backend, max_batch=64, seed=7)
    got = aug(images).numpy()
    seen = set()
    for g, p in zip(got, plain):
        matches = [i for i, d in enumerate(dihedral(p)) if np.abs(g - d).max() < TOLERANCE]
        assert matches, "an augmented patch is not a symmetry of the plain one"
        seen.add(matches[0])
    assert seen == expected
    again = make_resizer(Transform(32, flip=flip, rot90=rot90), backend, max_batch=64, seed=7)(images).numpy()
    np.testing.assert_array_equal(got, again)  # same seed, same draws
    per_call = make_resizer(Transform(32, flip=flip, rot90=rot90), backend, max_batch=16)
    np.testing.assert_array_equal(per_call(images, seed=11).numpy(), per_call(images, seed=11).numpy())


def test_backends_draw_the_same_augmentation():
    images = random_patches(24, 64, seed=4)
    t = Transform(32, flip=True, rot90=True)
    a, b = (make_resizer(t, be, max_batch=10)(images, seed=5) for be in BACKENDS)
    assert (a - b).abs().max().item() < TOLERANCE


def test_store_batches_in_order(tmp_path):
    store = PatchStore.create_or_resume(tmp_path / "s.zarr", 16, {})
    data = {}
    for sid, n in [("a", 11), ("b", 0), ("c", 5)]:
        imgs = random_patches(n, 16, seed=n)
        w = store.begin_slide(sid, {}, n, Codec())
        w.append(imgs, np.zeros((n, 2)), np.ones(n))
        w.finish(np.zeros((2, 2)), {}, {})
        data[sid] = imgs
    got = list(store_batches(store, ["a", "b", "c"], batch_size=4, workers=3))
    assert [(s, i, len(x)) for s, i, x in got] == [("a", 0, 4), ("a", 4, 4), ("a", 8, 3), ("c", 0, 4), ("c", 4, 1)]
    for sid, i, x in got:
        np.testing.assert_array_equal(x, data[sid][i : i + len(x)])


def test_backend_choice():
    assert resolve_backend("auto") in ("dali-cpu", "dali-gpu")
    with pytest.raises(PipelineError, match="choose one of"):
        resolve_backend("opencv")
    from engine.runtime import cuda_available

    if not cuda_available():
        with pytest.raises(PipelineError, match="needs a CUDA device"):
            resolve_backend("dali-gpu")
    with pytest.raises(ValueError, match="uint8"):
        make_resizer(Transform(8), "torch")(np.zeros((1, 16, 16, 3), np.float32))
