"""Sweeps on an embedded local Ray: a failing trial is recorded and the others go on; a rerun skips
finished trials; the Optuna search runs on the same Ray and extends; the Ray refuses clients without
its token. One Ray start for the module (~15 s)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import pclab
from pclab.sweep import load_records, run_trials, search, tune_trial
from pclab.train import preset

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def local_ray():
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    ray = pytest.importorskip("ray")
    from pclab.sweep import ray_session

    with ray_session():
        yield ray


def test_two_trials_on_ray_one_failing_records_one_result_and_one_failure(tmp_path, local_ray):
    base = preset("tiny")
    trials = [{"config": base, "overrides": {"epochs": 1}}, {"config": base, "overrides": {"epochs": 1, "inference.steps": 0}}]
    records = run_trials(tune_trial, trials, tmp_path, executor="ray")
    assert [r["status"] for r in records] == ["ok", "failed"]
    assert records[0]["result"]["test_accuracy"] > 0.1
    assert "inference.steps: expected greater than or equal to 1, got 0" in records[1]["error"]
    assert len(list((tmp_path / "trials").glob("*.json"))) == 2
    # run again: nothing reruns (the records are untouched)
    stamps = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "trials").glob("*.json")}
    run_trials(tune_trial, trials, tmp_path, executor="ray")
    assert {p.name: p.stat().st_mtime_ns for p in (tmp_path / "trials").glob("*.json")} == stamps


def test_optuna_search_on_ray_records_every_sample(tmp_path, local_ray):
    found = search({**preset("tiny"), "epochs": 1}, tmp_path, samples=2, executor="ray")
    assert found["summary"]["samples"] == 2 and len(load_records(tmp_path)) == 2
    assert found["best"] is not None and set(found["best"]["params"]["overrides"]) == {"inference.lr", "inference.steps", "learning.lr"}


def test_trials_reuse_the_ray_worker_processes(tmp_path, local_ray):
    """A new process per trial would import torch and pclab again (~3 s a trial here)."""
    import json

    cpus = int(local_ray.cluster_resources()["CPU"])
    base = preset("tiny")
    trials = [{"config": base, "overrides": {"epochs": 1, "seed": seed}} for seed in range(cpus + 1)]
    records = run_trials(tune_trial, trials, tmp_path, executor="ray")
    assert all(r["status"] == "ok" for r in records)
    pids = {json.loads(p.read_text().splitlines()[0])["pid"] for p in (tmp_path / "ray").rglob("result.json")}
    assert len(trials) > len(pids) >= 1


def test_a_search_rerun_with_more_samples_on_ray_adds_trials(tmp_path, local_ray):
    config = {**preset("tiny"), "epochs": 1}
    space = {"inference.lr": ("log", 1e-3, 0.5), "learning.lr": ("log", 1e-5, 1e-2)}
    search(config, tmp_path, samples=2, space=space, executor="ray")
    first = {i: r["params"]["overrides"] for i, r in load_records(tmp_path).items()}
    search(config, tmp_path, samples=3, space=space, executor="ray")
    after = {i: r["params"]["overrides"] for i, r in load_records(tmp_path).items()}
    assert len(first) == 2 and len(after) == 3 and {i: after[i] for i in first} == first


@pytest.mark.parametrize("auth, message", [({}, "requires token authentication; set RAY_AUTH_MODE=token"),
                                           ({"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": "0" * 64}, "refused this client's token")])
def test_the_embedded_ray_refuses_a_client_without_its_token(tmp_path, local_ray, auth, message):
    """Its GCS listens on the machine's addresses: the token is what keeps others out."""
    address = local_ray.get_runtime_context().gcs_address
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH")}
    env["PYTHONPATH"] = os.pathsep.join([str(Path(pclab.__file__).resolve().parents[1]), os.environ.get("PYTHONPATH", "")])
    result = subprocess.run([sys.executable, "-m", "pclab", "study", "dynamics", "--preset", "tiny", "--address", address, "--out", str(tmp_path)],
                            env={**env, **auth}, capture_output=True, text=True, timeout=300)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1 and lines[0].startswith(f"error: --address {address}: "), result.stderr
    assert message in lines[0]


def test_stacked_groups_on_ray_write_one_record_per_trial(tmp_path, local_ray):
    """A group of trials trained together is one Ray Tune trial; each of its trials gets its own record,
    as run alone (the trade-off study's stacked way (a) on tiny data)."""
    from pclab.studies import tradeoff
    from pclab.studies.tradeoff import run_stack, run_trial, stack_groups
    from pclab.sweep import Stacking

    trials = [p for p in tradeoff.trials(tradeoff.study_config("tiny", {"epochs": 1})) if p["way"] in ("bp", "pc")]
    records = run_trials(run_trial, trials, tmp_path, executor="ray", stacking=Stacking(stack_groups, run_stack))
    assert [r["status"] for r in records] == ["ok"] * len(trials) == ["ok"] * 6
    assert {r["id"] for r in records} == {p.stem for p in (tmp_path / "trials").glob("*.json")}
    assert all(r["result"]["history"][0]["epoch"] == 1 and "test_accuracy" in r["result"] for r in records)


def test_the_study_profiler_times_empty_trials_on_ray(local_ray):
    from pclab.bench import study

    assert study.ray_startup_seconds(2)["start"] > 0
