"""One-at-a-time against stacked trade-off runs: wall time and agreement of two finished run directories.

Run the same preset twice on one idle machine, one after the other, then compare::

    pclab study tradeoff --preset quick --out /tmp/qs-alone
    pclab study tradeoff --preset quick --set stack=true --out /tmp/qs-stack
    python bench/study_side_by_side.py /tmp/qs-alone /tmp/qs-stack --json bench/results/study-quick-side-by-side.json

Wall times are the studies' own (``report.json``: start to report, Ray start-up included); agreement is
the largest absolute difference of each task metric per way over runs matched on their grid point.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import pandas as pd

KEY = ["dataset", "way", "complexity", "latent", "lam", "seed"]
METRICS = ["test_accuracy", "recon_mse", "probe_accuracy", "probe_mse"]


def compare(alone: Path, stacked: Path) -> dict[str, Any]:
    """Wall times, their ratio and the per-way largest metric differences of two run directories."""
    for path in (alone, stacked):
        for needed in ("report.json", "tables/runs.csv"):
            if not (path / needed).is_file():
                raise SystemExit(f"study_side_by_side: expected a finished study run directory with {needed}, got {path}")
    meta = {name: json.loads((path / "report.json").read_text()) for name, path in (("alone", alone), ("stacked", stacked))}
    runs = {name: pd.read_csv(path / "tables" / "runs.csv") for name, path in (("alone", alone), ("stacked", stacked))}
    if len(runs["alone"]) != len(runs["stacked"]):
        raise SystemExit(f"study_side_by_side: expected the same runs in both directories, got {len(runs['alone'])} and {len(runs['stacked'])}")
    both = runs["alone"].merge(runs["stacked"], on=KEY, suffixes=("_alone", "_stacked"))
    differences = {
        way: {m: float((g[f"{m}_alone"] - g[f"{m}_stacked"]).abs().max()) for m in METRICS}
        for way, g in both.groupby("way")
    }
    train = {
        way: {"alone": float(g["train_seconds_alone"].sum()), "stacked": float(g["train_seconds_stacked"].sum())}
        for way, g in both.groupby("way")
    }
    return {
        "commands": {name: m["command"] for name, m in meta.items()},
        "preset": meta["alone"]["preset"],
        "runs": len(both),
        "wall_seconds": {name: m["seconds"] for name, m in meta.items()},
        "speed_up": meta["alone"]["seconds"] / meta["stacked"]["seconds"],
        "train_seconds_per_way": train,
        "largest_difference_per_way": differences,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("alone", type=Path, help="run directory of the one-at-a-time run")
    parser.add_argument("stacked", type=Path, help="run directory of the stacked run (--set stack=true)")
    parser.add_argument("--json", type=Path, help="write the comparison here")
    args = parser.parse_args()
    result = compare(args.alone, args.stacked)
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")


if __name__ == "__main__":
    main()
