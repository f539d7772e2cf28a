"""Files are written whole or not at all; a damaged file is detected and reported, never loaded."""

from __future__ import annotations

import json

import pytest

from pclab.io import append_line, atomic_write, load_torch, read_json, read_json_lines, save_torch, write_json


def test_a_writer_that_fails_leaves_the_previous_file_and_no_temporary(tmp_path):
    target = tmp_path / "results.json"
    write_json(target, {"a": 1})

    def half(handle):
        handle.write('{"a": 2, "b"')
        raise RuntimeError("crash mid-write")

    with pytest.raises(RuntimeError):
        atomic_write(target, half)
    assert read_json(target) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]


def test_files_get_the_usual_permissions(tmp_path):
    path = write_json(tmp_path / "r.json", {})
    assert path.stat().st_mode & 0o044  # readable by others (mkstemp alone gives 0600)


def test_a_truncated_json_file_is_reported(tmp_path):
    (tmp_path / "results.json").write_text('{"test_accuracy": 0.9')
    with pytest.raises(ValueError, match="results.json: not valid JSON .* damaged"):
        read_json(tmp_path / "results.json")


def test_a_truncated_checkpoint_is_reported(tmp_path):
    save_torch(tmp_path / "c.pt", {"x": list(range(1000))})
    data = (tmp_path / "c.pt").read_bytes()
    (tmp_path / "c.pt").write_bytes(data[:100])
    with pytest.raises(ValueError, match="c.pt: checkpoint is damaged or truncated"):
        load_torch(tmp_path / "c.pt")


def test_json_lines_skip_only_an_incomplete_last_line(tmp_path):
    path = tmp_path / "metrics.jsonl"
    append_line(path, json.dumps({"epoch": 1}))
    with open(path, "a") as handle:
        handle.write('{"epoch": 2, "te')
    assert read_json_lines(path) == [{"epoch": 1}]
    path.write_text('{"epoch": 1\n{"epoch": 2}\n')
    with pytest.raises(ValueError, match="line 1 is not valid JSON"):
        read_json_lines(path)
