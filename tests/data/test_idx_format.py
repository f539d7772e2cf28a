"""IDX reading and writing: round trips, gzip, and the errors for malformed files."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from pclab.data import IdxFormatError, read_idx, write_idx
from pclab.data.idx import check_images, check_labels, encode_idx, parse_idx


def _images(n: int = 5, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, 28, 28), dtype=np.uint8)


def test_images_round_trip_and_header_is_the_standard_magic(tmp_path: Path) -> None:
    images = _images()
    path = tmp_path / "train-images-idx3-ubyte"
    write_idx(path, images)
    raw = path.read_bytes()
    assert raw[:16] == struct.pack(">IIII", 0x00000803, 5, 28, 28)
    assert len(raw) == 16 + images.size
    back = read_idx(path)
    assert back.dtype == np.uint8 and back.flags.writeable
    np.testing.assert_array_equal(back, images)


def test_labels_have_magic_0x801(tmp_path: Path) -> None:
    labels = np.arange(10, dtype=np.uint8)
    path = tmp_path / "labels"
    write_idx(path, labels)
    assert path.read_bytes()[:8] == struct.pack(">II", 0x00000801, 10)
    np.testing.assert_array_equal(read_idx(path), labels)


@settings(max_examples=30, deadline=None)
@given(
    hnp.arrays(
        dtype=st.sampled_from([np.uint8, np.int8, np.int16, np.int32, np.float32, np.float64]),
        shape=hnp.array_shapes(min_dims=1, max_dims=4, min_side=0, max_side=5),
    )
)
def test_any_supported_array_round_trips_through_idx_bytes(array: np.ndarray) -> None:
    back = parse_idx(encode_idx(array))
    assert back.dtype == array.dtype and back.shape == array.shape
    np.testing.assert_array_equal(back, array)


def test_gzip_input_is_detected_from_content_not_name(tmp_path: Path) -> None:
    images = _images(3)
    named_gz = tmp_path / "train-images-idx3-ubyte.gz"
    write_idx(named_gz, images)
    assert named_gz.read_bytes()[:2] == b"\x1f\x8b"
    np.testing.assert_array_equal(read_idx(named_gz), images)
    unnamed = tmp_path / "no-suffix"
    unnamed.write_bytes(gzip.compress(encode_idx(images)))
    np.testing.assert_array_equal(read_idx(unnamed), images)


def test_wrong_magic_is_reported_with_the_number_found(tmp_path: Path) -> None:
    path = tmp_path / "bad"
    path.write_bytes(b"\x12\x34\x08\x03" + bytes(100))
    with pytest.raises(IdxFormatError, match=r"bad: not an IDX file: magic number 0x12340803"):
        read_idx(path)


def test_unknown_type_byte_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "bad"
    path.write_bytes(b"\x00\x00\x07\x01" + struct.pack(">I", 1) + b"\x00")
    with pytest.raises(IdxFormatError, match="magic number 0x00000701"):
        read_idx(path)


def test_truncated_file_states_expected_and_actual_byte_counts(tmp_path: Path) -> None:
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(encode_idx(_images(4))[:-100])
    expected = 16 + 4 * 784
    with pytest.raises(IdxFormatError) as info:
        read_idx(path)
    message = str(info.value)
    assert str(path) in message and "truncated" in message
    assert f"expected {expected} bytes, got {expected - 100} bytes" in message


def test_truncated_header_and_extra_bytes_are_reported(tmp_path: Path) -> None:
    with pytest.raises(IdxFormatError, match="3 dims need 16 bytes, got 8 bytes"):
        parse_idx(struct.pack(">IHH", 0x00000803, 1, 1))
    with pytest.raises(IdxFormatError, match="extra trailing bytes.*expected 9 bytes, got 10"):
        parse_idx(encode_idx(np.zeros(1, np.uint8)) + b"\x00")


def test_truncated_gzip_stream_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "x.gz"
    path.write_bytes(gzip.compress(encode_idx(_images(2)))[:-20])
    with pytest.raises(IdxFormatError, match="corrupt or truncated gzip"):
        read_idx(path)


def test_image_and_label_checks_name_the_source_and_expected_shape() -> None:
    with pytest.raises(IdxFormatError, match=r"src: expected IDX images .* \(60000, 28, 28\), got uint8 array of shape \(5, 28, 28\)"):
        check_images(_images(5), "src", 60000)
    with pytest.raises(IdxFormatError, match=r"expected IDX labels .*\(3,\), got uint8 array of shape \(3, 1\)"):
        check_labels(np.zeros((3, 1), np.uint8), "src", 3)
    with pytest.raises(IdxFormatError, match="label values must be in 0..9, got maximum 12"):
        check_labels(np.array([1, 12], np.uint8), "src")
