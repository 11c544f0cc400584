"""The samples folder: what its writer writes, its reader reads back, pixels, conditions and
labels alike, from the Zarr array or from PNG files alone; and bad folders get one clear error."""
from __future__ import annotations

import numpy as np
import pytest

from histogen.samples_folder import SamplesError, SamplesFolder


def written(path, pictures=True):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (5, 8, 8, 3), dtype=np.uint8)
    cond = rng.normal(size=(5, 4)).astype(np.float32)
    labels = ["lung", "colon", "lung", "skin", "colon"]
    writer = SamplesFolder(path).writer(5, 8, pictures=pictures)
    for i in (0, 2, 4):  # batches of 2, 2 and 1
        writer.add(images[i : i + 2], cond[i : i + 2], labels[i : i + 2])
    closed = writer.close({"run": "runs/x", "seed": 3})
    return images, cond, labels, closed


def test_what_is_written_reads_back(tmp_path):
    images, cond, labels, closed = written(tmp_path / "s")
    np.testing.assert_array_equal(closed.images[:], images)
    assert closed.images.attrs["seed"] == 3 and closed.labels == labels
    back = SamplesFolder(tmp_path / "s").read(5)
    np.testing.assert_array_equal(back.images, images)
    np.testing.assert_array_equal(back.cond, cond)
    assert back.labels == labels
    first = SamplesFolder(tmp_path / "s").read(3)  # the first n of each
    np.testing.assert_array_equal(first.images, images[:3])
    np.testing.assert_array_equal(first.cond, cond[:3])
    assert first.labels == labels[:3]
    # Without the array, the PNG files (grid.png aside) are the samples, the labels still theirs.
    (tmp_path / "s" / "samples.zarr").rename(tmp_path / "s.zarr")
    pngs = SamplesFolder(tmp_path / "s").read(5)
    np.testing.assert_array_equal(pngs.images, images)
    assert pngs.labels == labels


def test_samples_without_labels_or_conditions(tmp_path):
    writer = SamplesFolder(tmp_path).writer(2, 4)
    writer.add(np.full((2, 4, 4, 3), 7, np.uint8))
    writer.close({})
    back = SamplesFolder(tmp_path).read(10)
    assert back.cond is None and back.labels is None and back.images.tolist() == np.full((2, 4, 4, 3), 7).tolist()
    assert not list(tmp_path.glob("*.png"))  # no pictures unless asked for


def test_bad_folders_say_what_to_do(tmp_path):
    with pytest.raises(SamplesError, match="no samples.zarr and no PNG files"):
        SamplesFolder(tmp_path).read(4)
    written(tmp_path / "s")
    (tmp_path / "s" / "sample_labels.json").write_text('["lung"]')
    with pytest.raises(SamplesError, match="1 labels for 5 samples"):
        SamplesFolder(tmp_path / "s").read(5)


def test_a_picture_beside_the_samples_grid(tmp_path):
    from PIL import Image

    written(tmp_path / "s")
    folder = SamplesFolder(tmp_path / "s")
    real = np.zeros((30, 20, 3), np.uint8)
    real[..., 0] = 200
    Image.fromarray(real).save(tmp_path / "real.png")
    out = np.asarray(Image.open(folder.write_beside(tmp_path / "real.png")).convert("RGB"))
    grid = np.asarray(Image.open(folder.grid).convert("RGB"))
    np.testing.assert_array_equal(out[:30, :20], real)
    np.testing.assert_array_equal(out[: grid.shape[0], 36 : 36 + grid.shape[1]], grid)  # 16 px of white between
    assert (out[:, 20:36] == 255).all()
    (tmp_path / "bad.png").write_text("not a picture")
    with pytest.raises(SamplesError, match="--beside"):
        folder.write_beside(tmp_path / "bad.png")
