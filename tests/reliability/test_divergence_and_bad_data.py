"""Divergence stops a run with a diagnosis and keeps the last good checkpoint; bad data is refused."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

import pclab.train.loop as loop
from pclab.data import DataError, synthetic
from pclab.io import read_json
from pclab.sweep import run_trials, tune_trial
from pclab.train import DivergenceError, make_batch, preset, train


def test_exploding_relaxation_names_step_node_layer_and_writes_failure(tmp_path, tiny):
    with pytest.raises(DivergenceError) as err:
        train(tiny("inference.lr=60", "inference.steps=20"), tmp_path, progress=False)
    message = str(err.value)
    assert "epoch 1, batch 0" in message and "inference step" in message and "node 'h1'" in message
    failure = read_json(tmp_path / "failure.json")
    assert failure["kind"] == "divergence" and failure["cause"] == "inference"
    assert failure["node"] == "h1" and failure["layer"] == 0 and failure["step"] >= 1
    assert not (tmp_path / "results.json").exists()


def test_nan_weights_mid_run_keep_the_last_good_checkpoint(tmp_path, tiny, monkeypatch):
    config = tiny("checkpoint_every=4")
    prepare = loop.prepare

    def poisoned(*args, **kwargs):  # the 11th step (epoch 2, batch 2) leaves a NaN weight
        run = prepare(*args, **kwargs)
        step, calls = run.rule.step, {"n": 0}

        def poisoning(batch):
            metrics = step(batch)
            calls["n"] += 1
            if calls["n"] == 11:
                with torch.no_grad():
                    run.model.module("h1", "y").linear.weight[0, 0] = float("nan")
            return metrics

        run.rule.step = poisoning
        return run

    monkeypatch.setattr(loop, "prepare", poisoned)
    with pytest.raises(DivergenceError, match="epoch 2, batch 2"):
        train(config, tmp_path, progress=False)
    failure = read_json(tmp_path / "failure.json")
    assert failure["parameters"] == ["edge_modules.h1_to_y.linear.weight"]
    assert failure["cause"] == "weight update" and failure["last_checkpoint"] == {"epoch": 1, "batch": None}
    state = torch.load(tmp_path / "checkpoint.pt", weights_only=False)
    assert state["position"]["epoch"] == 1 and state["position"]["batch"] == 0
    assert all(torch.isfinite(v).all() for v in state["model"].values())


def test_a_diverging_trial_fails_alone_in_a_sweep(tmp_path):
    base = preset("tiny")
    trials = [{"config": base, "overrides": {"epochs": 1}}, {"config": base, "overrides": {"epochs": 1, "inference.lr": 60.0, "inference.steps": 20}}]
    records = run_trials(tune_trial, trials, tmp_path, executor="serial")
    assert [r["status"] for r in records] == ["ok", "failed"]
    assert records[1]["error"].startswith("DivergenceError: training diverged")


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_nan_or_inf_in_data_is_refused_naming_the_sample(tmp_path, tiny, bad):
    train_set, test_set = synthetic("train"), synthetic("test")
    images = train_set.images.clone()
    images[17, 0, 3, 3] = bad
    with pytest.raises(DataError, match=r"synthetic \(train\): images must be finite.*1 of 1000 samples \(first: index 17\)"):
        train(tiny(), tmp_path, progress=False, data=(replace(train_set, images=images), test_set))
    config = tiny()
    with pytest.raises(DataError, match="make_batch: images must be finite"):
        make_batch(config, images[:32], train_set.labels[:32], 10)


def test_the_per_batch_parameter_check_bounds_the_largest_entry_not_the_norm():
    ok = loop._parameters_ok
    many_fives = torch.full((100,), 5.0)  # L2 norm 50 > limit 10, every entry below it: the exact maxima decide
    assert ok([torch.ones(3, 3), many_fives, torch.empty(0)], 10.0)
    assert ok([], 10.0)
    assert not ok([torch.ones(3), torch.tensor([1.0, 11.0])], 10.0)
    for bad in (float("nan"), float("inf"), -float("inf")):
        assert not ok([torch.ones(3), torch.tensor([0.0, bad])], 1e30)
    assert ok([torch.full((4,), 1e20)], 1e30)  # the norm overflows float32; the exact maxima are 1e20
