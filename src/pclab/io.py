"""pclab's files: written whole or not at all, read without trusting them, one writer per folder.

* Every result, table and checkpoint pclab writes goes through :func:`atomic_write`: the bytes are
  written to a temporary file in the same folder (named ``.NAME.pclab-XXXXXXXX.tmp``), flushed to
  disk, then renamed over the target (``os.replace`` is atomic on POSIX and Windows).
* Checkpoints are loaded by PyTorch's restricted unpickler (:func:`load_torch`): tensors and plain
  containers only, never code.
* JSON is strict (RFC 8259): non-finite floats are written as the strings ``"NaN"``, ``"Infinity"``,
  ``"-Infinity"`` and read back as floats (:func:`to_json`, :func:`read_json`).
* A run or study directory has one writer at a time (:func:`own_directory`), which alone may
  delete the temporaries a killed writer left there.
"""

from __future__ import annotations

import io
import json
import math
import numbers
import os
import pickle
import re
import tempfile
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import torch

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None  # type: ignore[assignment]


TEMPORARY_MARK = ".pclab-"
TEMPORARY_GLOB = f".*{TEMPORARY_MARK}*.tmp"
"""The temporaries of :func:`atomic_open`: ``.NAME.pclab-XXXXXXXX.tmp`` (``XXXXXXXX`` from ``mkstemp``)."""


@contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w") -> Iterator[IO[Any]]:
    """Open a temporary file beside ``path``; on a clean exit it replaces ``path``."""
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_open mode must be 'w' or 'wb', got {mode!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}{TEMPORARY_MARK}", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode) as handle:
            yield handle
            handle.flush()
            os.fchmod(handle.fileno(), 0o666 & ~_umask())  # mkstemp makes 0600; give the usual mode
            os.fsync(handle.fileno())
        os.replace(tmp, path)
        _fsync_folder(path.parent)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _fsync_folder(folder: Path) -> None:
    """Make a rename durable (POSIX); a no-op where folders cannot be opened."""
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


def remove_stale_temporaries(folder: str | os.PathLike) -> list[Path]:
    """Delete pclab's temporaries (:data:`TEMPORARY_GLOB`) left directly in ``folder`` by a writer
    killed before renaming; return them. Not recursive, and no other file is touched: a ``.x.tmp``
    of another program stays. Call it only while owning ``folder`` (:func:`own_directory`): a
    temporary of a live writer would be taken from under it."""
    removed = []
    folder = Path(folder)
    for path in folder.glob(TEMPORARY_GLOB) if folder.is_dir() else []:
        if path.is_file() and not path.is_symlink():
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


def atomic_write(path: str | os.PathLike, write: Callable[[IO[Any]], None], binary: bool = False) -> Path:
    """Write ``path`` atomically with ``write(handle)``; returns the path."""
    with atomic_open(path, "wb" if binary else "w") as handle:
        write(handle)
    return Path(path)


NON_FINITE = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}
"""How :func:`to_json` writes the floats strict JSON has no literal for; :func:`read_json` reads
these three strings back as floats."""


def _encode(value: Any) -> Any:
    """``value`` with every non-finite float (in dicts, lists and tuples) replaced by its name."""
    if isinstance(value, float):
        if math.isfinite(value):
            return value
        return "NaN" if math.isnan(value) else "Infinity" if value > 0 else "-Infinity"
    if isinstance(value, dict):
        return {k: _encode(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_encode(v) for v in value]
    return value


def _decode(value: Any) -> Any:
    """The inverse of :func:`_encode` (dict keys stay as they are)."""
    if isinstance(value, str):
        return NON_FINITE.get(value, value)
    if isinstance(value, dict):
        return {k: _decode(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_decode(v) for v in value]
    return value


def _plain(value: Any) -> Any:
    """A JSON value for what :mod:`json` cannot write: numbers of other types (NumPy's) as numbers,
    anything else as its ``str``."""
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        return _encode(float(value))
    return str(value)


def to_json(data: Any, **kwargs: Any) -> str:
    """``data`` as strict JSON (RFC 8259), which has no literal for NaN or infinity: a non-finite
    float is written as the string ``"NaN"``, ``"Infinity"`` or ``"-Infinity"`` (the literals
    :func:`json.dumps` writes by default, which other readers refuse). :func:`read_json` and
    :func:`read_json_lines` turn these strings back into floats, so a record read back equals the
    one written. ``kwargs`` go to :func:`json.dumps`."""
    return json.dumps(_encode(data), allow_nan=False, default=_plain, **kwargs)


def write_json(path: str | os.PathLike, data: Any) -> Path:
    """Write ``data`` as indented, strict JSON (:func:`to_json`), atomically."""
    text = to_json(data, indent=2, sort_keys=True)
    return atomic_write(path, lambda h: h.write(text))


def read_json(path: str | os.PathLike) -> Any:
    """Read a JSON file (non-finite floats as :func:`to_json` writes them), naming the file when it
    is missing or corrupt."""
    path = Path(path)
    try:
        return _decode(json.loads(path.read_text()))
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no such file") from None
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON ({err}); the file is damaged, delete it to recompute") from None


def save_torch(path: str | os.PathLike, obj: Any) -> Path:
    """``torch.save`` atomically."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return atomic_write(path, lambda h: h.write(buffer.getvalue()), binary=True)


class UnsafeFileError(ValueError):
    """A file that would run code if loaded (a pickle holding other objects than data)."""


def load_torch(path: str | os.PathLike, map_location: Any = "cpu") -> Any:
    """``torch.load`` that never runs code from the file, naming the file when it is refused, damaged
    or truncated.

    The file is read by PyTorch's restricted unpickler (``weights_only=True``, which no environment
    variable overrides when passed explicitly): tensors, storages, dtypes, ``torch.Size`` and plain
    containers and scalars (dict, OrderedDict, list, tuple, str, bytes, int, float, bool, None) --
    everything :func:`save_torch` is given by pclab. Anything else, such as an object whose
    ``__reduce__`` calls a function, is refused before it is built.

    Raises:
        FileNotFoundError: no file at ``path``.
        UnsafeFileError: the file holds other objects than data (nothing of it was run).
        ValueError: the file is damaged or truncated.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such checkpoint")
    try:
        with warnings.catch_warnings():  # e.g. "Detected pickle protocol 4": a refusal or a damage follows
            warnings.simplefilter("ignore")
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        if "weights only load failed" in str(err).lower():
            found = re.search(r"GLOBAL (\S+)", str(err))
            what = f"a reference to {found.group(1)}" if found else "pickle instructions that build other objects"
            raise UnsafeFileError(f"{path}: refused to load: expected tensors and plain data only, got {what} "
                                  f"(which could run code); nothing of it was run") from None
        raise ValueError(f"{path}: checkpoint is damaged or truncated ({_one_line(err)})") from None
    except Exception as err:  # torch raises several kinds for a damaged file
        raise ValueError(f"{path}: checkpoint is damaged or truncated ({_one_line(err)})") from None


def _one_line(err: BaseException, limit: int = 200) -> str:
    """``Type: message`` of ``err`` on one line, at most ``limit`` characters of message."""
    text = " ".join(str(err).split())
    return f"{type(err).__name__}: {text[:limit]}{' ...' if len(text) > limit else ''}"


def append_line(path: str | os.PathLike, line: str) -> None:
    """Append one line (JSON lines logs) and flush it to disk.

    A crash can at worst leave the last line incomplete; readers skip such a line
    (:func:`read_json_lines`).
    """
    with open(path, "a") as handle:
        handle.write(line.rstrip("\n") + "\n")
        handle.flush()
        os.fsync(handle.fileno())


def read_json_lines(path: str | os.PathLike) -> list[dict]:
    """Records of a JSON-lines file, skipping an incomplete final line left by a crash."""
    path = Path(path)
    if not path.exists():
        return []
    lines = path.read_text().splitlines()
    records = []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            records.append(_decode(json.loads(line)))
        except json.JSONDecodeError:
            if i == len(lines) - 1:
                break
            raise ValueError(f"{path}: line {i + 1} is not valid JSON") from None
    return records


# ------------------------------------------------------------------------- owning a directory


class RunDirError(RuntimeError):
    """A run or study directory that cannot be used as asked (damaged checkpoint, other
    configuration, not a directory, in use by another pclab process...)."""


LOCK_NAME = ".pclab.lock"
"""The lock file :func:`own_directory` holds in a directory (kept: removing it would race)."""

_owned: dict[Path, int] = {}  # directories this process owns -> nesting depth


@contextmanager
def own_directory(folder: str | os.PathLike, subfolders: tuple[str, ...] = ()) -> Iterator[Path]:
    """Make ``folder`` (and its parents) and be its only pclab writer for the block.

    An exclusive ``flock`` on ``folder/.pclab.lock`` is held; the operating system releases it when
    this process ends, however it ends, so a lock of a killed process never blocks a later run.
    Once owned, the temporaries a killed writer left in ``folder`` and in its ``subfolders`` (not
    deeper) are removed (:func:`remove_stale_temporaries`). Owning a folder this process already
    owns (a study's trials, nested calls) is allowed and changes nothing. A folder made here is removed
    again when the block fails before anything but the lock was written in it. Where the system has no
    ``fcntl`` (Windows) no lock is taken.

    Raises:
        RunDirError: ``folder`` is not a directory, cannot be written, or another pclab process
            owns it.
    """
    folder = Path(folder)
    key = folder.resolve()
    if key in _owned:
        _owned[key] += 1
        try:
            yield folder
        finally:
            _owned[key] -= 1
        return
    created = not folder.exists() and not folder.is_symlink()
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise RunDirError(f"{folder}: expected a directory (or a path to create one), got {_kind(folder)}") from None
    except OSError as err:
        raise RunDirError(f"{folder}: expected a directory pclab can create, got {err.strerror or err}") from None
    if not folder.is_dir():
        raise RunDirError(f"{folder}: expected a directory, got {_kind(folder)}")
    lock = folder / LOCK_NAME
    try:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as err:
        raise RunDirError(f"{lock}: expected a lock file pclab can write, got {err.strerror or err}") from None
    try:
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.read(fd, 32).decode(errors="replace").strip()
                raise RunDirError(f"{folder}: expected a directory no other pclab process is writing, got one in use"
                                  f"{f' by process {holder}' if holder.isdigit() else ''}; wait for it to end or choose another "
                                  f"directory") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())  # named to a second writer
        for part in ("", *subfolders):
            remove_stale_temporaries(folder / part)
        _owned[key] = 1
        try:
            yield folder
        except BaseException:
            if created and [p.name for p in folder.iterdir()] == [LOCK_NAME]:  # failed before writing anything:
                lock.unlink(missing_ok=True)  # leave no empty folder behind (e.g. a study refused its settings)
                folder.rmdir()
            raise
        finally:
            del _owned[key]
    finally:
        os.close(fd)  # releases the lock


def _kind(path: Path) -> str:
    """What is at ``path``, for an error message."""
    if path.is_symlink() and not path.exists():
        return "a broken symbolic link"
    if path.is_file():
        return "a file"
    if path.exists():
        return "a device, socket or pipe" if not path.is_dir() else "a directory"
    for parent in path.parents:
        if parent.exists() and not parent.is_dir():
            return f"a path under {parent}, which is not a directory"
    return "a path that cannot be created"
