"""A hyper-parameter search run again with more samples adds new trials and keeps the old ones."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from pclab import cli
from pclab.sweep import load_records, search
from pclab.train import preset

SPACE = {"inference.lr": ("log", 1e-3, 0.5), "learning.lr": ("log", 1e-5, 1e-2)}


def _snapshot(out):
    return {i: (r["params"]["overrides"], r["result"]) for i, r in load_records(out).items()}


@pytest.mark.parametrize("seed", [0, 7])
def test_two_then_three_samples_give_three_distinct_trials_the_first_two_unchanged(tmp_path, seed):
    config = {**preset("tiny"), "epochs": 1}
    search(config, tmp_path, samples=2, space=SPACE, executor="serial", seed=seed)
    first = _snapshot(tmp_path)
    stamps = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "trials").glob("*.json")}
    found = search(config, tmp_path, samples=3, space=SPACE, executor="serial", seed=seed)
    after = _snapshot(tmp_path)
    assert len(first) == 2 and len(after) == 3 and found["summary"]["samples"] == 3
    assert {i: after[i] for i in first} == first
    assert {p.name: p.stat().st_mtime_ns for p in (tmp_path / "trials").glob("*.json") if p.name in stamps} == stamps
    points = [tuple(sorted(overrides.items())) for overrides, _ in after.values()]
    assert len(set(points)) == 3


def test_pclab_tune_with_more_samples_extends_the_search(tmp_path):
    runner = CliRunner()
    base = ["tune", "--preset", "tiny", "--set", "epochs=1", "--executor", "serial", "--out", str(tmp_path)]
    assert runner.invoke(cli.app, [*base, "--samples", "2"]).exit_code == 0
    first = _snapshot(tmp_path)
    result = runner.invoke(cli.app, [*base, "--samples", "3"])
    assert result.exit_code == 0, result.output
    assert "3 trials" in result.output
    after = _snapshot(tmp_path)
    assert len(after) == 3 and {i: after[i] for i in first} == first
