"""The latent step size of a relaxation, chosen on held-out data rather than by hand.

A PCN's energy scale depends on its precisions (a hybrid's image precision from
:func:`pclab.train.hybrid_precisions` is ``2 (1 - lam) / P`` of its label's), and a latent SGD
step that suits one scale leaves the latent where it started at another. The step size is
therefore chosen from a stated grid of *relative* step sizes ``eta``: the absolute step is
``eta / p``, ``p`` the largest precision among the clamped nodes' energies, so the grid means
the same for every ``lam``.

* :func:`validation_split` carves a fixed, stratified validation split from the training set.
* :func:`choose_step`: the grid step whose relaxation of the validation batch reaches the lowest
  energy after ``T`` steps among those whose energy stays finite and never rises.
* :func:`largest_steady_step`: the largest grid step whose energy never rises over a horizon
  (the step-size sensitivity probe).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence

import numpy as np
import torch

from ...core import PCN, SGD, Inference, relax
from ...data import Dataset
from ...data.dataset import stratified_indices
from .metrics import is_monotone


def validation_split(train: Dataset, n: int) -> tuple[Dataset, Dataset]:
    """``(rest, validation)``: ``n`` stratified training examples (seed 0, the same for every trial)
    and the remaining ones, disjoint."""
    if not 0 < n < len(train):
        raise ValueError(f"validation: expected 0 < n < {len(train)} training examples, got {n}")
    chosen = np.zeros(len(train), dtype=bool)
    chosen[stratified_indices(train.labels.cpu().numpy(), n, 0)] = True
    rest, validation = (
        dataclasses.replace(train, images=train.images[torch.from_numpy(np.flatnonzero(chosen == flag))],
                            labels=train.labels[torch.from_numpy(np.flatnonzero(chosen == flag))],
                            description=f"{train.description}; {'validation' if flag else 'without the validation'} split of {n} (seed 0)")
        for flag in (False, True)
    )
    return rest, validation


def energy_scale(model: PCN, clamp: Mapping[str, torch.Tensor]) -> float:
    """The largest precision among the clamped nodes that have an energy (1 when none has one)."""
    precisions = [float(model.nodes[n].energy.precision) for n in clamp if model.nodes[n].energy is not None]
    scale = max(precisions, default=0.0)
    return scale if scale > 0 else 1.0


def with_step(inference: Inference, lr: float, steps: int | None = None) -> Inference:
    """``inference`` with latent SGD at ``lr`` (and ``steps`` steps when given), no early stop."""
    return dataclasses.replace(inference, optimizer=SGD(float(lr)), steps=inference.steps if steps is None else int(steps),
                               tolerance=None)


def energies(model: PCN, clamp: Mapping[str, torch.Tensor], inference: Inference, lr: float, steps: int) -> list[float]:
    """Total energy (batch mean) after each of ``0..steps`` latent SGD updates at ``lr``."""
    with torch.no_grad():
        relaxed = relax(model, clamp, with_step(inference, lr, steps), record=True)
    assert relaxed.trajectory is not None
    return relaxed.trajectory.total_energy()


def choose_step(model: PCN, clamp: Mapping[str, torch.Tensor], inference: Inference, grid: Sequence[float],
                steps: int) -> dict[str, object]:
    """The absolute latent step size ``eta / energy_scale`` (``eta`` from ``grid``) whose ``steps``-step
    relaxation of ``clamp`` ends at the lowest energy among the candidates whose energy stays finite
    and never rises; the smallest grid step when no candidate qualifies.

    Returns ``lr`` (absolute), ``eta`` (relative), ``scale`` and ``candidates`` (one row per ``eta``:
    ``eta``, ``lr``, ``energy_0``, ``energy_T``, ``steady``)."""
    if not grid:
        raise ValueError("choose_step: expected a non-empty grid of relative step sizes")
    scale = energy_scale(model, clamp)
    rows = []
    for eta in sorted(float(g) for g in grid):
        energy = energies(model, clamp, inference, eta / scale, steps)
        finite = all(math.isfinite(e) for e in energy)
        rows.append({"eta": eta, "lr": eta / scale, "energy_0": energy[0], "energy_T": energy[-1],
                     "steady": bool(finite and is_monotone(energy))})
    steady = [r for r in rows if r["steady"]]
    best = min(steady, key=lambda r: (r["energy_T"], -r["eta"])) if steady else rows[0]
    return {"lr": best["lr"], "eta": best["eta"], "scale": scale, "candidates": rows}


def largest_steady_step(model: PCN, clamp: Mapping[str, torch.Tensor], inference: Inference, steps: Sequence[float],
                        horizon: int) -> float | None:
    """The largest absolute step size in ``steps`` whose energy stays finite and never rises over
    ``horizon`` updates of ``clamp`` (``None`` when none does)."""
    for lr in sorted((float(s) for s in steps), reverse=True):
        energy = energies(model, clamp, inference, lr, horizon)
        if all(math.isfinite(e) for e in energy) and is_monotone(energy):
            return lr
    return None
