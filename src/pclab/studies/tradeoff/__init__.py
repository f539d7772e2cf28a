"""Study "tradeoff": classification vs reconstruction in a shared latent (REFERENCE 4; seed 000,
Rathjens & Wiskott 2024).

The Rathjens-Wiskott fully-connected family (encoder, decoder, head; Small / Medium / Large;
latent size ``d``) is trained three ways -- (a) their feed-forward model by backprop, (b) the
hybrid PCN by backprop through ``T`` inference steps, (c) the hybrid PCN by PC learning (see
:mod:`.training`) -- over a grid of ``lam`` (the weight of *classification*:
``L = (1 - lam) MSE + lam CE``; the paper's lambda weights reconstruction and equals ``1 - lam``).
Each run reports test accuracy, test reconstruction MSE (label not clamped), and what its latent
holds (:mod:`.probes`). The report (:mod:`.analysis`) shows Pareto fronts, curves vs ``lam``,
reconstructions across ``lam`` and a summary written from the run's numbers.

Run ``pclab study tradeoff --preset quick`` or ``pclab.studies.tradeoff.run("quick", out)``.
"""

from __future__ import annotations

import copy
import functools
import itertools
import time
from pathlib import Path
from typing import Any

from ...sweep import failures, records_frame, run_trials
from ...train.config import MAX_EPOCHS, MAX_STEPS, ConfigError, short
from ..settings import check_settings, preflight
from .analysis import build_report, tidy_table
from .pareto import mark_pareto, pareto_optimal, tradeoff_gap
from .probes import decoder_probe_mse, linear_probe_accuracy
from .training import run_config, run_trial

_COMMON: dict[str, Any] = {
    "ways": ["bp", "bpti", "pc"],
    "lr": 1e-3,              # Adam, as the paper
    "steps": 10,             # inference steps T of ways (b) and (c), train and test
    "latent_lr": 0.005,      # SGD step size of the latent relaxation
    "probe_subset": 5000,    # training latents the probes are fitted on
}

PRESETS: dict[str, dict[str, Any]] = {
    "tiny": {
        **_COMMON,
        "description": "seconds, for tests: scikit-learn digits (8x8), Small, d=2, lam 0 / 0.5 / 1, 3 epochs of 400 images",
        "datasets": ["digits"], "complexities": ["small"], "latents": [2], "lams": [0.0, 0.5, 1.0], "seeds": [0],
        "epochs": 3, "batch_size": 32, "lr": 1e-2, "train_subset": 400, "test_subset": 200, "probe_subset": 400, "steps": 3,
        "grid_slices": [["small", 2]],
    },
    "quick": {
        **_COMMON,
        "description": (
            "the main-job slice, under 10 minutes on 2 CPU cores: MNIST, 4000 stratified training images, 2 epochs, "
            "batch 64, Adam lr 3e-3 (1e-3 learns too little in 126 steps), 1000 test images, probes fitted on 2000 latents, d in {2, 16}, Small and Medium, "
            "lam in {0, .25, .5, .75, 1}, seed 0, T = 10; 60 runs"
        ),
        "datasets": ["mnist"], "complexities": ["small", "medium"], "latents": [2, 16],
        "lams": [0.0, 0.25, 0.5, 0.75, 1.0], "seeds": [0],
        "epochs": 2, "batch_size": 64, "lr": 3e-3, "train_subset": 4000, "test_subset": 1000, "probe_subset": 2000,
        "grid_slices": [["small", 2], ["small", 16], ["medium", 2], ["medium", 16]],
    },
    "full": {
        **_COMMON,
        "description": (
            "the one to cite: MNIST and Fashion-MNIST (pclab split), all 60k training images, 10 epochs, batch 512 "
            "(the paper's settings), d in {2, 4, 8, 16, 32, 64}, Small / Medium / Large, 11 lam, 3 seeds, T = 10; "
            "3564 runs. Budget: roughly 1,500 core-hours in all (weeks on 2 cores): run it on a Ray cluster (--address); "
            "measured per-sample times are on the benchmarks page."
        ),
        "datasets": ["mnist", "fashion-mnist"], "complexities": ["small", "medium", "large"],
        "latents": [2, 4, 8, 16, 32, 64], "lams": [round(0.1 * i, 1) for i in range(11)], "seeds": [0, 1, 2],
        "epochs": 10, "batch_size": 512, "train_subset": None, "test_subset": None,
        "grid_slices": [["small", 2], ["small", 64], ["large", 2], ["large", 64]],
    },
}
"""Study configurations. Keys: datasets, ways, complexities, latents, lams, seeds (the grid);
epochs, batch_size, lr, steps, latent_lr, train_subset, test_subset, probe_subset
(every run); grid_slices ([complexity, d] pairs whose first seed stores reconstructions)."""

_POSITIVE = ("lr", "steps", "latent_lr", "probe_subset", "latents[]", "epochs", "batch_size", "train_subset", "test_subset")
_GRID = ("datasets", "ways", "complexities", "latents", "lams", "seeds")
_PER_RUN = ("epochs", "batch_size", "lr", "steps", "latent_lr", "train_subset", "test_subset", "probe_subset")


def study_config(preset: str, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """The resolved configuration of ``preset`` with ``overrides`` (keys must exist in the preset)."""
    if preset not in PRESETS:
        raise ConfigError(f"unknown tradeoff preset {preset!r}; expected one of {sorted(PRESETS)}")
    config = copy.deepcopy(PRESETS[preset])
    for key, value in (overrides or {}).items():
        if key not in config:
            raise ConfigError(f"unknown tradeoff setting {short(key)}; settings are {sorted(config)}")
        config[key] = value
    check_settings("tradeoff", config, PRESETS, positive=_POSITIVE,
                   limits={"lams[]": (0, 1), "steps": (1, MAX_STEPS), "epochs": (1, MAX_EPOCHS), "latents[]": (1, 100_000)})
    unknown = set(config["ways"]) - {"bp", "bpti", "pc"}
    if unknown:
        raise ConfigError(f"tradeoff study setting ways: expected a subset of ['bp', 'bpti', 'pc'], got {short(config['ways'])}")
    if any(not 0.0 <= float(lam) <= 1.0 for lam in config["lams"]):
        raise ConfigError(f"tradeoff study setting lams: expected values in [0, 1], got {short(config['lams'])}")
    config["preset"] = preset
    return config


_COST = {"small": 1, "medium": 8, "large": 16}
_WAY_COST = {"bp": 1, "bpti": 12, "pc": 7}


def _cost(params: dict[str, Any]) -> float:
    """Rough relative CPU cost of a run, to start the longest runs first."""
    return _COST[params["complexity"]] * _WAY_COST[params["way"]]


def trials(config: dict[str, Any]) -> list[dict[str, Any]]:
    """One parameter dict per run of the grid (see :func:`.training.run_trial`), the costliest
    first (complexity x way) so that parallel workers finish together."""
    first_seed = config["seeds"][0]
    slices = {(c, int(d)) for c, d in config["grid_slices"]}
    out = []
    for dataset, way, complexity, latent, lam, seed in itertools.product(*(config[k] for k in _GRID)):
        params = {"dataset": dataset, "way": way, "complexity": complexity, "latent": int(latent),
                  "lam": float(lam), "seed": int(seed), **{k: config[k] for k in _PER_RUN}}
        params["grid"] = seed == first_seed and (complexity, int(latent)) in slices
        out.append(params)
    return sorted(out, key=_cost, reverse=True)  # stable: grid order within equal cost


def _label(p: dict[str, Any]) -> str:
    return f"{p['dataset']} {p['way']} {p['complexity']} d={p['latent']} lam={p['lam']} seed {p['seed']}"


def run(
    preset: str,
    out: Path,
    address: str | None = None,
    executor: str = "ray",
    overrides: dict[str, Any] | None = None,
) -> Path:
    """Run the study (finished runs are skipped) and write its report; returns ``report.html``.

    Args:
        preset: ``"tiny"``, ``"quick"`` or ``"full"``.
        out: study folder (``trials/`` records, ``tables/``, ``figures/``, ``report.html``).
        address: Ray cluster address (``None``: Ray on this machine).
        executor: ``"ray"`` or ``"serial"``.
        overrides: replace preset settings, e.g. ``{"seeds": [0, 1]}``.
    """
    started = time.time()
    config = study_config(preset, overrides)
    out = Path(out)
    params = trials(config)
    preflight("tradeoff", [(_label(p), functools.partial(run_config, p)) for p in params])
    records = run_trials(run_trial, params, out, address=address, executor=executor)
    return build_report(config, records_frame(records), failures(records), out, started)


__all__ = [
    "PRESETS", "build_report", "decoder_probe_mse", "linear_probe_accuracy", "mark_pareto",
    "pareto_optimal", "run", "run_trial", "study_config", "tidy_table", "tradeoff_gap", "trials",
]
