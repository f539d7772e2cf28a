"""Atomic file writes and SHA-256 checksums.

Every file :mod:`pclab.data` writes goes through :func:`atomic_write`: the bytes go to a temporary
file in the destination folder, are flushed and fsync'd, and only then is the file renamed over the
destination with :func:`os.replace`. A reader therefore sees either the old file or the complete new
one, never a partial file, even if the writer crashes or raises midway.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from pclab.data.errors import ChecksumError

__all__ = [
    "atomic_write",
    "write_bytes_atomic",
    "file_lock",
    "sha256_bytes",
    "sha256_file",
    "verify_sha256",
]

_CHUNK = 1 << 20


@contextlib.contextmanager
def atomic_write(path: Path) -> Iterator[BinaryIO]:
    """Open a binary file that appears at ``path`` only once the ``with`` block completes.

    On an exception inside the block the temporary file is removed and ``path`` is left untouched
    (absent, or holding its previous content).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    tmp = Path(tmp_name)
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; use the usual default mode
        with os.fdopen(fd, "wb") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def _umask() -> int:
    """The process umask (read by setting and restoring it)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_write`)."""
    with atomic_write(path) as handle:
        handle.write(data)


def _fsync_dir(folder: Path) -> None:
    """Persist a rename in ``folder`` (best effort: not every platform can open a directory)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive advisory lock on ``path`` (created if needed) for the ``with`` block.

    Serialises processes and threads that build the same cache, so that concurrent first uses
    (e.g. several training workers) fetch once. Uses ``fcntl.flock``; where that is unavailable
    (Windows) the block runs unlocked.
    """
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        yield
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "ab") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def sha256_bytes(data: bytes | memoryview) -> str:
    """Hex SHA-256 of an in-memory buffer."""
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def verify_sha256(what: str, actual: str, expected: str, remedy: str) -> None:
    """Raise :class:`ChecksumError` naming ``what`` if ``actual != expected``.

    ``what`` identifies the file (usually its path); ``remedy`` says how to fix it.
    """
    if actual != expected:
        raise ChecksumError(
            f"checksum mismatch for {what}: expected sha256 {expected}, got {actual}; {remedy}"
        )
