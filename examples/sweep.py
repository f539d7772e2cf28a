"""A tiny sweep: 2 x 2 settings through ``pclab.sweep.run_trials``, read back as a pandas table.

Each trial is a JSON-able dict of parameters; ``run_trials`` calls a module-level function on it
and writes one record per trial to ``DIR/trials/<id>.json`` the moment it finishes. Run the same
sweep again and finished trials are read back, not rerun (the script shows this by calling it
twice). ``executor="serial"`` runs the trials in this process; leave it out to run them on Ray.

The grid: learning rule (PC, backprop) x hidden width (32, 64) of an MLP on digits.

Run:  python examples/sweep.py [--quick] [--dir runs/sweep] [--epochs 3]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from typing import Any

import torch

from pclab.sweep import records_frame, run_trials
from pclab.train import train, validate


def trial(params: dict[str, Any]) -> dict[str, Any]:
    """One run: train the MLP of ``params`` and return its test accuracy (a JSON-able dict)."""
    torch.set_num_threads(1)  # tensors this small run fastest on one thread
    config = validate({
        "model": {"kind": "mlp", "widths": [64, params["width"], 10]},
        "inference": {"steps": 8, "lr": 0.1},
        "learning": {"rule": params["rule"], "lr": 3e-3},
        "data": {"dataset": "digits", "batch_size": 32},
        "epochs": params["epochs"],
        "seed": params["seed"],
    }, source=f"trial {params}")
    results = train(config, progress=False)
    return {"test_accuracy": 100 * results["test_accuracy"], "epoch_seconds": results["epoch_seconds"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one epoch per trial, a few seconds")
    parser.add_argument("--dir", help="sweep folder (default: a fresh temporary one)")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    out = args.dir or tempfile.mkdtemp(prefix="pclab-sweep-")
    epochs = 1 if args.quick else args.epochs

    trials = [{"rule": rule, "width": width, "epochs": epochs, "seed": args.seed} for rule in ("pc", "bp") for width in (32, 64)]
    started = time.perf_counter()
    records = run_trials(trial, trials, out, executor="serial")
    first = time.perf_counter() - started
    started = time.perf_counter()
    run_trials(trial, trials, out, executor="serial")  # everything is recorded: nothing reruns
    again = time.perf_counter() - started
    print(f"{len(records)} trials in {out}: {first:.1f} s; the same sweep again: {again:.2f} s")

    table = records_frame(records)  # one row per successful trial: params, results, seconds
    failed = [r for r in records if r["status"] != "ok"]
    if failed:
        print(f"{len(failed)} trials failed, e.g. {failed[0]['error']}")
    print(table[["rule", "width", "test_accuracy", "epoch_seconds"]].round(2).to_string(index=False))
    print("\ntest accuracy (%), rule x width:")
    print(table.pivot(index="rule", columns="width", values="test_accuracy").round(1).to_string())


if __name__ == "__main__":
    main()
