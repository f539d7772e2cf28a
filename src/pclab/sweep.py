"""Running many runs (configs x seeds): a study's trials, on Ray Tune or in this process.

A *trial* is a JSON-able dict of parameters; its id is a hash of them, so the same trial run again
is recognised. :func:`run_trials` writes each finished trial to ``<out>/trials/<id>.json`` (status
``ok`` with the result, or ``failed`` with the error) the moment it finishes, so an interrupted
study loses nothing finished and, run again, skips what is already there. A failing trial is
recorded and the others go on.

By default Ray runs embedded on this machine (no set-up, every core used); ``address`` joins an
existing Ray cluster instead. ``executor="serial"`` runs trials in this process (debugging, tests).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from .io import read_json, write_json

TrialFn = Callable[[dict[str, Any]], dict[str, Any]]


def trial_id(params: dict[str, Any]) -> str:
    """A stable 12-hex-digit id of a parameter dict."""
    blob = json.dumps(params, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:12]


def _record(out: Path, params: dict[str, Any], fn: TrialFn, threads: int | None) -> dict[str, Any]:
    """Run one trial and persist its record (never raises)."""
    if threads:
        import torch

        torch.set_num_threads(threads)
    start = time.time()
    record: dict[str, Any] = {"id": trial_id(params), "params": params}
    try:
        record.update(status="ok", result=fn(params))
    except Exception as err:  # a failed trial is data, not a crash of the study
        record.update(status="failed", error=f"{type(err).__name__}: {err}", traceback=traceback.format_exc())
    record["seconds"] = time.time() - start
    write_json(out / "trials" / f"{record['id']}.json", record)
    return record


def load_records(out: str | os.PathLike) -> dict[str, dict[str, Any]]:
    """Finished trial records under ``out/trials``, by id. A damaged record is reported and ignored
    (the trial reruns)."""
    records = {}
    folder = Path(out) / "trials"
    for path in sorted(folder.glob("*.json")) if folder.exists() else []:
        try:
            record = read_json(path)
        except ValueError as err:
            print(f"warning: {err}")
            continue
        records[record["id"]] = record
    return records


def run_trials(
    fn: TrialFn,
    trials: Sequence[dict[str, Any]],
    out: str | os.PathLike,
    address: str | None = None,
    executor: str = "ray",
    cpus_per_trial: int = 1,
    retry_failed: bool = False,
) -> list[dict[str, Any]]:
    """Run every trial not finished yet; return the records of all trials, in ``trials`` order.

    Args:
        fn: ``params -> result dict`` (JSON-able). Must be importable by Ray workers (a module-level
            function).
        trials: parameter dicts.
        out: study folder; records go to ``out/trials``.
        address: Ray cluster address (``None``: an embedded local Ray).
        executor: ``"ray"`` or ``"serial"``.
        cpus_per_trial: CPUs Ray reserves per trial (also torch's thread count in the trial).
        retry_failed: run trials recorded as failed again.
    """
    if executor not in ("ray", "serial"):
        raise ValueError(f"executor must be 'ray' or 'serial', got {executor!r}")
    out = Path(out)
    ids = [trial_id(p) for p in trials]
    if len(set(ids)) != len(ids):
        raise ValueError("two trials have identical parameters; add a distinguishing field (e.g. seed)")
    done = load_records(out)
    pending = [p for p, i in zip(trials, ids) if i not in done or (retry_failed and done[i]["status"] != "ok")]
    if pending:
        if executor == "serial":
            for params in pending:
                _record(out, params, fn, None)
        else:
            _run_on_ray(fn, pending, out, address, cpus_per_trial)
    done = load_records(out)
    missing = [i for i in ids if i not in done]
    if missing:
        raise RuntimeError(f"{len(missing)} trials left no record in {out / 'trials'} (ids {missing[:5]}...)")
    return [done[i] for i in ids]


def _run_on_ray(fn: TrialFn, pending: list[dict[str, Any]], out: Path, address: str | None, cpus: int) -> None:
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import ray
    from ray import tune

    started_here = not ray.is_initialized()
    if started_here:
        ray.init(address=address, include_dashboard=False, log_to_driver=False, logging_level="ERROR",
                 ignore_reinit_error=True)
    out_abs = out.resolve()

    def trainable(config: dict[str, Any]) -> dict[str, Any]:
        record = _record(out_abs, config["trial"], fn, cpus)
        return {"ok": record["status"] == "ok"}

    try:
        tuner = tune.Tuner(
            tune.with_resources(trainable, {"cpu": cpus}),
            param_space={"trial": tune.grid_search(pending)},
            run_config=tune.RunConfig(
                name="ray", storage_path=str(out_abs / "ray"), verbose=0,
                failure_config=tune.FailureConfig(max_failures=0),
            ),
        )
        tuner.fit()
    finally:
        if started_here:
            ray.shutdown()


def records_frame(records: Sequence[dict[str, Any]]):
    """A tidy table: one row per finished ``ok`` trial, parameters and result columns side by side."""
    import pandas as pd

    rows = [{**r["params"], **r["result"], "seconds": r["seconds"]} for r in records if r["status"] == "ok"]
    return pd.DataFrame(rows)


def failures(records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The failed records (id, params, error)."""
    return [{"id": r["id"], "params": r["params"], "error": r["error"]} for r in records if r["status"] != "ok"]
