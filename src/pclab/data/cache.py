"""The on-disk cache of converted data sets, and its manifest.

Layout of ``<root>/<name>/`` (``root`` defaults to :func:`data_dir`)::

    train-images.npy   uint8 (N_train, H, W), values 0..255
    train-labels.npy   uint8 (N_train,), values 0..classes-1
    test-images.npy    uint8 (N_test, H, W)
    test-labels.npy    uint8 (N_test,)
    manifest.json      name, description, source, and the size and SHA-256 of every file above

The manifest is written last, so a folder without one is an incomplete cache. Loading a split reads
each of its two files once, checks size and SHA-256 against the manifest, and only then parses it. The
manifest's checksums are in turn compared with those pinned in the package (``arrays_sha256`` of
:data:`pclab.data.sources.SOURCES`), so an edited array with a re-hashed manifest is refused.
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import platformdirs
from pydantic import BaseModel, ConfigDict, ValidationError

from pclab.data.errors import ChecksumError, DataError, MissingDataError, fix_hint
from pclab.data.idx import check_images, check_labels
from pclab.data.sources import SOURCES, IdxSource
from pclab.data.storage import sha256_bytes, write_bytes_atomic

__all__ = [
    "DATA_ENV",
    "MANIFEST",
    "CACHE_FORMAT",
    "SPLITS",
    "CacheFile",
    "Manifest",
    "data_dir",
    "resolve_root",
    "cache_folder",
    "write_cache",
    "read_manifest",
    "verify_cache",
    "read_split",
]

DATA_ENV = "PCLAB_DATA"
MANIFEST = "manifest.json"
CACHE_FORMAT = "pclab-data-cache/1"
SPLITS = ("train", "test")


class CacheFile(BaseModel):
    """Size and SHA-256 of one cache file."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    bytes: int
    sha256: str


class Manifest(BaseModel):
    """Content of ``manifest.json``: what the cache holds and how to verify it."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    format: str
    name: str
    description: str
    classes: int
    splits: dict[str, dict[str, str]]
    files: dict[str, CacheFile]
    source: dict[str, Any]


def data_dir() -> Path:
    """The default data root: ``$PCLAB_DATA`` if set, else ``<user cache dir>/pclab/data``."""
    env = os.environ.get(DATA_ENV)
    if env:
        return Path(env).expanduser()
    return platformdirs.user_cache_path("pclab", appauthor=False) / "data"


def resolve_root(root: Path | str | None) -> Path:
    """``root`` as a Path, or :func:`data_dir` when None; DataError if it (or its nearest existing
    ancestor) is not a folder, e.g. ``$PCLAB_DATA`` naming a file."""
    path = data_dir() if root is None else Path(root).expanduser()
    existing = next((p for p in (path, *path.parents) if p.exists()), None)
    if existing is not None and not existing.is_dir():
        origin = f" (${DATA_ENV})" if root is None and os.environ.get(DATA_ENV) else ""
        what = "" if existing == path else f" inside {existing}"
        raise DataError(f"data root {path}{origin}: expected a folder{what}, got a file ({existing} is not a folder)")
    return path


def cache_folder(name: str, root: Path | str | None = None) -> Path:
    """``<root>/<name>``: where data set ``name`` is cached."""
    return resolve_root(root) / name


def _npy_bytes(array: np.ndarray) -> bytes:
    """``array`` serialised in ``.npy`` format."""
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def write_cache(
    folder: Path,
    name: str,
    splits: dict[str, tuple[np.ndarray, np.ndarray]],
    *,
    description: str,
    classes: int,
    source: dict[str, Any],
) -> Manifest:
    """Write ``splits`` (``split -> (images uint8 (N, H, W), labels uint8 (N,))``) to ``folder``.

    Any old manifest is removed first and the new one written last, each file atomically, so an
    interrupted write leaves a folder that :func:`read_manifest` reports as incomplete.
    """
    folder.mkdir(parents=True, exist_ok=True)
    (folder / MANIFEST).unlink(missing_ok=True)
    files: dict[str, CacheFile] = {}
    layout: dict[str, dict[str, str]] = {}
    for split, (images, labels) in splits.items():
        layout[split] = {}
        for kind, array in (("images", images), ("labels", labels)):
            filename = f"{split}-{kind}.npy"
            data = _npy_bytes(np.ascontiguousarray(array, dtype=np.uint8))
            write_bytes_atomic(folder / filename, data)
            files[filename] = CacheFile(bytes=len(data), sha256=sha256_bytes(data))
            layout[split][kind] = filename
    manifest = Manifest(
        format=CACHE_FORMAT,
        name=name,
        description=description,
        classes=classes,
        splits=layout,
        files=files,
        source=source,
    )
    text = json.dumps(manifest.model_dump(), indent=2, sort_keys=True) + "\n"
    write_bytes_atomic(folder / MANIFEST, text.encode())
    return manifest


def read_manifest(folder: Path, name: str) -> Manifest:
    """Parse and check ``folder/manifest.json``.

    Raises :class:`MissingDataError` if it does not exist, :class:`DataError` if it is not valid
    JSON, misses a field, or describes another data set or format.
    """
    path = folder / MANIFEST
    if not path.is_file():
        raise MissingDataError(
            f"{name} is not cached: {path} does not exist; run `pclab data fetch {name}` "
            f"or call pclab.data.fetch({name!r})"
        )
    try:
        manifest = Manifest.model_validate_json(path.read_bytes())
    except ValidationError as exc:
        raise DataError(f"invalid manifest {path}: {exc}; {fix_hint(name, folder)}") from exc
    _expect(path, "format", CACHE_FORMAT, manifest.format, name, folder)
    _expect(path, "name", name, manifest.name, name, folder)
    for split, kinds in manifest.splits.items():
        for filename in kinds.values():
            if filename not in manifest.files:
                raise DataError(
                    f"invalid manifest {path}: field 'splits.{split}' names {filename!r}, which is "
                    f"missing from field 'files'; {fix_hint(name, folder)}"
                )
    check_pinned(manifest, folder)
    return manifest


def check_pinned(manifest: Manifest, folder: Path) -> None:
    """ChecksumError if a file's SHA-256 in ``manifest`` differs from the one pinned in the package
    (``arrays_sha256`` of the data set's source: of its npm package for a fetched cache, of its IDX
    files for an imported one) or a pinned file is not listed."""
    source = SOURCES.get(manifest.name)
    if source is not None and manifest.source.get("kind") == "idx" and not isinstance(source, IdxSource):
        source = source.idx
    for filename, expected in source.arrays_sha256 if source is not None else ():
        record = manifest.files.get(filename)
        if record is None or record.sha256 != expected:
            got = "not listed" if record is None else f"sha256 {record.sha256}"
            raise ChecksumError(
                f"cache file {folder / filename}: expected the sha256 pinned in pclab for {manifest.name} ({expected}), "
                f"got {got} in {folder / MANIFEST} (the cache was changed after pclab wrote it); {fix_hint(manifest.name, folder)}"
            )


def _expect(path: Path, field: str, expected: object, got: object, name: str, folder: Path) -> None:
    """Raise :class:`DataError` if manifest ``field`` is not ``expected``."""
    if got != expected:
        raise DataError(
            f"invalid manifest {path}: field {field!r} expected {expected!r}, got {got!r}; "
            f"{fix_hint(name, folder)}"
        )


def _verified_bytes(folder: Path, filename: str, record: CacheFile, name: str) -> bytes:
    """Content of ``folder/filename`` after checking its size and SHA-256 against ``record``."""
    path = folder / filename
    try:
        data = path.read_bytes()
    except FileNotFoundError as exc:
        raise ChecksumError(
            f"cache file {path} is missing (listed in {folder / MANIFEST}); {fix_hint(name, folder)}"
        ) from exc
    if len(data) != record.bytes:
        raise ChecksumError(
            f"size mismatch for {path}: expected {record.bytes} bytes, got {len(data)} bytes "
            f"(truncated or replaced); {fix_hint(name, folder)}"
        )
    actual = sha256_bytes(data)
    if actual != record.sha256:
        raise ChecksumError(
            f"checksum mismatch for {path}: expected sha256 {record.sha256}, got {actual}; "
            f"{fix_hint(name, folder)}"
        )
    return data


def verify_cache(folder: Path, name: str) -> Manifest:
    """Check every file listed in the manifest (size and SHA-256); return the manifest."""
    manifest = read_manifest(folder, name)
    for filename, record in manifest.files.items():
        _verified_bytes(folder, filename, record, name)
    return manifest


def read_split(folder: Path, name: str, split: str) -> tuple[np.ndarray, np.ndarray, Manifest]:
    """Verified ``(images uint8 (N, H, W), labels uint8 (N,), manifest)`` of one cached split."""
    manifest = read_manifest(folder, name)
    if split not in manifest.splits:
        raise DataError(
            f"{name} cache {folder} has splits {sorted(manifest.splits)}, not {split!r}"
        )
    arrays = []
    for kind in ("images", "labels"):
        filename = manifest.splits[split][kind]
        data = _verified_bytes(folder, filename, manifest.files[filename], name)
        arrays.append(np.load(io.BytesIO(data), allow_pickle=False))
    images, labels = arrays
    check_images(images, str(folder / manifest.splits[split]["images"]), size=None)
    check_labels(
        labels, str(folder / manifest.splits[split]["labels"]), len(images), manifest.classes
    )
    return images, labels, manifest
