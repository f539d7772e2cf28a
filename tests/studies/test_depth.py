"""The depth study end to end on its tiny preset (serial, digits data)."""

from __future__ import annotations

import pandas as pd

from pclab.studies import depth


def test_depth_study_tiny_preset_writes_report_and_tables(tmp_path):
    report = depth.run("tiny", tmp_path, executor="serial")
    assert report == tmp_path / "report.html" and report.exists()
    html = report.read_text()
    for text in ("Accuracy vs depth", "Diagnostics", "muPC", "Summary (from this run"):
        assert text in html
    accuracy = pd.read_csv(tmp_path / "tables" / "accuracy.csv")
    preset = depth.PRESETS["tiny"]
    assert set(accuracy.variant) == set(preset["variants"])
    assert set(accuracy.depth) == set(preset["depths"])
    assert accuracy["median"].between(0, 100).all()
    gaps = pd.read_csv(tmp_path / "tables" / "gap_to_bp.csv")
    assert "bp" not in set(gaps.variant) and len(gaps) == len(accuracy) - len(preset["depths"])
    diag = pd.read_csv(tmp_path / "tables" / "diagnostics_digits.csv")
    assert set(diag.stage) == {"init", "trained"}
    init_pc = diag[(diag.variant == "pc") & (diag.stage == "init")].sort_values("layer")
    # feed-forward init: the output layer errs at step 0, the error walks down one layer per step
    n = preset["diagnostic_depth"]
    assert init_pc.first_error_step.tolist() == [n - 1 - layer for layer in range(n)]
    assert (diag[diag.variant == "bp"].grad_norm > 0).all()
    mupc = pd.read_csv(tmp_path / "tables" / "mupc.csv")
    assert set(mupc.parameterisation) == {"mupc", "standard"}
    for figure in ("accuracy_vs_depth", "mupc", "error_heatmap_digits_init", "grad_norm_digits_trained"):
        assert (tmp_path / "figures" / f"{figure}.png").exists()
    assert not (tmp_path / "tables" / "failures.csv").exists()


def test_rerun_skips_finished_trials(tmp_path):
    overrides = {"depths": [3], "variants": ["pc", "bp"], "mupc": {"runs": [["mupc", "pc"]]}}
    depth.run("tiny", tmp_path, executor="serial", overrides=overrides)
    stamps = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "trials").glob("*.json")}
    assert len(stamps) == 3
    depth.run("tiny", tmp_path, executor="serial", overrides=overrides)
    assert {p.name: p.stat().st_mtime_ns for p in (tmp_path / "trials").glob("*.json")} == stamps
