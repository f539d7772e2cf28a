"""Reading and writing IDX files, the format of the MNIST and Fashion-MNIST distributions.

An IDX file is a 4-byte magic number ``0x00 0x00 <dtype> <ndim>``, then ``ndim`` big-endian uint32
dimension sizes, then the data in C order, big-endian. MNIST images are ``0x00000803`` (uint8, 3
dims: ``(N, 28, 28)``), labels ``0x00000801`` (uint8, 1 dim: ``(N,)``). Files may be gzip-compressed;
this is detected from the content (gzip magic ``1f 8b``), not from the file name.
"""

from __future__ import annotations

import gzip
import struct
import zlib
from pathlib import Path

import numpy as np

from pclab.data.errors import IdxFormatError
from pclab.data.storage import write_bytes_atomic

__all__ = [
    "IMAGES_MAGIC",
    "LABELS_MAGIC",
    "read_idx",
    "read_idx_bytes",
    "parse_idx",
    "write_idx",
    "encode_idx",
    "check_images",
    "check_labels",
]

IMAGES_MAGIC = 0x00000803
LABELS_MAGIC = 0x00000801

# IDX dtype byte -> numpy dtype (big-endian, as stored).
_IDX_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_GZIP_MAGIC = b"\x1f\x8b"


def read_idx_bytes(path: Path) -> bytes:
    """The uncompressed content of the IDX file at ``path`` (gunzipped if it is gzip data).

    Raises :class:`IdxFormatError` if a gzip stream is truncated or corrupt.
    """
    raw = Path(path).read_bytes()
    if not raw.startswith(_GZIP_MAGIC):
        return raw
    try:
        return gzip.decompress(raw)
    except (EOFError, OSError, zlib.error) as exc:
        raise IdxFormatError(
            f"{path}: corrupt or truncated gzip data ({exc}); "
            "replace the file with a complete copy"
        ) from exc


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (plain or gzip) into a native-endian, writable numpy array.

    Returns an array whose shape is the header's dims and whose dtype is the header's (uint8 for
    MNIST: images ``(N, 28, 28)`` with values 0..255, labels ``(N,)`` with values 0..9).

    Raises :class:`IdxFormatError` on a bad magic number, an unknown dtype byte, or a byte count
    that does not match the header (the message states expected and actual byte counts).
    """
    return parse_idx(read_idx_bytes(path), source=str(path))


def parse_idx(data: bytes, source: str = "<bytes>") -> np.ndarray:
    """Parse uncompressed IDX content ``data``; ``source`` names it in error messages."""
    if len(data) < 4:
        raise IdxFormatError(
            f"{source}: {len(data)} bytes is too short for an IDX file (the magic number alone is 4)"
        )
    zero, code, ndim = struct.unpack(">HBB", data[:4])
    magic = int.from_bytes(data[:4], "big")
    if zero != 0 or code not in _IDX_DTYPES or ndim == 0:
        raise IdxFormatError(
            f"{source}: not an IDX file: magic number 0x{magic:08x}, expected 0x0000TTDD with a "
            f"known type byte TT in {{{', '.join(f'0x{c:02x}' for c in _IDX_DTYPES)}}} and DD >= 1 "
            f"dims (0x{IMAGES_MAGIC:08x} for images, 0x{LABELS_MAGIC:08x} for labels)"
        )
    header = 4 + 4 * ndim
    if len(data) < header:
        raise IdxFormatError(
            f"{source}: truncated IDX header: {ndim} dims need {header} bytes, got {len(data)} bytes"
        )
    dims = struct.unpack(f">{ndim}I", data[4:header])
    dtype = _IDX_DTYPES[code]
    expected = header + int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    if len(data) != expected:
        kind = "truncated IDX file" if len(data) < expected else "IDX file has extra trailing bytes"
        raise IdxFormatError(
            f"{source}: {kind}: header says dims {tuple(dims)} of {dtype.name}, so expected "
            f"{expected} bytes, got {len(data)} bytes"
        )
    array = np.frombuffer(data, dtype=dtype, offset=header).reshape(dims)
    return array.astype(dtype.newbyteorder("="), copy=True)


def encode_idx(array: np.ndarray) -> bytes:
    """The IDX encoding (uncompressed) of ``array``; its dtype must be one IDX supports."""
    array = np.asarray(array)
    matches = [c for c, dt in _IDX_DTYPES.items() if dt.newbyteorder("=") == array.dtype]
    if not matches or array.ndim == 0 or array.ndim > 255:
        raise IdxFormatError(
            f"cannot encode array of dtype {array.dtype} with {array.ndim} dims as IDX: expected "
            f"one of {sorted({dt.name for dt in _IDX_DTYPES.values()})} with 1..255 dims"
        )
    head = struct.pack(">HBB", 0, matches[0], array.ndim) + struct.pack(
        f">{array.ndim}I", *array.shape
    )
    return head + np.ascontiguousarray(array, dtype=_IDX_DTYPES[matches[0]]).tobytes()


def write_idx(path: Path, array: np.ndarray) -> None:
    """Write ``array`` to ``path`` as IDX, atomically; gzip-compressed if the name ends in ``.gz``."""
    data = encode_idx(array)
    if str(path).endswith(".gz"):
        data = gzip.compress(data, mtime=0)
    write_bytes_atomic(Path(path), data)


def _describe(array: np.ndarray) -> str:
    """E.g. ``'uint8 array of shape (60000, 28, 28)'``."""
    return f"{array.dtype} array of shape {tuple(array.shape)}"


def _expected_shape(count: int | None, rest: tuple[int, ...]) -> str:
    """E.g. ``'(60000, 28, 28)'``, or ``'(N, H, W)'`` when unconstrained."""
    dims = ["N" if count is None else str(count), *(str(d) for d in rest)]
    return "(" + ", ".join(dims) + (",)" if len(dims) == 1 else ")")


def check_images(
    array: np.ndarray, source: str, count: int | None = None, size: tuple[int, int] | None = (28, 28)
) -> None:
    """Check ``array`` is an IDX image set: uint8 ``(count, *size)`` (magic 0x00000803).

    ``count`` or ``size`` None means any. Raises :class:`IdxFormatError` naming ``source``.
    """
    ok = (
        array.dtype == np.uint8
        and array.ndim == 3
        and (count is None or array.shape[0] == count)
        and (size is None or tuple(array.shape[1:]) == tuple(size))
    )
    if not ok:
        expected = _expected_shape(count, tuple(size) if size is not None else ("H", "W"))
        raise IdxFormatError(
            f"{source}: expected IDX images (magic 0x{IMAGES_MAGIC:08x}): uint8 array of shape "
            f"{expected}, got {_describe(array)}"
        )


def check_labels(array: np.ndarray, source: str, count: int | None = None, classes: int = 10) -> None:
    """Check ``array`` is an IDX label set: uint8 ``(count,)`` (magic 0x00000801), values < classes.

    ``count`` None means any. Raises :class:`IdxFormatError` naming ``source``.
    """
    if array.dtype != np.uint8 or array.ndim != 1 or (count is not None and len(array) != count):
        raise IdxFormatError(
            f"{source}: expected IDX labels (magic 0x{LABELS_MAGIC:08x}): uint8 array of shape "
            f"{_expected_shape(count, ())}, got {_describe(array)}"
        )
    if array.size and int(array.max()) >= classes:
        raise IdxFormatError(
            f"{source}: label values must be in 0..{classes - 1}, got maximum {int(array.max())}"
        )
