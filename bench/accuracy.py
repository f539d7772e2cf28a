"""Accuracy benchmark: train a preset (REFERENCE 7) and record best test accuracy and epoch times.

Usage::

    python bench/accuracy.py pcx-mnist-pc pcx-mnist-bp [--epochs 25] [--threads 1] [--set K=V ...]

Writes ``bench/results/accuracy_<preset>.json`` (atomically) and prints one line per preset.
Not a test: it takes minutes per preset on a CPU.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from pclab.io import write_json
from pclab.studies.report import machine
from pclab.train import apply_overrides, preset, train, validate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("presets", nargs="+")
    parser.add_argument("--epochs", type=int, default=None, help="override the preset's epochs")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="config override K=V")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    for name in args.presets:
        overrides = list(args.overrides) + ([f"epochs={args.epochs}"] if args.epochs else [])
        config = validate(apply_overrides(preset(name), overrides), f"preset {name}")
        started = time.time()
        results = train(config, out=None, progress=False)
        record = {
            "preset": name,
            "overrides": overrides,
            "best_test_accuracy": results["best_test_accuracy"],
            "best_epoch": results["best_epoch"],
            "final_test_accuracy": results["test_accuracy"],
            "epochs": results["epochs"],
            "mean_epoch_seconds": results["epoch_seconds"],
            "wall_seconds": time.time() - started,
            "accuracy_per_epoch": [h["test_accuracy"] for h in results["history"]],
            "epoch_seconds": [h["epoch_seconds"] for h in results["history"]],
            "machine": machine(),
            "torch_threads": torch.get_num_threads(),
        }
        write_json(args.out / f"accuracy_{name}.json", record)
        print(f"{name}: best test accuracy {100 * record['best_test_accuracy']:.2f} % (epoch {record['best_epoch']}), "
              f"{record['mean_epoch_seconds']:.1f} s/epoch, {record['wall_seconds']:.0f} s in all")


if __name__ == "__main__":
    main()
