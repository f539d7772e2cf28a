"""Atomic writes and checksums."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from pclab.data import ChecksumError
from pclab.data.storage import atomic_write, sha256_file, verify_sha256, write_bytes_atomic


def test_writer_raising_midway_leaves_no_partial_file(tmp_path: Path) -> None:
    target = tmp_path / "images.npy"
    with pytest.raises(RuntimeError, match="disk full"):
        with atomic_write(target) as handle:
            handle.write(b"half of the data")
            raise RuntimeError("disk full")
    assert not target.exists()
    assert list(tmp_path.iterdir()) == []


def test_writer_raising_midway_keeps_the_previous_content(tmp_path: Path) -> None:
    target = tmp_path / "manifest.json"
    write_bytes_atomic(target, b"old")
    with pytest.raises(KeyboardInterrupt):
        with atomic_write(target) as handle:
            handle.write(b"new but incomplete")
            raise KeyboardInterrupt
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["manifest.json"]


def test_completed_write_replaces_the_file_and_creates_folders(tmp_path: Path) -> None:
    target = tmp_path / "a" / "b" / "file.bin"
    write_bytes_atomic(target, b"one")
    write_bytes_atomic(target, b"two")
    assert target.read_bytes() == b"two"
    umask = os.umask(0o022)
    os.umask(umask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~umask  # not mkstemp's 0600


def test_sha256_file_matches_hashlib(tmp_path: Path) -> None:
    path = tmp_path / "x"
    data = bytes(range(256)) * 9000
    path.write_bytes(data)
    assert sha256_file(path) == hashlib.sha256(data).hexdigest()


def test_checksum_mismatch_message_names_file_expected_got_and_fix() -> None:
    with pytest.raises(ChecksumError) as info:
        verify_sha256("/data/x", "cd34", "ab12", "delete it")
    assert str(info.value) == "checksum mismatch for /data/x: expected sha256 ab12, got cd34; delete it"
