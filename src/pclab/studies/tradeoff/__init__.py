"""Study "tradeoff": classification vs reconstruction in a shared latent (REFERENCE 4; seed 000,
Rathjens & Wiskott 2024).

The Rathjens-Wiskott fully-connected family (encoder, decoder, head; Small / Medium / Large;
latent size ``d``) is trained three ways -- (a) their feed-forward model by backprop, (b) the
hybrid PCN by backprop through ``T`` inference steps, (c) the hybrid PCN by PC learning (see
:mod:`.training`) -- over a grid of ``lam`` (the weight of *classification*:
``L = (1 - lam) MSE + lam CE``; the paper's lambda weights reconstruction and equals ``1 - lam``).
Each run reports test accuracy, test reconstruction MSE (label not clamped), what its latent
holds (:mod:`.probes`) and, for ways (b) and (c), what the test-time relaxation does. The report
(:mod:`.analysis`) has the shape of every study's report: Findings written from the run's numbers
(how the fronts' hypervolume against a fixed reference point changes with ``d`` and model size,
paired over seeds; each PC way's accuracy against backprop; the test-time relaxation), the Pareto
fronts as key figure, curves vs ``lam``, reconstructions across ``lam``, statements and tables.

Run ``pclab study tradeoff --preset quick`` or ``pclab.studies.tradeoff.run("quick", out)``;
``--set stack=true`` trains the runs of way (a) that differ only in ``lam`` and seed as one stacked
model (:mod:`.stacked`).
"""

from __future__ import annotations

import copy
import functools
import itertools
import time
from pathlib import Path
from typing import Any

from ...sweep import Stacking, failures, records_frame, run_trials
from ...train.config import MAX_EPOCHS, MAX_STEPS, ConfigError, short
from ..settings import check_settings, preflight
from .analysis import build_report, tidy_table
from .pareto import hypervolume, mark_pareto, pareto_optimal, tradeoff_gap
from .probes import decoder_probe_mse, linear_probe_accuracy
from .stacked import run_stack, stack_groups
from .training import choose_relaxation, precisions_for, run_config, run_trial

_COMMON: dict[str, Any] = {
    "ways": ["bp", "bpti", "pc"],
    "lr": 1e-3,              # Adam, as the paper
    "batch_size": 512,       # as the paper
    "validation": 500,       # training images set aside to choose the relaxation (every way trains without them)
    "relax_step_sizes": [0.003, 0.01, 0.03, 0.1, 0.3, 1.0],  # latent SGD step x largest clamped precision
    "relax_steps": [5, 10, 20],                              # candidate T of ways (b) and (c)
    "probe_subset": 5000,    # training latents the probes are fitted on
    "exclude": [],           # runs left out of the grid (see PRESETS)
    "stack": False,          # train runs alike but for lam and seed as one stacked model (.stacked; every way)
}

PRESETS: dict[str, dict[str, Any]] = {
    "tiny": {
        **_COMMON,
        "description": "seconds, for tests: scikit-learn digits (8x8), Small, d=2, lam 0 / 0.5 / 1, 3 epochs of 400 images",
        "datasets": ["digits"], "complexities": ["small"], "latents": [2], "lams": [0.0, 0.5, 1.0], "seeds": [0],
        "epochs": 3, "batch_size": 32, "lr": 1e-2, "validation": 100, "train_subset": 400, "test_subset": 200, "probe_subset": 400,
        "relax_step_sizes": [0.01, 0.1, 1.0], "relax_steps": [2, 4],
        "grid_slices": [["small", 2]],
    },
    "quick": {
        **_COMMON,
        "description": (
            "the main-job slice: MNIST, all training images but the 500 of the validation split, the full test set, 5 epochs, "
            "batch 512, Adam lr 3e-3 (the paper's 1e-3 needs 4 epochs for 95 % on Medium, way (a)), d in {2, 32}, lam in {0, .5, 1}, "
            "seed 0; (a) on Small and Medium, (b) and (c) on Small plus the Medium, d = 32, lam = 1 point (the accuracy check); "
            "relaxation chosen from T in {4, 8}; 26 runs; probes fitted on 2000 latents"
        ),
        "datasets": ["mnist"], "complexities": ["small", "medium"], "latents": [2, 32],
        "lams": [0.0, 0.5, 1.0], "seeds": [0],
        "epochs": 5, "lr": 3e-3, "train_subset": None, "test_subset": None, "probe_subset": 2000,
        "relax_steps": [4, 8],
        "exclude": [{"ways": ["bpti", "pc"], "complexities": ["medium"], "lams": [0.0, 0.5]},
                    {"ways": ["bpti", "pc"], "complexities": ["medium"], "latents": [2]}],
        "grid_slices": [["small", 2], ["small", 32], ["medium", 2], ["medium", 32]],
    },
    "paper": {
        **_COMMON,
        "description": (
            "the paper's settings on one 2-core machine: MNIST, all training images but the 500 of the validation split, the "
            "full test set, 10 epochs, batch 512, Adam 1e-3, inputs in [-1, 1]; d in {2, 4, 16}, lam in {0, .25, .5, .75, 1}, "
            "seeds 0-2; (a) on Small and Medium, (b) and (c) on Small; relaxation chosen from T in {4, 8, 16}; 180 runs. "
            "Budget: about 1-2 hours on 2 cores, sized from measured CPU time per epoch (the benchmarks page)."
        ),
        "datasets": ["mnist"], "complexities": ["small", "medium"], "latents": [2, 4, 16],
        "lams": [0.0, 0.25, 0.5, 0.75, 1.0], "seeds": [0, 1, 2],
        "epochs": 10, "train_subset": None, "test_subset": None,
        "grid_slices": [["small", 2], ["small", 16], ["medium", 2], ["medium", 16]],
        "relax_steps": [4, 8, 16],
        "exclude": [{"ways": ["bpti", "pc"], "complexities": ["medium"]}],
    },
    "full": {
        **_COMMON,
        "description": (
            "for a Ray cluster or a GPU: MNIST and Fashion-MNIST (pclab split), all training images but the validation split, "
            "10 epochs, batch 512, Adam 1e-3 (the paper's settings), d in {2, 4, 8, 16, 32, 64}, Small / Medium / Large, 11 lam, "
            "3 seeds; 3564 runs. Budget: roughly 1,500 core-hours in all (weeks on 2 cores): run it on a Ray cluster "
            "(--address); measured per-sample times are on the benchmarks page."
        ),
        "datasets": ["mnist", "fashion-mnist"], "complexities": ["small", "medium", "large"],
        "latents": [2, 4, 8, 16, 32, 64], "lams": [round(0.1 * i, 1) for i in range(11)], "seeds": [0, 1, 2],
        "epochs": 10, "train_subset": None, "test_subset": None,
        "grid_slices": [["small", 2], ["small", 64], ["large", 2], ["large", 64]],
    },
}
"""Study configurations. Keys: datasets, ways, complexities, latents, lams, seeds (the grid);
epochs, batch_size, lr, validation, relax_step_sizes, relax_steps, train_subset, test_subset,
probe_subset (every run); grid_slices ([complexity, d] pairs whose first seed stores
reconstructions); exclude (a list of {<grid key>: [values], ...}: a run matching every key of
one entry is left out); stack (train the runs of a stacked way that differ only in lam and seed
as one stacked model, :mod:`.stacked`: the same records, less per-step overhead; not part of a
run's parameters, so runs finished either way are skipped either way)."""

_POSITIVE = ("lr", "validation", "relax_step_sizes[]", "relax_steps[]", "probe_subset", "latents[]", "epochs", "batch_size",
             "train_subset", "test_subset")
_GRID = ("datasets", "ways", "complexities", "latents", "lams", "seeds")
_PER_RUN = ("epochs", "batch_size", "lr", "validation", "relax_step_sizes", "relax_steps", "train_subset", "test_subset", "probe_subset")


def study_config(preset: str, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """The resolved configuration of ``preset`` with ``overrides`` (keys must exist in the preset)."""
    if preset not in PRESETS:
        raise ConfigError(f"unknown tradeoff preset {preset!r}; expected one of {sorted(PRESETS)}")
    config = copy.deepcopy(PRESETS[preset])
    for key, value in (overrides or {}).items():
        if key not in config:
            raise ConfigError(f"unknown tradeoff setting {short(key)}; settings are {sorted(config)}")
        config[key] = value
    check_settings("tradeoff", config, PRESETS, positive=_POSITIVE, open_keys=("exclude",),  # exclude: checked below
                   limits={"lams[]": (0, 1), "relax_steps[]": (1, MAX_STEPS), "epochs": (1, MAX_EPOCHS), "latents[]": (1, 100_000)})
    unknown = set(config["ways"]) - {"bp", "bpti", "pc"}
    if unknown:
        raise ConfigError(f"tradeoff study setting ways: expected a subset of ['bp', 'bpti', 'pc'], got {short(config['ways'])}")
    if any(not 0.0 <= float(lam) <= 1.0 for lam in config["lams"]):
        raise ConfigError(f"tradeoff study setting lams: expected values in [0, 1], got {short(config['lams'])}")
    for i, rule in enumerate(config["exclude"]):
        if (not isinstance(rule, dict) or not rule or set(rule) - set(_KEY)
                or not all(isinstance(values, list) for values in rule.values())):
            raise ConfigError(f"tradeoff study setting exclude[{i}]: expected {{<grid key, one of {sorted(_KEY)}>: [values], ...}}, "
                              f"got {short(rule)}")
    config["preset"] = preset
    return config


_KEY = {"datasets": "dataset", "ways": "way", "complexities": "complexity", "latents": "latent", "lams": "lam", "seeds": "seed"}
_COST = {"small": {"bp": 1, "bpti": 14, "pc": 15}, "medium": {"bp": 6, "bpti": 40, "pc": 11}, "large": {"bp": 18, "bpti": 120, "pc": 33}}
"""Relative training cost per image (small/medium: measured at batch 512 and T = 10; large: x3 medium)."""


def _cost(params: dict[str, Any]) -> float:
    """Rough relative CPU cost of a run, to start the longest runs first."""
    return _COST[params["complexity"]][params["way"]]


def _excluded(params: dict[str, Any], exclude: list[dict[str, Any]]) -> bool:
    """Whether a run matches every key of one of the ``exclude`` entries."""
    return any(all(params[_KEY[k]] in values for k, values in rule.items()) for rule in exclude)


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
        if not _excluded(params, config["exclude"]):
            out.append(params)
    return sorted(out, key=_cost, reverse=True)  # stable: grid order within equal cost


def _stacks(pending: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """The groups of runs trained together (:func:`.stacked.stack_groups`), the costliest first."""
    return sorted(stack_groups(pending), key=lambda group: sum(map(_cost, group)), reverse=True)


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
        preset: ``"tiny"``, ``"quick"``, ``"paper"`` or ``"full"``.
        out: study folder (``trials/`` records, ``tables/``, ``figures/``, ``report.html``).
        address: Ray cluster address (``None``: Ray on this machine).
        executor: ``"ray"`` or ``"serial"``.
        overrides: replace preset settings, e.g. ``{"seeds": [0, 1]}`` or ``{"stack": True}``.
    """
    started = time.time()
    config = study_config(preset, overrides)
    out = Path(out)
    params = trials(config)
    preflight("tradeoff", [(_label(p), functools.partial(run_config, p)) for p in params])
    stacking = Stacking(_stacks, run_stack) if config["stack"] else None
    records = run_trials(run_trial, params, out, address=address, executor=executor, stacking=stacking)
    return build_report(config, records_frame(records), failures(records), out, started)


__all__ = [
    "PRESETS", "build_report", "choose_relaxation", "decoder_probe_mse", "hypervolume", "linear_probe_accuracy", "mark_pareto",
    "pareto_optimal", "precisions_for", "run", "run_stack", "run_trial", "stack_groups", "study_config", "tidy_table", "tradeoff_gap",
    "trials",
]
