"""Where a training step of a study's trials goes: fixed per-step cost against matrix products.

For every kind of trial of a preset (dynamics: each family and rule at the reference horizon
``T_ref``; clarity: each architecture and rule, and the width test's rules at its smallest and
largest width; seed 0), one training step is timed at the trial's batch and at 1/32 of it. The part
that does not grow with the batch (Python, dispatch, kernel launches: what running trials as one
stacked model could share out) and the step's matrix products replayed alone come from
:func:`pclab.bench.study.step_costs`; convolutions are not matrix products there, so a
convolutional step's products share is small by construction. One torch thread, as a study trial
runs. (The trade-off study: ``pclab bench study tradeoff``; the depth study:
``python bench/depth_cost.py --shares``.) Usage::

    python bench/step_shares.py dynamics --preset standard --json bench/results/step-shares-dynamics.json
    python bench/step_shares.py clarity --preset standard --json bench/results/step-shares-clarity.json
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from pclab.bench.study import step_costs
from pclab.io import write_json
from pclab.train import RunConfig, build_rule, load_data, make_batch, prepare, validate


def dynamics_kinds(preset: str) -> Iterator[tuple[str, RunConfig, Any]]:
    """``(name, config, make(b) -> step)`` of each dynamics (family, rule) at ``T_ref``, seed 0."""
    from pclab.studies.dynamics.presets import resolve, trials
    from pclab.studies.dynamics.trial import build, load_split, run_config

    spec = resolve(preset)
    seen: set[str] = set()
    for params in trials(spec, "unused"):
        name = f"{params['family']}/{params['rule']}"
        if name in seen or params["seed"] != spec["seeds"][0] or params["T"] != spec["T_ref"]:
            continue
        seen.add(name)
        config = run_config(params)
        data = load_split(config.data.dataset, "train", config.data.batch_size, 0)
        model = build(config, tuple(data.images.shape[1:]), data.classes)
        yield name, config, _maker(config, build_rule(config, model, 100), data.images, data.labels, data.classes)


def clarity_kinds(preset: str) -> Iterator[tuple[str, RunConfig, Any]]:
    """``(name, config, make(b) -> step)`` of each clarity architecture and rule, and of the width
    test's rules at its smallest and largest width; seed 0."""
    from pclab.studies.clarity.study import resolve, trials

    config_all = resolve(preset)
    widths = config_all["width_test"]["widths"]
    seen: set[str] = set()
    for params in trials(config_all):
        if params["seed"] != config_all["seeds"][0]:
            continue
        if params["kind"] == "model" and params.get("trained") and "train" in params["source"]:
            name, data = params["label"], params["source"]["train"]
        elif params["kind"] == "width" and params["rule"] != "untrained" and params["width"] in (min(widths), max(widths)):
            name, data = f"width {params['width']} {params['rule']}", params["train"]
        else:
            continue
        if name in seen:
            continue
        seen.add(name)
        config = validate(data, "clarity model")
        train, _ = load_data(config)
        run = prepare(config, (train.subset(config.data.batch_size, seed=0), train.subset(8, seed=1)))
        yield name, config, _maker(config, run.rule, run.train.images, run.train.labels, run.classes)


def _maker(config: RunConfig, rule: Any, images: torch.Tensor, labels: torch.Tensor, classes: int):
    def make(b: int):
        batch = make_batch(config, images[:b], labels[:b], classes)
        return lambda: rule.step(batch)
    return make


def shares(study: str, preset: str) -> dict[str, dict[str, float]]:
    """Step costs (:func:`pclab.bench.study.step_costs`) of each kind of trial, with the fixed and
    products shares of a step."""
    torch.set_num_threads(1)
    kinds = {"dynamics": dynamics_kinds, "clarity": clarity_kinds}[study](preset)
    out: dict[str, dict[str, float]] = {}
    for name, config, make in kinds:
        costs = step_costs(make, config.data.batch_size)
        out[name] = {**costs, "fixed_share": costs["fixed"] / costs["step"], "products_share": costs["products"] / costs["step"]}
        print(f"{name:46s} step {costs['step'] * 1e3:7.1f} ms  fixed {out[name]['fixed_share']:4.0%}  "
              f"products {out[name]['products_share']:4.0%}", flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("study", choices=["dynamics", "clarity"])
    parser.add_argument("--preset", default="standard", help="the study's preset (default standard)")
    parser.add_argument("--json", type=Path, default=None, help="write the result here")
    args = parser.parse_args()
    result = {"study": args.study, "preset": args.preset, "threads": 1, "torch": torch.__version__, "steps": shares(args.study, args.preset)}
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        write_json(args.json, result)


if __name__ == "__main__":
    main()
