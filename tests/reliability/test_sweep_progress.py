"""What a study prints while it runs: one progress line per finished trial, and none of Ray
Tune's own output (its banner, "View detailed results here", the TensorBoard hint) unless asked."""

from __future__ import annotations

import io
import os
import re

import pytest

from pclab.sweep import Progress, run_trials, tune_trial, verbosity
from pclab.train import preset

LINE = re.compile(r"^\[\s*(\d+)/(\d+)\] (\d+) failed, (\d+) running \| (\d+:\d\d) elapsed, ~(\d+:\d\d) left \| (.*): (ok|FAILED .*?)(, [\d.]+ s)?$")


def _square(params: dict) -> dict:
    if params["x"] < 0:
        raise ValueError("negative x")
    return {"y": params["x"] ** 2}


def test_progress_line_counts_done_failed_and_names_the_trial_by_what_varies():
    trials = [{"x": x, "lr": 0.1, "name": n} for x, n in ((1, "a"), (2, "b"), (3, "c"))]
    stream = io.StringIO()
    progress = Progress(trials, stream)
    progress.start()
    progress.start()
    progress.finished({"params": trials[0], "status": "ok", "seconds": 1.25})
    progress.start()
    progress.finished({"params": trials[1], "status": "failed", "error": "ValueError: boom", "seconds": 0.5})
    lines = stream.getvalue().splitlines()
    first, second = (LINE.match(line) for line in lines)
    assert first and second, lines
    assert first.group(1, 2, 3, 4) == ("1", "3", "0", "1") and first.group(7) == "x=1 name=a" and lines[0].endswith("ok, 1.2 s")
    assert second.group(1, 3, 4) == ("2", "1", "1") and "FAILED (ValueError: boom), 0.5 s" in lines[1]


def test_a_serial_study_prints_one_line_per_finished_trial(tmp_path, capsys):
    trials = [{"x": x} for x in (1, -1, 2)]
    records = run_trials(_square, trials, tmp_path, executor="serial")
    assert [r["status"] for r in records] == ["ok", "failed", "ok"]
    err = capsys.readouterr().err.splitlines()
    assert err[0] == f"3 trials to run (0 finished already, skipped); records in {tmp_path / 'trials'}"
    matches = [LINE.match(line) for line in err[1:]]
    assert len(matches) == 3 and all(matches), err
    assert [m.group(1) for m in matches] == ["1", "2", "3"] and matches[-1].group(3) == "1"
    run_trials(_square, trials, tmp_path, executor="serial")  # all finished: nothing printed
    assert capsys.readouterr().err == ""


@pytest.mark.slow
def test_ray_prints_no_banner_by_default_and_its_own_output_with_verbose(tmp_path, capfd):
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    ray = pytest.importorskip("ray")
    base = {**preset("tiny"), "epochs": 1}
    try:
        run_trials(tune_trial, [{"config": base, "overrides": {"seed": s}} for s in (0, 1)], tmp_path / "quiet", executor="ray")
        out, err = capfd.readouterr()
        assert "View detailed results here" not in out + err and "tensorboard" not in (out + err).lower()
        assert "Configuration for experiment" not in out + err
        assert len([line for line in err.splitlines() if LINE.match(line)]) == 2, err
        with verbosity(True):
            run_trials(tune_trial, [{"config": base, "overrides": {"seed": 2}}], tmp_path / "loud", executor="ray")
        out, err = capfd.readouterr()
        assert "View detailed results here" in out + err
    finally:
        if ray.is_initialized():
            ray.shutdown()
