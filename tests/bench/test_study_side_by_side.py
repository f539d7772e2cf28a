"""bench/study_side_by_side.py end to end on two synthetic run directories."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd

SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "study_side_by_side.py"


def _run_dir(path: Path, seconds: float, accuracy: list[float], command: str) -> Path:
    (path / "tables").mkdir(parents=True)
    rows = [{"dataset": "mnist", "way": way, "complexity": "small", "latent": 2, "lam": lam, "seed": 0, "test_accuracy": a,
             "recon_mse": 0.1, "probe_accuracy": 0.5, "probe_mse": 0.2, "train_seconds": 10.0}
            for (way, lam), a in zip([("bp", 0.0), ("bp", 1.0), ("pc", 0.5)], accuracy)]
    pd.DataFrame(rows).to_csv(path / "tables" / "runs.csv", index=False)
    (path / "report.json").write_text(json.dumps({"command": command, "preset": "tiny", "seconds": seconds}))
    return path


def test_wall_times_ratio_and_largest_differences(tmp_path: Path) -> None:
    alone = _run_dir(tmp_path / "alone", 300.0, [0.5, 0.9, 0.8], "pclab study tradeoff --preset tiny")
    stacked = _run_dir(tmp_path / "stacked", 100.0, [0.5, 0.85, 0.8], "pclab study tradeoff --preset tiny --set stack=true")
    out = tmp_path / "side.json"
    result = subprocess.run([sys.executable, str(SCRIPT), str(alone), str(stacked), "--json", str(out)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    record = json.loads(out.read_text())
    assert record["speed_up"] == 3.0 and record["runs"] == 3
    assert abs(record["largest_difference_per_way"]["bp"]["test_accuracy"] - 0.05) < 1e-9
    assert record["largest_difference_per_way"]["pc"]["test_accuracy"] == 0.0
    assert record["train_seconds_per_way"]["bp"] == {"alone": 20.0, "stacked": 20.0}


def test_different_runs_are_refused_in_one_line(tmp_path: Path) -> None:
    alone = _run_dir(tmp_path / "alone", 300.0, [0.5, 0.9, 0.8], "a")
    stacked = _run_dir(tmp_path / "stacked", 100.0, [0.5, 0.85], "b")
    result = subprocess.run([sys.executable, str(SCRIPT), str(alone), str(stacked)], capture_output=True, text=True)
    assert result.returncode == 1 and result.stderr.strip().count("\n") == 0
    assert "expected the same runs in both directories, got 3 and 2" in result.stderr


def test_a_directory_without_a_finished_run_is_refused_in_one_line(tmp_path: Path) -> None:
    alone = _run_dir(tmp_path / "alone", 300.0, [0.5, 0.9, 0.8], "a")
    result = subprocess.run([sys.executable, str(SCRIPT), str(alone), str(tmp_path / "nothing")], capture_output=True, text=True)
    assert result.returncode == 1 and result.stderr.strip().count("\n") == 0
    assert "expected a finished study run directory with report.json, got" in result.stderr
