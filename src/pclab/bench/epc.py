"""``pclab bench epc``: state-based (sPC) against error-based (ePC) relaxation, side by side.

For chains of depth 5, 10 and 20 (MLP 784-128x(depth-1)-10, GELU, orthogonal init with ReLU's
gain, squared-error label; float64; one batch with input and label clamped) it reports, per
method:

* **steps to equilibrium**: on a fixed grid of latent SGD step sizes, a step size is *stable* if
  the total energy never rises over ``cap`` steps; ``E*`` is the lowest energy a long ePC run
  reaches; a run has converged at the first step ``t`` with ``E_t - E* <= 1e-3 (E_0 - E*)``; the
  method's figure is its fewest steps over its stable step sizes (and that step size);
* **time per relaxation step**: ``relax`` on the same batch (sPC: the Dense-chain fast path; ePC:
  the reference loop of :mod:`pclab.core.epc` and, with ``compiled``, its compiled Dense-chain step,
  ``Inference(compile=True)``, timed in the same run after one compiling relaxation), median (and
  least disturbed) of ``rounds`` timed relaxations of ``timed_steps`` steps;
* **time to equilibrium**: the two multiplied (the compiled ePC takes the eager one's steps: the
  same arithmetic).

All step sizes of a method are relaxed at once: the batch is repeated once per step size and
each copy takes its own step (samples relax independently: each has its own energy), so a cap of
5000 steps costs 5000 batched steps per method, not 5000 per step size.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

from ..core import PCN, SGD, Inference, relax
from ..core.epc import ErrorProblem
from ..core.fast.compiled import total_compile_seconds
from ..core.relax import free_nodes
from ..models import mlp, orthogonal_init

GRID = (0.02, 0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.6, 0.8, 1.0)
"""Latent SGD step sizes tried for both methods."""


def energy_trace(model: PCN, clamp: dict[str, torch.Tensor], lrs: Sequence[float], steps: int, parametrisation: str) -> torch.Tensor:
    """``(steps + 1, len(lrs))``: total energy (summed over the batch) of ``clamp``'s batch at each of
    ``steps`` plain-SGD relaxation steps from the feed-forward pass, one column per step size.

    The same arithmetic as :func:`pclab.core.relax` with ``Inference(optimizer=SGD(lr),
    parametrisation=...)`` (every step size at once: the batch repeated once per step size)."""
    k = len(lrs)
    batch = next(iter(clamp.values())).shape[0]
    big = {n: v.repeat(k, *[1] * (v.dim() - 1)) for n, v in clamp.items()}
    rate = torch.tensor(list(lrs), dtype=model.dtype, device=model.device).repeat_interleave(batch)[:, None]
    clamped = frozenset(big)
    free = free_nodes(model, clamped)
    out = []
    with torch.no_grad():
        start = model.initial_state(big, "forward")
        cached = model.clamped_contributions(start, clamped)
        if parametrisation == "error":
            weights = {n: model.nodes[n].energy.precision for n in model.error_nodes}
            problem = ErrorProblem(model, big, free, weights, cached, "manual" if model.fast else "autograd")
            mu = model.predictions(start, cached=cached)
            variables = {n: start[n].clone() if n in problem.roots else start[n] - mu[n] if n in model.amortisers else torch.zeros_like(start[n])
                         for n in problem.variables}
            for _ in range(steps + 1):
                grads, energies, _, _ = problem.grads(variables, False)
                out.append(torch.stack(list(energies.values())).sum(0).reshape(k, batch).sum(1))
                variables = {n: v - rate * grads[n] for n, v in variables.items()}
        elif parametrisation == "state":
            values = dict(start)
            for _ in range(steps + 1):
                grads, energies = model.latent_grads(values, free, clamped, cached=cached)
                out.append(torch.stack(list(energies.values())).sum(0).reshape(k, batch).sum(1))
                values = {n: v - rate * grads[n] if n in grads else v for n, v in values.items()}
        else:
            raise ValueError(f"parametrisation must be 'state' or 'error', got {parametrisation!r}")
    return torch.stack(out)


def steps_to_equilibrium(trace: torch.Tensor, target: float, tolerance: float = 1e-3) -> tuple[int | None, bool]:
    """``(first t with E_t - E* <= tolerance (E_0 - E*) or None, stable)`` of one energy trace;
    stable: finite and never rising (by more than 1e-12 of its largest value: round-off)."""
    hit = (trace - target) <= tolerance * (trace[0] - target)
    first = int(hit.nonzero()[0, 0]) if bool(hit.any()) else None
    return first, stable(trace)


def stable(trace: torch.Tensor) -> bool:
    """The energy trace is finite and never rises (by more than 1e-12 of its largest value: round-off)."""
    if not bool(torch.isfinite(trace).all()):
        return False
    return not bool(((trace[1:] - trace[:-1]) > 1e-12 * trace.abs().max()).any())


def equilibrium_energy(trace: torch.Tensor) -> float:
    """``E*``: the lowest energy of a long (ePC) run, over the step sizes whose run stayed stable
    (a diverging step size's energy goes to NaN or through a spurious low); ``(steps + 1, lrs)``."""
    columns = [trace[:, i] for i in range(trace.shape[1])]
    kept = [c for c in columns if stable(c)]
    pool = torch.stack(kept or columns, dim=1)
    finite = pool[torch.isfinite(pool)]
    if finite.numel() == 0:
        raise ValueError("equilibrium_energy: every energy of the trace is NaN or infinite")
    return float(finite.min())


def deep_mlp_problem(depth: int, batch: int = 16, width: int = 128, seed: int = 0,
                     dtype: torch.dtype = torch.float64) -> tuple[PCN, dict[str, torch.Tensor]]:
    """The ePC authors' deep MLP at ``depth`` weight layers (784-width x (depth-1)-10, GELU,
    orthogonal init, squared error) and one batch: uniform ``[0, 1]`` images, one-hot labels."""
    g = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = orthogonal_init(mlp([784, *[width] * (depth - 1), 10], "gelu", "gaussian")).to(dtype)
    x = torch.rand(batch, 784, generator=g, dtype=dtype)
    y = F.one_hot(torch.randint(0, 10, (batch,), generator=g), 10).to(dtype)
    return model, {"x": x, "y": y}


def _time_per_step(model: PCN, clamp: dict[str, torch.Tensor], inference: Inference, rounds: int) -> tuple[float, float]:
    """``(median, least disturbed)`` seconds per step of ``rounds`` timed relaxations."""
    relax(model, clamp, inference)  # warm-up (compiling, with inference.compile)
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        relax(model, clamp, inference)
        times.append(time.perf_counter() - start)
    return statistics.median(times) / inference.steps, min(times) / inference.steps


def compare(depths: Sequence[int] = (5, 10, 20), cap: int = 5000, batch: int = 16, width: int = 128, grid: Sequence[float] = GRID,
            timed_steps: int = 50, rounds: int = 7, seed: int = 0, compiled: bool = True) -> dict[str, Any]:
    """sPC against ePC at each depth (see the module docstring; ``compiled``: ePC's compiled step
    too, in ``row["error_compiled"]``); a JSON-ready dict."""
    rows = []
    for depth in depths:
        model, clamp = deep_mlp_problem(depth, batch, width, seed)
        traces = {p: energy_trace(model, clamp, grid, cap, p) for p in ("state", "error")}
        target = equilibrium_energy(traces["error"])
        row: dict[str, Any] = {"depth": depth, "energy_start": float(traces["error"][0, 0]), "energy_equilibrium": target}
        for p, trace in traces.items():
            found = [(lr, *steps_to_equilibrium(trace[:, i], target)) for i, lr in enumerate(grid)]
            stable = [(t, lr) for lr, t, ok in found if ok and t is not None]
            steps, lr = min(stable) if stable else (None, None)
            step_s, best_s = _time_per_step(model, clamp, Inference(timed_steps, SGD(lr or grid[0]), parametrisation=p), rounds)
            row[p] = {
                "steps": steps, "lr": lr, "step_ms": 1e3 * step_s, "step_ms_best": 1e3 * best_s,
                "time_to_equilibrium_ms": None if steps is None else 1e3 * step_s * steps,
                "stable_lrs": [lr for lr, _, ok in found if ok],
                "steps_per_lr": {str(lr): t for lr, t, _ in found},
            }
        if compiled:
            row["error_compiled"] = _compiled_error(model, clamp, row["error"], grid, timed_steps, rounds)
        s, e = row["state"]["steps"], row["error"]["steps"]
        row["steps_ratio"] = None if s is None or e is None else s / e
        ts, te = row["state"]["time_to_equilibrium_ms"], row["error"]["time_to_equilibrium_ms"]
        row["time_ratio"] = None if ts is None or te is None else ts / te
        rows.append(row)
    return {"model": f"MLP 784-{width}x(depth-1)-10 GELU, orthogonal init, squared error, float64", "batch": batch, "cap": cap,
            "grid": list(grid), "tolerance": 1e-3, "timed_steps": timed_steps, "rounds": rounds, "rows": rows}


def _compiled_error(model: PCN, clamp: dict[str, torch.Tensor], eager: dict[str, Any], grid: Sequence[float], timed_steps: int,
                    rounds: int) -> dict[str, Any]:
    """The compiled ePC step's entry of a row: its time per step at the eager ePC's step size, the
    time to the eager one's steps, its speed-up over the eager step and the compile time."""
    before = total_compile_seconds()
    inference = Inference(timed_steps, SGD(eager["lr"] or grid[0]), parametrisation="error", compile=True)
    step_s, best_s = _time_per_step(model, clamp, inference, rounds)
    steps = eager["steps"]
    return {"steps": steps, "lr": eager["lr"], "step_ms": 1e3 * step_s, "step_ms_best": 1e3 * best_s,
            "time_to_equilibrium_ms": None if steps is None else 1e3 * step_s * steps,
            "speedup": eager["step_ms"] / (1e3 * step_s), "compile_seconds": total_compile_seconds() - before}


def run(quick: bool = False, compiled: bool = True) -> dict[str, Any]:
    """The suite as ``pclab bench epc`` runs it (``quick``: depths 5 and 10, a 500-step cap;
    ``compiled``: with the compiled ePC step, unless ``--no-compile``)."""
    if quick:
        return compare(depths=(5, 10), cap=500, timed_steps=10, rounds=2, compiled=compiled)
    return compare(compiled=compiled)


def summary(result: dict[str, Any]) -> list[str]:
    """Plain-text lines of :func:`compare`'s result."""
    lines = [f"sPC vs ePC to equilibrium ({result['model']}, batch {result['batch']}, x and y clamped; latent SGD, best stable step "
             f"of {result['grid']} over {result['cap']} steps; converged: E_t - E* <= 1e-3 (E_0 - E*)):"]
    def cell(row: dict[str, Any], p: str) -> str:
        r = row[p]
        if r["steps"] is None:
            return f"{p[0]}PC no stable step converged ({r['step_ms']:.2f} ms/step)"
        return (f"{p[0]}PC {r['steps']:5d} steps (lr {r['lr']}) x {r['step_ms']:6.2f} ms/step (least disturbed {r['step_ms_best']:.2f}) "
                f"= {r['time_to_equilibrium_ms']:8.1f} ms")

    for row in result["rows"]:
        ratio = "" if row["steps_ratio"] is None else f"; sPC/ePC steps {row['steps_ratio']:.1f}x, time {row['time_ratio']:.1f}x"
        fast = row.get("error_compiled")
        if fast is not None:
            to_equilibrium = "" if fast["time_to_equilibrium_ms"] is None else f" = {fast['time_to_equilibrium_ms']:8.1f} ms"
            ratio += (f" | ePC compiled {fast['step_ms']:6.2f} ms/step (least disturbed {fast['step_ms_best']:.2f}){to_equilibrium}, "
                      f"{fast['speedup']:.1f}x the eager step (compiling {fast['compile_seconds']:.1f} s)")
        lines.append(f"  depth {row['depth']:2d}: {cell(row, 'state')} | {cell(row, 'error')}{ratio}")
    return lines
