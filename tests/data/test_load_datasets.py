"""load() for the data sets that need no fetching: digits, synthetic, cifar10 (user files)."""

from __future__ import annotations

import hashlib
import pickle
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch

from pclab.data import DataError, MissingDataError, data_dir, load, loaders, synthetic


def test_data_dir_follows_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PCLAB_DATA", str(tmp_path))
    assert data_dir() == tmp_path
    monkeypatch.delenv("PCLAB_DATA")
    assert data_dir().parts[-2:] == ("pclab", "data")


def test_digits_split_is_fixed_stratified_and_disjoint() -> None:
    train, test = load("digits", "train"), load("digits", "test")
    assert train.images.shape == (1438, 1, 8, 8) and test.images.shape == (359, 1, 8, 8)
    assert train.images.dtype == torch.float32 and train.labels.dtype == torch.int64
    assert float(train.images.min()) == 0.0 and float(train.images.max()) == 1.0
    counts = test.labels.bincount(minlength=10)
    assert int(counts.max() - counts.min()) <= 2  # stratified: 35..37 per class
    again = load("digits", "test")
    assert torch.equal(again.images, test.images) and torch.equal(again.labels, test.labels)
    # disjoint: no test image appears in train
    train_rows = {bytes(row) for row in (train.images * 16).round().byte().flatten(1).numpy()}
    test_rows = [bytes(row) for row in (test.images * 16).round().byte().flatten(1).numpy()]
    assert sum(row in train_rows for row in test_rows) < 5  # a few digits are exact duplicates


def test_synthetic_is_deterministic_balanced_and_in_unit_range() -> None:
    a, b = load("synthetic", "train"), load("synthetic", "train")
    assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
    assert a.images.shape == (1000, 1, 8, 8) and a.labels.bincount().tolist() == [100] * 10
    assert 0.0 <= float(a.images.min()) and float(a.images.max()) <= 1.0
    test = load("synthetic", "test")
    assert len(test) == 200 and not torch.equal(test.images[:10], a.images[:10])
    other = synthetic("train", seed=1)
    assert not torch.equal(other.images, a.images)
    big = synthetic("test", classes=3, size=28, per_class=4)
    assert big.images.shape == (12, 1, 28, 28) and big.classes == 3


def test_synthetic_classes_are_separable_by_nearest_class_mean() -> None:
    train, test = load("synthetic", "train"), load("synthetic", "test")
    means = torch.stack([train.images[train.labels == c].mean(0) for c in range(10)]).flatten(1)
    predicted = torch.cdist(test.images.flatten(1), means).argmin(1)
    assert (predicted == test.labels).float().mean() > 0.95


def test_unknown_name_and_split_are_rejected() -> None:
    with pytest.raises(ValueError, match="unknown data set 'imagenet'"):
        load("imagenet")
    with pytest.raises(ValueError, match=r"split must be one of \['train', 'test'\], got 'val'"):
        load("digits", "val")


def test_cifar_missing_folder_says_where_to_put_the_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("PCLAB_CIFAR10", raising=False)
    folder = tmp_path / "cifar10" / "cifar-10-batches-py"
    with pytest.raises(MissingDataError) as info:
        load("cifar10", "train", tmp_path)
    message = str(info.value)
    assert f"{folder / 'data_batch_1'} does not exist" in message
    assert "data_batch_1 .. data_batch_5 and test_batch" in message and "$PCLAB_CIFAR10" in message


def _write_cifar(folder: Path, per_batch: int, data_shape: tuple[int, ...] | None = None) -> None:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, data_shape or (per_batch, 3072), dtype=np.uint8)
        batch = {b"batch_label": b"x", b"data": data, b"labels": rng.integers(0, 10, per_batch).tolist()}
        (folder / name).write_bytes(pickle.dumps(batch, protocol=2))


def test_cifar_loads_user_batches_from_the_env_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(loaders.CIFAR10_COUNTS, "train", 10)
    monkeypatch.setitem(loaders.CIFAR10_COUNTS, "test", 2)
    _write_cifar(tmp_path / "batches", per_batch=2)
    monkeypatch.setenv("PCLAB_CIFAR10", str(tmp_path / "batches"))
    train = load("cifar10", "train")
    assert train.images.shape == (10, 3, 32, 32) and train.labels.shape == (10,)
    assert 0.0 <= float(train.images.min()) and float(train.images.max()) <= 1.0


def test_cifar_batch_with_wrong_shape_is_reported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _write_cifar(tmp_path / "batches", per_batch=2, data_shape=(2, 1024))
    monkeypatch.setenv("PCLAB_CIFAR10", str(tmp_path / "batches"))
    expected = r"data_batch_1: field 'data' expected a uint8 array of shape \(n, 3072\), got uint8 array of shape \(2, 1024\)"
    with pytest.raises(DataError, match=expected):
        load("cifar10", "train")


def test_cifar_pickle_that_would_run_code_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _write_cifar(tmp_path / "batches", per_batch=2)
    (tmp_path / "batches" / "test_batch").write_bytes(pickle.dumps({"data": print}))
    monkeypatch.setenv("PCLAB_CIFAR10", str(tmp_path / "batches"))
    with pytest.raises(DataError, match="refusing to unpickle builtins.print"):
        load("cifar10", "test")


# SHA-256 of load_digits(): images as uint8 bytes followed by targets as uint8 bytes (scikit-learn 1.9).
DIGITS_SHA256 = "87ff0c9e40dc7e2c0e34e7257799c2e3f3aec1a016363bb11cad869ec428a826"


def test_digits_are_exactly_scikit_learns_load_digits() -> None:
    pixels, labels = loaders._digits_arrays()
    data = pixels.astype(np.uint8).tobytes() + labels.astype(np.uint8).tobytes()
    assert np.array_equal(pixels, pixels.round()) and hashlib.sha256(data).hexdigest() == DIGITS_SHA256


def test_digits_fall_back_to_load_digits_without_the_csv(monkeypatch: pytest.MonkeyPatch) -> None:
    pixels, labels = loaders._digits_arrays()
    fake = types.ModuleType("sklearn.datasets")
    fake.load_digits = lambda: types.SimpleNamespace(  # type: ignore[attr-defined]
        data=pixels.reshape(-1, 64).astype(np.float64), target=labels
    )
    monkeypatch.setitem(sys.modules, "sklearn.datasets", fake)
    monkeypatch.setattr(loaders, "_sklearn_digits_csv", lambda: None)
    loaders._digits_arrays.cache_clear()
    try:
        assert torch.equal(load("digits", "test").images, load("digits", "test").images)
        again, again_labels = loaders._digits_arrays()
        assert np.array_equal(again, pixels) and np.array_equal(again_labels, labels)
    finally:
        loaders._digits_arrays.cache_clear()


_REAL_MNIST = (data_dir() / "mnist" / "manifest.json").is_file()


@pytest.mark.skipif(not _REAL_MNIST, reason="real MNIST not fetched (run `pclab data fetch mnist`)")
def test_real_mnist_cache_matches_the_official_label_statistics() -> None:
    train = load("mnist", "train", fetch_if_missing=False)
    test = load("mnist", "test", fetch_if_missing=False)
    assert train.labels.bincount().tolist()[:2] == [5923, 6742]
    assert test.labels[:10].tolist() == [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]
    assert train.images.shape == (60000, 1, 28, 28) and len(test) == 10000
