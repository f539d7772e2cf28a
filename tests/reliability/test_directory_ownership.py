"""pclab touches only its own files, one writer at a time, and writes strict JSON.

* Only pclab's own stale temporaries (``.NAME.pclab-XXXX.tmp``) are deleted, only in the folders
  pclab writes, never recursively: a ``.draft.tmp`` of someone else survives a run and a study.
* A run or study directory has one pclab writer: a second is refused (exit 5) while the first
  lives; a lock left by a killed process blocks nothing.
* ``--out`` must name a directory: empty (exit 2) or a file or device (exit 5) is one line.
* Damaged trial records are reported on one line and their trials run again.
* Every JSON file is strict (no ``NaN``/``Infinity`` literals); non-finite floats read back as written.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

import pclab
from pclab import cli
from pclab.io import LOCK_NAME, RunDirError, own_directory, read_json, to_json, write_json
from pclab.sweep import load_records, run_trials, trial_id
from pclab.train import DivergenceError, train

runner = CliRunner()
SRC = str(Path(pclab.__file__).resolve().parents[1])


def pclab_cli(*args):
    return runner.invoke(cli.app, [str(a) for a in args], prog_name="pclab")


def one_line_error(result, code: int, *needles: str) -> str:
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([SRC, os.environ.get("PYTHONPATH", "")]), "OMP_NUM_THREADS": "1"}


def square(params: dict) -> dict:
    """A trial function (module level, as run_trials asks)."""
    return {"value": params["n"] ** 2}


# ------------------------------------------------------------------------------ temporaries


def test_a_run_deletes_its_own_stale_temporaries_and_nothing_else(tmp_path):
    out = tmp_path / "run"
    ours = [out / ".checkpoint.pt.pclab-a1b2c3d4.tmp", out / "telemetry" / ".epoch_001.parquet.pclab-a1b2c3d4.tmp"]
    theirs = [out / ".draft.tmp", out / "notes" / ".draft.tmp", out / "telemetry" / ".draft.tmp",
              out / "notes" / ".x.pclab-a1b2c3d4.tmp",  # a folder pclab does not write is not searched
              out / "telemetry" / "mine.parquet"]  # only telemetry/epoch_NNN.parquet are pclab's
    for path in ours + theirs:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("partial")
    result = pclab_cli("train", "--preset", "tiny", "--set", "epochs=1", "--out", out, "-q")
    assert result.exit_code == 0, result.output
    assert not any(path.exists() for path in ours)
    assert all(path.read_text() == "partial" for path in theirs)


def test_a_study_deletes_its_own_stale_temporaries_and_nothing_else(tmp_path):
    trials = [{"n": 2}, {"n": 3}]
    ours = [tmp_path / "trials" / f".{trial_id(trials[0])}.json.pclab-a1b2c3d4.tmp", tmp_path / "tables" / ".x.csv.pclab-zz.tmp"]
    theirs = [tmp_path / ".draft.tmp", tmp_path / "trials" / ".draft.tmp", tmp_path / "mine" / ".draft.tmp"]
    for path in ours + theirs:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("partial")
    records = run_trials(square, trials, tmp_path, executor="serial")
    assert [r["result"]["value"] for r in records] == [4, 9]
    assert not any(path.exists() for path in ours)
    assert all(path.read_text() == "partial" for path in theirs)


# ------------------------------------------------------------------------------ --out


@pytest.mark.parametrize("command", [["train", "--preset", "tiny"], ["tune", "--preset", "tiny"], ["study", "dynamics", "--preset", "tiny"]])
@pytest.mark.parametrize("empty", ["", "  "])
def test_an_empty_out_is_refused_not_taken_for_the_current_directory(tmp_path, monkeypatch, command, empty):
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".draft.tmp").write_text("mine")
    one_line_error(pclab_cli(*command, "--out", empty), 2, "--out: expected a directory path", f"got {empty!r}")
    assert sorted(p.name for p in tmp_path.iterdir()) == [".draft.tmp"]


@pytest.mark.parametrize("command", [["train", "--preset", "tiny"], ["tune", "--preset", "tiny", "--executor", "serial"],
                                     ["study", "dynamics", "--preset", "tiny", "--executor", "serial"]])
def test_an_out_that_is_not_a_directory_is_one_line_and_exit_5(tmp_path, command):
    one_line_error(pclab_cli(*command, "--out", "/dev/null"), 5, "/dev/null: expected a directory", "got a device")
    (tmp_path / "notes.txt").write_text("mine")
    one_line_error(pclab_cli(*command, "--out", tmp_path / "notes.txt"), 5, "notes.txt: expected a directory", "got a file")
    one_line_error(pclab_cli(*command, "--out", tmp_path / "notes.txt" / "run"), 5, "expected a directory")
    assert (tmp_path / "notes.txt").read_text() == "mine"


# ------------------------------------------------------------------------------ one writer


def hold_locks(*folders: Path) -> list[subprocess.Popen]:
    """Separate processes, each owning one of ``folders`` (as a running pclab would) until killed."""
    code = ("import sys, time\nfrom pclab.io import own_directory\nwith own_directory(sys.argv[1]):\n"
            "    print('held', flush=True)\n    time.sleep(300)\n")
    holders = [subprocess.Popen([sys.executable, "-c", code, str(f)], env=_env(), stdout=subprocess.PIPE, text=True) for f in folders]
    for holder in holders:
        assert holder.stdout.readline().strip() == "held"
    return holders


def test_a_second_writer_is_refused_and_a_killed_writers_lock_blocks_nothing(tmp_path):
    run, study = tmp_path / "run", tmp_path / "study"
    assert pclab_cli("train", "--preset", "tiny", "--set", "epochs=1", "--out", run, "-q").exit_code == 0
    holders = hold_locks(run, study)
    try:
        for args in (["train", "--preset", "tiny", "--set", "epochs=1", "--out", run, "-q", "--force"],
                     ["train", "--preset", "tiny", "--set", "epochs=1", "--out", run, "-q", "--resume"], ["evaluate", run]):
            one_line_error(pclab_cli(*args), 5, f"{run}: expected a directory no other pclab process is writing",
                           f"in use by process {holders[0].pid}")
        with pytest.raises(RunDirError, match=f"in use by process {holders[1].pid}"):
            run_trials(square, [{"n": 2}], study, executor="serial")
        one_line_error(pclab_cli("study", "dynamics", "--preset", "tiny", "--executor", "serial", "--out", study), 5, "in use by process")
        assert not (study / "trials").exists()
    finally:
        for holder in holders:
            holder.send_signal(signal.SIGKILL)  # the lock file stays; the lock goes with the process
            holder.wait(timeout=30)
    assert (run / LOCK_NAME).exists()
    assert pclab_cli("evaluate", run).exit_code == 0
    assert pclab_cli("train", "--preset", "tiny", "--set", "epochs=1", "--out", run, "-q", "--force").exit_code == 0
    assert run_trials(square, [{"n": 2}], study, executor="serial")[0]["result"] == {"value": 4}


def test_two_trainings_into_one_directory_the_second_is_refused(tmp_path):
    out = tmp_path / "run"
    first = subprocess.Popen([sys.executable, "-m", "pclab", "train", "--preset", "tiny", "--set", "epochs=500", "--out", str(out), "-q"],
                             env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 120
        while not (out / "config.yaml").exists() and time.time() < deadline and first.poll() is None:
            time.sleep(0.05)
        assert first.poll() is None, first.communicate()
        second = pclab_cli("train", "--preset", "tiny", "--set", "seed=7", "--out", out, "-q", "--force")
        one_line_error(second, 5, f"in use by process {first.pid}")
        assert "seed: 0" in (out / "config.yaml").read_text()
    finally:
        first.send_signal(signal.SIGTERM)
        first.communicate(timeout=60)
    assert first.returncode == 130
    with own_directory(out):  # the first writer's lock ended with it
        pass


def test_one_process_may_own_a_directory_twice(tmp_path):
    """A study owns its folder while its trials (run in the same process) record into it."""
    with own_directory(tmp_path), own_directory(tmp_path):
        write_json(tmp_path / "a.json", {})
    with own_directory(tmp_path):  # released: owned again
        pass


# ------------------------------------------------------------------------------ trial records


@pytest.mark.parametrize("content", ["{}", "[]", '"ok"', "null",
                                     '{"id": "ID", "params": {"n": 2}, "status": "ok", "result": [4], "seconds": 0.1}',
                                     '{"id": "ID", "params": {"n": 2}, "status": "ok", "result": 4, "seconds": 0.1}',
                                     '{"id": "ID", "params": {"n": 2}, "status": "done", "seconds": 0.1}',
                                     '{"id": "other", "params": {"n": 2}, "status": "ok", "result": {"value": 4}, "seconds": 0.1}'])
def test_a_damaged_trial_record_is_one_warning_and_the_trial_runs_again(tmp_path, capsys, content):
    ident = trial_id({"n": 2})
    (tmp_path / "trials").mkdir()
    (tmp_path / "trials" / f"{ident}.json").write_text(content.replace('"ID"', json.dumps(ident)))
    assert load_records(tmp_path) == {}
    warning = capsys.readouterr().out.splitlines()
    assert len(warning) == 1 and warning[0].startswith(f"warning: {tmp_path / 'trials' / ident}.json: expected ")
    assert "damaged" in warning[0]
    records = run_trials(square, [{"n": 2}], tmp_path, executor="serial")
    assert records[0]["status"] == "ok" and records[0]["result"] == {"value": 4}
    assert read_json(tmp_path / "trials" / f"{ident}.json")["result"] == {"value": 4}


# ------------------------------------------------------------------------------ strict JSON


def strict(text: str):
    """Parse ``text`` as RFC 8259 JSON (Python's parser would accept NaN and Infinity)."""
    def refuse(token):
        raise ValueError(f"not strict JSON: {token}")

    return json.loads(text, parse_constant=refuse)


def test_non_finite_numbers_are_written_as_strings_and_read_back_as_floats(tmp_path):
    data = {"inf": math.inf, "nan": math.nan, "list": [1.5, -math.inf, (math.nan,)], "numpy": np.float32("nan"),
            "numpy_ok": np.float64(0.25), "count": np.int64(3), "nested": {"x": {"y": math.inf}}, "text": "inf"}
    path = write_json(tmp_path / "r.json", data)
    assert strict(path.read_text()) == {"inf": "Infinity", "nan": "NaN", "list": [1.5, "-Infinity", ["NaN"]], "numpy": "NaN",
                                        "numpy_ok": 0.25, "count": 3, "nested": {"x": {"y": "Infinity"}}, "text": "inf"}
    back = read_json(path)
    assert back["inf"] == back["nested"]["x"]["y"] == math.inf and back["list"][1] == -math.inf
    assert math.isnan(back["nan"]) and math.isnan(back["list"][2][0]) and math.isnan(back["numpy"])
    assert back["text"] == "inf" and back["count"] == 3
    assert strict(to_json({"a": math.nan})) == {"a": "NaN"}


def test_a_trial_result_with_non_finite_values_round_trips(tmp_path):
    records = run_trials(non_finite, [{"n": 1}], tmp_path, executor="serial")
    assert records[0]["result"]["steps"] == math.inf and math.isnan(records[0]["result"]["cosine"])
    strict((tmp_path / "trials" / f"{records[0]['id']}.json").read_text())


def non_finite(params: dict) -> dict:
    """A trial function whose result is not finite (a diverged relaxation's steps, an undefined cosine)."""
    return {"steps": math.inf, "cosine": math.nan}


def test_failure_json_and_metrics_of_a_diverged_run_are_strict(tmp_path, tiny):
    with pytest.raises(DivergenceError, match="energy = nan"):
        train(tiny("inference.lr=60", "inference.steps=20"), tmp_path, progress=False)
    failure = strict((tmp_path / "failure.json").read_text())
    assert failure["metrics"] == {"energy": "NaN"} and "energy = nan" in failure["message"]
    assert math.isnan(read_json(tmp_path / "failure.json")["metrics"]["energy"])
    for line in (tmp_path / "metrics.jsonl").read_text().splitlines():
        strict(line)


def test_a_folder_made_for_a_command_that_fails_before_writing_is_removed(tmp_path):
    new = tmp_path / "new"
    with pytest.raises(RuntimeError), own_directory(new):
        raise RuntimeError("refused settings")
    assert not new.exists()
    kept = tmp_path / "kept"  # something was written: the folder and its files stay
    with pytest.raises(RuntimeError), own_directory(kept):
        (kept / "config.yaml").write_text("epochs: 1\n")
        raise RuntimeError("diverged")
    assert (kept / "config.yaml").exists()
    existing = tmp_path / "existing"  # a folder that was there before stays, empty or not
    existing.mkdir()
    with pytest.raises(RuntimeError), own_directory(existing):
        raise RuntimeError("refused settings")
    assert existing.is_dir()
