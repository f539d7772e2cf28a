"""Atomic file writes and SHA-256 checksums.

Every file :mod:`pclab.data` writes goes through :func:`atomic_write` (pclab's one atomic writer,
:func:`pclab.io.atomic_open`): a reader sees either the old file or the complete new one, never a
partial file, even if the writer crashes or raises midway.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from pclab.data.errors import ChecksumError
from pclab.io import atomic_open

__all__ = [
    "atomic_write",
    "write_bytes_atomic",
    "file_lock",
    "sha256_bytes",
    "sha256_file",
    "verify_sha256",
]

_CHUNK = 1 << 20


def atomic_write(path: Path) -> contextlib.AbstractContextManager[BinaryIO]:
    """Open a binary file that appears at ``path`` only once the ``with`` block completes
    (:func:`pclab.io.atomic_open`): on an exception the temporary file is removed and ``path`` is
    left untouched (absent, or holding its previous content)."""
    return atomic_open(path, "wb")


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_write`)."""
    with atomic_write(path) as handle:
        handle.write(data)


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
