"""A run directory: what it holds, resuming from any checkpoint, refusing what does not fit."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch

import pclab.train.loop as loop
from pclab.io import read_json
from pclab.train import read_metrics, train
from pclab.train.loop import RunDirError


def comparable(results: dict) -> str:
    """Results without timings (the only thing allowed to differ between runs)."""
    strip = lambda d: {k: v for k, v in d.items() if "seconds" not in k}  # noqa: E731
    return json.dumps({**strip(results), "history": [strip(h) for h in results["history"]]}, sort_keys=True)


def test_run_directory_holds_config_metrics_checkpoint_telemetry_results(tmp_path, tiny):
    config = tiny("telemetry=true", "telemetry_every=4")
    results = train(config, tmp_path, progress=False)
    assert {"config.yaml", "metrics.jsonl", "checkpoint.pt", "results.json"} <= {p.name for p in tmp_path.iterdir()}
    assert not (tmp_path / "failure.json").exists()
    stored = read_json(tmp_path / "results.json")
    assert {"test_accuracy", "epoch_seconds", "best_test_accuracy"} <= set(stored)
    assert stored["test_accuracy"] == results["test_accuracy"] > 0.3  # well above chance (0.1)
    assert [m["epoch"] for m in read_metrics(tmp_path)] == [1, 2]
    table = pd.read_parquet(tmp_path / "telemetry" / "epoch_001.parquet")
    assert list(table.columns) == ["epoch", "batch", "step", "node", "energy", "error_norm"]
    # one row per batch x step x node: 2 sampled batches (0, 4), T+1 = 6 steps, 2 error nodes
    assert len(table) == 2 * 6 * 2 and set(table["node"]) == {"h1", "y"}


def test_generative_run_reports_reconstruction_error(tmp_path, tiny):
    config = tiny("model.kind=generative_mlp", "model.widths=[8, 64]", "epochs=1", "inference.init=zeros")
    results = train(config, tmp_path, progress=False)
    assert results["recon_mse"] > 0 and "test_accuracy" not in results


def _interrupt_at(monkeypatch, call: int) -> None:
    """Make the ``call``-th learning step raise KeyboardInterrupt (as Ctrl-C would)."""
    prepare, calls = loop.prepare, {"n": 0}

    def prepared(*args, **kwargs):
        run = prepare(*args, **kwargs)
        step = run.rule.step

        def interrupted(batch):
            calls["n"] += 1
            if calls["n"] == call:
                raise KeyboardInterrupt
            return step(batch)

        run.rule.step = interrupted
        return run

    monkeypatch.setattr(loop, "prepare", prepared)


@pytest.mark.parametrize("call", [4, 9, 14])  # epoch 1 mid, epoch 2 first batch, epoch 2 mid (8 batches per epoch)
def test_resume_from_a_mid_epoch_checkpoint_equals_an_uninterrupted_run(tmp_path, tiny, monkeypatch, call):
    config = tiny("checkpoint_every=3", "telemetry=true", "telemetry_every=2")
    reference = train(config, tmp_path / "reference", progress=False)
    with monkeypatch.context() as patch:
        _interrupt_at(patch, call)
        with pytest.raises(KeyboardInterrupt):
            train(config, tmp_path / "run", progress=False)
    assert not (tmp_path / "run" / "results.json").exists()
    resumed = train(config, tmp_path / "run", resume=True, progress=False)
    assert comparable(resumed) == comparable(reference)
    assert comparable(read_json(tmp_path / "run" / "results.json")) == comparable(read_json(tmp_path / "reference" / "results.json"))
    for name in ("epoch_001.parquet", "epoch_002.parquet"):
        assert pd.read_parquet(tmp_path / "run" / "telemetry" / name).equals(pd.read_parquet(tmp_path / "reference" / "telemetry" / name))
    reference_model = torch.load(tmp_path / "reference" / "checkpoint.pt", weights_only=False)["model"]
    resumed_model = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=False)["model"]
    assert all(torch.equal(reference_model[k], resumed_model[k]) for k in reference_model)


def test_resuming_a_finished_run_returns_its_results(tmp_path, tiny):
    config = tiny("epochs=1")
    first = train(config, tmp_path, progress=False)
    assert comparable(train(config, tmp_path, resume=True, progress=False)) == comparable(first)


def test_resume_refuses_a_checkpoint_of_another_configuration(tmp_path, tiny):
    train(tiny("epochs=1"), tmp_path, progress=False)
    with pytest.raises(RunDirError, match="different configuration"):
        train(tiny("epochs=1", "seed=3"), tmp_path, resume=True, progress=False)


def test_a_damaged_checkpoint_is_reported_not_loaded(tmp_path, tiny):
    config = tiny("epochs=1")
    train(config, tmp_path, progress=False)
    data = (tmp_path / "checkpoint.pt").read_bytes()
    (tmp_path / "checkpoint.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(RunDirError, match="checkpoint.pt: checkpoint is damaged or truncated"):
        train(config, tmp_path, resume=True, progress=False)


def test_temporaries_of_a_killed_writer_are_removed_and_no_other_file(tmp_path, tiny):
    (tmp_path / ".checkpoint.pt.pclab-abc123.tmp").write_bytes(b"partial")
    (tmp_path / "telemetry").mkdir()
    (tmp_path / "telemetry" / ".epoch_001.parquet.pclab-x1y2.tmp").write_bytes(b"partial")
    (tmp_path / ".draft.tmp").write_text("someone else's")
    train(tiny("epochs=1"), tmp_path, progress=False)
    assert sorted(p.name for p in tmp_path.rglob(".*.tmp")) == [".draft.tmp"]
