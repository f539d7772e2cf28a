"""Stacked trials of the trade-off study: a stacked member trains as it would alone (same weights,
Adam state, data order; float64 to rounding, float32 within tolerance), a diverging member fails
alone, and a stacked study writes the records an unstacked one writes."""

from __future__ import annotations

import json

import pytest
import torch

from pclab.studies import tradeoff
from pclab.studies.tradeoff import stacked, training
from pclab.sweep import Stacking, load_records, run_trials
from pclab.train import DivergenceError, prepare


def _members(lams=(0.0, 0.5, 1.0), seeds=(0, 1, 0), way="bp", **overrides):
    """Trial parameters of tiny runs of ``way`` alike but for lam and seed."""
    base = next(p for p in tradeoff.trials(tradeoff.study_config("tiny")) if p["way"] == way)
    return [{**base, "lam": float(lam), "seed": seed, "grid": False, **overrides} for lam, seed in zip(lams, seeds)]


def _runs(members, dtype):
    data = training.trial_data(members[0])
    return [prepare(training.run_config(p).model_copy(update={"dtype": dtype}), data) for p in members]


@pytest.mark.parametrize("way", ["bp", "bpti", "pc"])
@pytest.mark.parametrize("dtype, tol", [("float64", 1e-10), ("float32", 1e-3)])
def test_a_stacked_member_trains_as_it_would_alone(way, dtype, tol):
    """Two epochs of four batches each (different seeds: different data orders; ways (b) and (c)
    re-choose their relaxation each epoch): weights, the chosen relaxations and the per-epoch training
    metrics match the runs trained alone."""
    members = _members(way=way, epochs=2)
    alone, together = _runs(members, dtype), _runs(members, dtype)
    for run, twin in zip(alone, together):  # the same initial weights, from the members' own seeds
        assert all(torch.equal(a, b) for a, b in zip(run.model.parameters(), twin.model.parameters()))
    validation = training.trial_validation(members[0])
    choice = (validation, members[0]["relax_step_sizes"], members[0]["relax_steps"])
    histories = [training.fit(run, *choice, max_batches=4) for run in alone]
    stacked_histories, errors = stacked.fit_stacked(together, *choice, max_batches=4)
    assert errors == [None] * len(members)
    for run, twin, history, twin_history in zip(alone, together, histories, stacked_histories):
        for (name, a), b in zip(run.model.named_parameters(), twin.model.parameters()):
            assert a.dtype == b.dtype == getattr(torch, dtype)
            torch.testing.assert_close(b, a, rtol=tol, atol=tol, msg=name)
        assert [list(h) for h in twin_history] == [list(h) for h in history]
        for h, t in zip(history, twin_history):
            assert t["batches"] == h["batches"] == 4
            assert (t.get("relax_lr"), t.get("relax_steps")) == (h.get("relax_lr"), h.get("relax_steps"))
            for key in (k for k in h if k.startswith("train_")):
                assert t[key] == pytest.approx(h[key], rel=tol, abs=tol)
    # the members really differ (lam, seed): the test compares distinct trainings
    assert not torch.allclose(alone[0].model.edge_modules["z_to_x"].layers[0].linear.weight,
                              alone[2].model.edge_modules["z_to_x"].layers[0].linear.weight)


def test_stacked_adam_state_is_each_members_own():
    """The one Adam over the stacked tensors keeps, in member m's slice, the moments m's own Adam keeps."""
    members = _members(lams=(0.25, 0.75), seeds=(3, 4))
    alone, together = _runs(members, "float64"), _runs(members, "float64")
    for run in alone:
        training.fit(run, max_batches=3)
    trainer = stacked.StackedTrainer(together)
    images = training.prepare_images(together[0].config, together[0].train.images)
    for epoch in range(together[0].config.epochs):  # the batches each member trains on alone
        orders = torch.stack([torch.randperm(len(images), generator=training.epoch_generator(r.config.seed, epoch)) for r in together])
        for start in range(0, 3 * 32, 32):
            index = orders[:, start:start + 32]
            trainer.step(images[index], together[0].train.labels[index])
    for m, run in enumerate(alone):
        for name, p in run.model.named_parameters():
            own, mine = run.rule.optimizer.state[p], trainer.optimizer.state[trainer.model.params[name]]
            torch.testing.assert_close(mine["exp_avg"][m], own["exp_avg"], rtol=1e-9, atol=1e-12)
            torch.testing.assert_close(mine["exp_avg_sq"][m], own["exp_avg_sq"], rtol=1e-9, atol=1e-15)
            assert float(mine["step"]) == float(own["step"]) == 3 * run.config.epochs


def _poison(build, seed):
    """``build_run`` whose run of ``seed`` starts from an encoder that overflows (its loss is inf)."""
    def poisoned(params, data):
        run = build(params, data)
        if params["seed"] == seed:
            with torch.no_grad():
                run.model.amortiser_modules["x_to_z"][0].weight.fill_(1e38)
        return run
    return poisoned


@pytest.mark.parametrize("way", ["bp", "pc"])
def test_a_diverging_member_fails_alone_while_its_siblings_finish(monkeypatch, way):
    members = _members(seeds=(0, 1, 2), way=way)
    monkeypatch.setattr(stacked, "build_run", _poison(training.build_run, 1))
    monkeypatch.setattr(training, "build_run", _poison(training.build_run, 1))
    outcomes = stacked.run_stack(members)
    with pytest.raises(DivergenceError) as alone:
        training.run_trial(members[1])
    assert isinstance(outcomes[1], DivergenceError) and str(outcomes[1]) == str(alone.value)
    assert str(alone.value).startswith("epoch 1: " + str(["energy"] if way == "pc" else ["loss", "mse_x", "ce_y"]) + " not finite")
    for m in (0, 2):
        result, own = outcomes[m], training.run_trial(members[m])
        assert isinstance(result, dict) and list(result) == list(own)
        for key in ("test_accuracy", "recon_mse", "probe_accuracy", "probe_mse", "latent_std"):
            assert result[key] == pytest.approx(own[key], rel=1e-3, abs=1e-3), key
        assert len(result["history"]) == len(own["history"]) == members[m]["epochs"]


def test_stack_groups_partition_the_trials_into_runs_alike_but_for_lam_and_seed():
    trials = tradeoff.trials(tradeoff.study_config("paper"))
    groups = stacked.stack_groups(trials)
    assert sorted(json.dumps(p, sort_keys=True) for g in groups for p in g) == sorted(json.dumps(p, sort_keys=True) for p in trials)
    for group in groups:
        assert len({stacked.stack_key(p) for p in group}) == 1
        assert len(group) == 15  # 5 lam x 3 seeds of one way, complexity and d
    assert len(groups) == 2 * 3 + 2 * 3  # bp on Small and Medium, bpti and pc on Small; 3 d each
    other = [{**trials[0], "way": "ipc"}, {**trials[1], "way": "ipc"}]  # a way that is not stacked: each alone
    assert stacked.stack_groups(other) == [[other[0]], [other[1]]]
    with pytest.raises(ValueError, match="alike"):
        stacked.run_stack([trials[0], {**trials[0], "latent": trials[0]["latent"] + 1}])


def test_a_stacked_study_writes_the_records_an_unstacked_one_writes(tmp_path):
    overrides = {"ways": ["bp", "pc"], "lams": [0.0, 1.0], "seeds": [0, 1], "epochs": 2, "relax_steps": [2]}
    tradeoff.run("tiny", tmp_path / "alone", executor="serial", overrides=overrides)
    tradeoff.run("tiny", tmp_path / "stacked", executor="serial", overrides={**overrides, "stack": True})
    alone, together = load_records(tmp_path / "alone"), load_records(tmp_path / "stacked")
    assert set(alone) == set(together) and len(alone) == 8  # the same trial ids: stacking is not a parameter
    for key, record in alone.items():
        twin = together[key]
        assert record["status"] == twin["status"] == "ok"
        assert list(twin) == list(record) and twin["params"] == record["params"]
        assert list(twin["result"]) == list(record["result"])
        for name, value in record["result"].items():
            if name.endswith("seconds") or name == "history":
                continue
            if isinstance(value, float):
                assert twin["result"][name] == pytest.approx(value, rel=1e-3, abs=1e-3), name
            else:
                assert twin["result"][name] == value, name
        assert [sorted(h) for h in twin["result"]["history"]] == [sorted(h) for h in record["result"]["history"]]


def _twice(params):
    if params["x"] < 0:
        raise ValueError("negative x")
    return {"y": 2 * params["x"]}


def _group_run(group):
    return [ValueError("odd") if p["x"] % 2 else {"y": 2 * p["x"]} for p in group]


def test_run_trials_records_each_member_of_a_group_as_its_own_trial(tmp_path):
    trials = [{"x": x} for x in (1, 2, 3, 4, -1)]
    stacking = Stacking(lambda pending: [[p for p in pending if p["x"] > 0], [p for p in pending if p["x"] <= 0]], _group_run)
    records = run_trials(_twice, trials, tmp_path, executor="serial", stacking=stacking)
    assert [r["status"] for r in records] == ["failed", "ok", "failed", "ok", "failed"]
    assert [r["result"]["y"] for r in records if r["status"] == "ok"] == [4, 8]
    assert records[0]["error"] == "ValueError: odd" and records[4]["error"] == "ValueError: negative x"  # the singleton ran alone
    assert all(set(r) == {"id", "params", "status", "error", "traceback", "seconds"} for r in records if r["status"] == "failed")
    # a group that fails as a whole fails each of its trials; a partition that loses a trial is refused
    broken = Stacking(lambda pending: [list(pending)], lambda group: 1 / 0)
    records = run_trials(_twice, [{"x": 5}, {"x": 6}], tmp_path / "broken", executor="serial", stacking=broken)
    assert [r["error"] for r in records] == ["ZeroDivisionError: division by zero"] * 2
    with pytest.raises(ValueError, match="partition"):
        run_trials(_twice, [{"x": 7}, {"x": 8}], tmp_path / "lost", executor="serial", stacking=Stacking(lambda p: [p[:1]], _group_run))
