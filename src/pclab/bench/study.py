"""``pclab bench study tradeoff``: where a study preset's wall time goes, measured on timed slices.

A study is many small runs. This profiler runs, in this process, one representative run of each
*kind* of the preset's runs (dataset, way, complexity, ``d``; ``lam`` and seed do not change the
cost) with each epoch cut to ``batches`` batches, and splits its wall time into phases:

* ``startup`` -- a fresh Python importing torch and pclab (a subprocess; every Ray worker pays it
  once), and with ``--ray`` running as many empty trials as workers on the embedded Ray (its start,
  Ray Tune, the workers' start, its shutdown);
* ``data`` -- loading the data set from pclab's cache (``data_cold``: the first load in a process,
  once per worker) and the run's splits (every run);
* ``build`` -- model and learning rule (the trade-off study compiles nothing; ``build_once``: what
  the first model built in a process costs more than later ones);
* ``epoch_setup`` -- per epoch, outside the batch loop: the PC ways' choice of relaxation;
* ``batches`` -- the training batches. What one step costs is split two ways, on steps timed
  alone at the run's batch size ``B`` and at ``b = max(2, B / 32)``: ``fixed_ms``, the cost a step
  has whatever its batch size (the intercept of the line through the two: Python, dispatch, kernel
  launches, the optimiser's step on small tensors) -- the *per-operation overhead* that running
  trials stacked shares out -- and ``products_ms``, the step's matrix products alone (captured at the
  ATen level from one step, then replayed back to back on tensors of their shapes, best of several
  repeats). The rest is elementwise arithmetic, which grows with the batch like the products. A kind
  whose fixed cost is at least half its step is *overhead-bound*; otherwise it is bound by
  arithmetic (products and elementwise work), which stacking does not reduce;
* ``relaxation``, ``evaluate``, ``probes``, ``grid`` -- measuring the trained run (at full size: not
  sliced);
* ``record`` -- writing the run's record.

The run of a kind is then extrapolated to the preset: ``epochs x (epoch_setup + batches_per_epoch x
per_batch)`` plus the unsliced phases, times the runs of that kind. With ``--stack`` the kinds of a
stacked way run as stacks (:mod:`pclab.studies.tradeoff.stacked`): the representative is a whole
stack, its time shared by its members. The totals are the preset's work in worker-seconds; its wall
time on ``W`` workers (``--workers``) is estimated as the start-up plus the larger of that over ``W``
and the longest single run or stack (which one worker runs alone).
"""

from __future__ import annotations

import argparse
import functools
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from ..io import write_json
from .hardware import BenchError

PRODUCTS = ("mm", "addmm", "bmm", "baddbmm")
"""ATen matrix products a step's arithmetic is counted by (in-place and ``out=`` forms included)."""

MEASURING = ("relaxation", "evaluate", "probes", "grid")
"""Phases of measuring a trained run (:func:`pclab.studies.tradeoff.training.measure`)."""


class PhaseClock:
    """A :data:`pclab.studies.tradeoff.training.Phase`: wall seconds per phase name, summed."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start


# ------------------------------------------------------------------------------------------ start-up
def startup_seconds(modules: Sequence[str] = ("torch", "pclab.studies.tradeoff")) -> dict[str, float]:
    """``process``: wall seconds of a fresh Python that imports ``modules`` and exits; ``imports``:
    the imports alone (measured inside it)."""
    code = ("import time; t = time.perf_counter()\n" + "".join(f"import {m}\n" for m in modules)
            + "print(time.perf_counter() - t)")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parents[2]), os.environ.get("PYTHONPATH", "")])}
    start = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True, env=env, timeout=300)
    return {"process": time.perf_counter() - start, "imports": float(out.stdout.strip().splitlines()[-1])}


def noop_trial(params: dict[str, Any]) -> dict[str, Any]:
    """A trial that does nothing (what running trials on Ray costs without their work)."""
    return {}


def ray_startup_seconds(workers: int = 2) -> dict[str, float]:
    """``start``: the wall seconds :func:`pclab.sweep.run_trials` takes on the embedded Ray for
    ``workers`` trials that do nothing (Ray's start-up, Ray Tune's set-up, worker processes started
    and importing pclab, records written, Ray's shutdown): the fixed cost of a study on Ray."""
    from ..sweep import run_trials

    with tempfile.TemporaryDirectory() as folder:
        start = time.perf_counter()
        run_trials(noop_trial, [{"noop": i} for i in range(workers)], folder, executor="ray")
        return {"start": time.perf_counter() - start}


# ------------------------------------------------------------------------------------------ products
def capture_products(step: Callable[[], Any]) -> list[tuple[str, list[tuple[int, ...]], torch.dtype, torch.device]]:
    """The matrix products (:data:`PRODUCTS`) ``step()`` executes, in order: ``(op, operand shapes,
    dtype, device)``; for ``addmm``/``baddbmm`` the operands are the two multiplied."""
    from torch.utils._python_dispatch import TorchDispatchMode

    seen: list[tuple[str, list[tuple[int, ...]], torch.dtype, torch.device]] = []

    class Capture(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            name = func._overloadpacket.__name__.rstrip("_")
            if name in PRODUCTS:
                operands = args[1:3] if name in ("addmm", "baddbmm") else args[:2]
                seen.append((name, [tuple(t.shape) for t in operands], operands[0].dtype, operands[0].device))
            return func(*args, **(kwargs or {}))

    with Capture():
        step()
    return seen


def products_seconds(products: Sequence[tuple[str, list[tuple[int, ...]], torch.dtype, torch.device]], repeats: int = 20) -> float:
    """Seconds the ``products`` take back to back (each as ``torch.mm``/``torch.bmm`` into a
    preallocated output), best of ``repeats``: the step's arithmetic without the rest of the step."""
    from .hardware import clock

    if not products:
        return 0.0
    calls = []
    for _, (a, b), dtype, device in products:
        x, y = torch.randn(a, dtype=dtype, device=device), torch.randn(b, dtype=dtype, device=device)
        out = torch.empty(*a[:-1], b[-1], dtype=dtype, device=device)
        calls.append((torch.bmm if len(a) == 3 else torch.mm, x, y, out))
    device = products[0][3]
    best = math.inf
    for _ in range(repeats + 2):  # two warm-up rounds
        start = clock(device)
        for f, x, y, out in calls:
            f(x, y, out=out)
        best = min(best, clock(device) - start)
    return best


def _steppers(params: list[dict[str, Any]], histories: list[list[dict[str, Any]]]) -> Callable[[int], Callable[[], Any]]:
    """``make(b)``: a function that takes one training step of the run ``params[0]`` (or of the stack
    of ``params``, when several) on a batch of ``b`` training examples, with the relaxation each
    member chose in the first epoch of its ``histories``."""
    from ..studies.tradeoff import stacked, training
    from ..train import make_batch

    data = training.trial_data(params[0])
    runs = [training.build_run({**p, "epochs": 1}, data) for p in params]
    for run, history in zip(runs, histories):
        if "relax_lr" in history[0]:
            training.set_relaxation(run, history[0]["relax_lr"], history[0]["relax_steps"])
    images, labels = data[0].images, data[0].labels
    if len(runs) == 1:
        run = runs[0]
        return lambda b: functools.partial(run.rule.step, make_batch(run.config, images[:b], labels[:b], run.classes))
    trainer = stacked.StackedTrainer(runs)
    x = training.prepare_images(runs[0].config, images)
    count = len(runs)
    return lambda b: functools.partial(trainer.step, x[:b].expand(count, -1, -1).contiguous(), labels[:b].expand(count, -1).contiguous())


def _median_seconds(step: Callable[[], Any], repeats: int) -> float:
    """Median wall seconds of ``step()`` over ``repeats`` calls after one untimed call."""
    from .hardware import clock

    device = torch.device("cpu")
    step()
    times = []
    for _ in range(repeats):
        start = clock(device)
        step()
        times.append(clock(device) - start)
    return statistics.median(times)


def step_costs(make: Callable[[int], Callable[[], Any]], batch: int, repeats: int = 5) -> dict[str, float]:
    """Seconds of a step at ``batch`` and at ``small = max(2, batch // 32)`` examples (medians), the
    ``fixed`` cost (the intercept of the line through the two, at least 0) and the ``products``
    seconds of the step at ``batch`` (:func:`capture_products`, :func:`products_seconds`)."""
    small = max(2, batch // 32)
    full = make(batch)
    at_batch, at_small = _median_seconds(full, repeats), _median_seconds(make(small), repeats)
    slope = (at_batch - at_small) / (batch - small) if batch > small else 0.0
    return {"batch": batch, "small": small, "step": at_batch, "step_small": at_small, "fixed": min(at_batch, max(0.0, at_small - slope * small)),
            "products": products_seconds(capture_products(full))}


# ----------------------------------------------------------------------------------------- profile
def _kind(params: dict[str, Any]) -> tuple[str, str, str, int]:
    return params["dataset"], params["way"], params["complexity"], int(params["latent"])


def profile_tradeoff(preset: str, overrides: dict[str, Any] | None = None, batches: int = 20, stack: bool = False,
                     startup: bool = True, ray: bool = False, workers: int = 2, kinds: int | None = None) -> dict[str, Any]:
    """Profile the trade-off study's ``preset`` (see the module docstring); a JSON-ready dict.

    Args:
        preset, overrides: the study configuration (:func:`pclab.studies.tradeoff.study_config`).
        batches: training batches per epoch of the timed slice.
        stack: run the stacked ways' kinds as stacks (``--set stack=true`` of the study).
        startup: measure a fresh process's imports; ray: measure the embedded Ray's start-up.
        workers: workers the study's wall time is estimated for.
        kinds: profile only the first ``kinds`` kinds (a quicker look).
    """
    from ..studies import tradeoff
    from ..studies.tradeoff import stacked, training

    config = tradeoff.study_config(preset, overrides)
    trials = tradeoff.trials(config)
    units = stacked.stack_groups(trials) if stack else [[p] for p in trials]
    by_kind: dict[tuple, list[list[dict[str, Any]]]] = {}
    for unit in units:
        by_kind.setdefault(_kind(unit[0]), []).append(unit)
    chosen = list(by_kind.items())[:kinds]
    result: dict[str, Any] = {"preset": preset, "overrides": overrides or {}, "batches": batches, "stack": stack, "workers": workers,
                              "runs": len(trials), "torch_threads": torch.get_num_threads(), "startup": {}, "kinds": []}
    if startup:
        result["startup"].update(startup_seconds())
    if ray:
        result["startup"]["ray"] = ray_startup_seconds(workers)
    training._full.cache_clear()  # the first load of the data set in this process is timed as the cold load
    training._splits.cache_clear()
    cold = PhaseClock()
    with cold("data_cold"):
        data = training.trial_data(trials[0])
    for name in ("build_cold", "build_warm"):  # the first model built in a process pays one-time costs
        with cold(name):
            training.build_run(trials[0], data)
    result["data_cold"] = cold.seconds["data_cold"]
    result["build_once"] = max(0.0, cold.seconds["build_cold"] - cold.seconds["build_warm"])
    with tempfile.TemporaryDirectory() as folder:
        for kind, kind_units in chosen:
            result["kinds"].append(_profile_kind(kind, kind_units, batches, Path(folder)))
    total = {k: 0.0 for k in ("data", "build", "epoch_setup", "batches", "fixed", "products", "measuring", "record")}
    for row in result["kinds"]:
        for key in total:
            total[key] += row["extrapolated"][key] * row["units"]
    result["work_seconds"] = total
    result["work_total"] = sum(v for k, v in total.items() if k not in ("fixed", "products"))  # parts of "batches"
    started = result["startup"]["ray"]["start"] if ray else result["startup"].get("process", 0.0)  # Ray's includes its workers' start
    fixed = started + result["data_cold"] + result["build_once"]
    result["longest_unit"] = max((row["unit_seconds"] for row in result["kinds"]), default=0.0)  # no wall time is shorter
    result["wall_estimate"] = fixed + max(result["work_total"] / max(1, workers), result["longest_unit"])
    result["complete"] = len(chosen) == len(by_kind)
    return result


def _profile_kind(kind: tuple, units: list[list[dict[str, Any]]], batches: int, folder: Path) -> dict[str, Any]:
    """Time one representative unit (a run, or a stack) of ``kind`` on a slice; extrapolate it."""
    from ..studies.tradeoff import stacked, training

    unit = units[0]
    members = len(unit)
    sliced = [{**p, "epochs": 1} for p in unit]
    clock = PhaseClock()
    if members > 1:
        outcomes = stacked.run_stack(sliced, phase=clock, max_batches=batches)
    else:
        outcomes = [training.run_trial(sliced[0], phase=clock, max_batches=batches)]
    failed = [str(o) for o in outcomes if isinstance(o, Exception)]
    if failed:
        raise BenchError(f"profiling {kind}: the sliced run failed: {failed[0]}")
    history = outcomes[0]["history"]
    trained = history[0]["batches"]
    loop = history[0]["seconds"] * members  # a stack's epoch time is shared among its members
    per_batch = loop / max(trained, 1)
    record_start = time.perf_counter()
    for params, outcome in zip(unit, outcomes):
        write_json(folder / "record.json", {"id": "profile", "params": params, "status": "ok", "result": outcome, "seconds": 0.0})
    record = time.perf_counter() - record_start
    costs = step_costs(_steppers(sliced, [o["history"] for o in outcomes]), unit[0]["batch_size"])
    fixed_share, products_share = (costs["fixed"] / costs["step"], costs["products"] / costs["step"]) if costs["step"] > 0 else (0.0, 0.0)
    first = unit[0]
    epochs = first["epochs"]
    data = training.trial_data(first)[0]
    per_epoch = math.ceil(len(data) / first["batch_size"])
    epoch_setup = max(0.0, clock.seconds["train"] - loop)
    extrapolated = {
        "data": clock.seconds["data"], "build": clock.seconds["build"], "epoch_setup": epochs * epoch_setup,
        "batches": epochs * per_epoch * per_batch, "fixed": epochs * per_epoch * per_batch * fixed_share,
        "products": epochs * per_epoch * per_batch * products_share,
        "measuring": sum(clock.seconds.get(k, 0.0) for k in MEASURING), "record": record,
    }
    return {
        "dataset": kind[0], "way": kind[1], "complexity": kind[2], "latent": kind[3], "members": members,
        "units": len(units), "runs": sum(len(u) for u in units),
        "phases": clock.seconds, "timed_batches": trained, "batches_per_epoch": per_epoch, "epochs": epochs,
        "per_batch_ms": 1e3 * per_batch, "step_ms": 1e3 * costs["step"], "step_small_ms": 1e3 * costs["step_small"], "small_batch": costs["small"],
        "fixed_ms": 1e3 * costs["fixed"], "products_ms": 1e3 * costs["products"], "fixed_share": fixed_share, "products_share": products_share,
        "bound": "overhead" if fixed_share >= 0.5 else "arithmetic",
        "epoch_setup_s": epoch_setup, "extrapolated": extrapolated,
        "unit_seconds": sum(v for k, v in extrapolated.items() if k not in ("fixed", "products")),
    }


def summary(result: dict[str, Any]) -> str:
    """A plain-text table of :func:`profile_tradeoff`'s result."""
    s = result["startup"]
    lines = [f"tradeoff preset {result['preset']}{' (stacked)' if result['stack'] else ''}: {result['runs']} runs; slices of "
             f"{result['batches']} batches per epoch, extrapolated; torch threads {result['torch_threads']}"]
    parts = [f"a fresh process importing torch and pclab {s['process']:.1f} s (the imports {s['imports']:.1f} s)"] if "process" in s else []
    if "ray" in s:
        parts.append(f"running {result['workers']} empty trials on the embedded Ray (start, Tune, workers, shutdown) {s['ray']['start']:.1f} s")
    if parts:
        lines.append("start-up: " + "; ".join(parts))
    lines.append(f"once per worker process: first load of the data set {result['data_cold']:.2f} s, first model built "
                 f"{result['build_once']:.2f} s more than later ones")
    lines.append(f"{'way':5s} {'model':8s} {'d':>3s} {'runs':>4s} {'stack':>5s} {'ms/batch':>9s} {'fixed':>6s} {'product':>7s} "
                 f"{'data':>6s} {'build':>6s} {'setup':>7s} {'batches':>8s} {'measure':>8s} {'record':>6s} {'unit s':>7s}  bound")
    for k in result["kinds"]:
        e = k["extrapolated"]
        lines.append(f"{k['way']:5s} {k['complexity']:8s} {k['latent']:3d} {k['runs']:4d} {k['members']:5d} {k['per_batch_ms']:9.2f} "
                     f"{100 * k['fixed_share']:5.0f}% {100 * k['products_share']:6.0f}% {e['data']:6.2f} {e['build']:6.2f} {e['epoch_setup']:7.2f} "
                     f"{e['batches']:8.1f} {e['measuring']:8.2f} {e['record']:6.3f} {k['unit_seconds']:7.1f}  {k['bound']}")
    lines.append("  (stack: runs trained together; ms/batch: one step of a run or stack; fixed: share of a step that does not grow with "
                 "the batch; product: share of matrix products; data .. record: seconds of one run or stack, extrapolated)")
    w = result["work_seconds"]
    total = result["work_total"]
    parts = ", ".join(f"{name} {w[name]:.0f} s ({100 * w[name] / total:.0f} %)" for name in ("data", "build", "epoch_setup", "batches",
                                                                                             "measuring", "record") if total)
    lines.append(f"work of the {'profiled kinds' if not result['complete'] else 'whole preset'}: {total:.0f} worker-seconds: {parts}; "
                 f"of the batches, fixed per-step cost {w['fixed']:.0f} s, matrix products {w['products']:.0f} s, "
                 f"the rest (elementwise, optimiser) {max(0.0, w['batches'] - w['fixed'] - w['products']):.0f} s")
    lines.append(f"wall time on {result['workers']} workers: about {result['wall_estimate']:.0f} s (start-up and once-per-process costs, "
                 f"then the larger of work / workers and the longest run or stack, {result['longest_unit']:.0f} s)")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    """``pclab bench study tradeoff [--preset P] [--batches N] [--stack] [--ray] [--set KEY=VALUE] [--json PATH]``.

    Raises :class:`BenchError` for an unknown study or preset, or a bad setting."""
    from ..train import apply_overrides
    from ..train.config import ConfigError

    parser = argparse.ArgumentParser(prog="pclab bench study", description="where a study preset's wall time goes (timed slices)")
    parser.add_argument("study", choices=["tradeoff"], help="the study (tradeoff)")
    parser.add_argument("--preset", default="tiny", help="tiny (default), quick, paper or full")
    parser.add_argument("--batches", type=int, default=20, help="training batches per epoch of each timed slice (default 20)")
    parser.add_argument("--stack", action="store_true", help="profile the stacked ways as stacks (the study's stack=true)")
    parser.add_argument("--ray", action="store_true", help="also time the embedded Ray's start-up")
    parser.add_argument("--no-startup", action="store_true", help="skip timing a fresh process's imports")
    parser.add_argument("--workers", type=int, default=2, help="workers the wall time is estimated for (default 2)")
    parser.add_argument("--kinds", type=int, default=None, help="profile only the first N kinds of runs")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (a study trial uses 1; default 1)")
    parser.add_argument("--set", dest="sets", action="append", default=[], help="override a study setting: KEY=VALUE (repeatable)")
    parser.add_argument("--json", default=None, help="write the result here")
    args = parser.parse_args(argv)
    if args.batches < 1 or args.workers < 1 or args.threads < 1 or (args.kinds is not None and args.kinds < 1):
        raise BenchError(f"--batches, --workers, --threads and --kinds: expected integers >= 1, got {args.batches}, {args.workers}, "
                         f"{args.threads}, {args.kinds}")
    torch.set_num_threads(args.threads)
    try:
        overrides = apply_overrides({}, args.sets) or None
        result = profile_tradeoff(args.preset, overrides, args.batches, args.stack, not args.no_startup, args.ray, args.workers, args.kinds)
    except ConfigError as err:
        raise BenchError(str(err)) from None
    result["command"] = " ".join(["pclab bench study", *(argv if argv is not None else sys.argv[1:])])
    print(summary(result))
    if args.json:
        write_json(args.json, result)
