"""Error-based relaxation (ePC, :mod:`pclab.core.epc`) of a chain of Dense layers: one step as plain
tensor code, compiled into one graph (``Inference(compile=True)``).

:func:`~pclab.core.epc.relax_errors` runs its own loop (start, trajectory, tolerance, final
states); on a chain that :func:`~pclab.core.fast.chain.dense_chain` accepts, each step of that loop
is :func:`step` instead of :meth:`ErrorProblem.grads <pclab.core.epc.ErrorProblem.grads>` and the
optimiser's update. A step is, for the nodes ``0 .. L`` of the chain:

* forward, the states from the variables: ``z_l = e_l + mu_l`` for a free node, the variable
  itself for a free root, the clamped value otherwise, with ``mu_l = f(W_l z_{l-1} + b_l)``
  (:class:`~pclab.core.fast.chain.Predictions`; a prediction from a clamped node is the one the
  reference caches for the whole relaxation, passed in);
* the energies: ``w_l/2 ||e_l||^2`` of a free node, ``w_l E_l(clamped value, mu_l)`` of a clamped
  one (``w_l``: the static precision);
* backward, one sweep from the output: ``dE/dmu_l`` is ``w_l dE_l/dmu`` at a clamped node and
  ``dE/dz_l`` (what came from above) at a free one; ``dE/dz_{l-1} = (dE/dmu_l * f'(a_l)) W_l``;
  ``dE/de_l = w_l e_l + dE/dz_l``, ``dE/dz_0`` for a free root;
* the latent optimiser's update (pclab's ``SGD``, with or without momentum, or ``Adam``), as
  tensors only: the first momentum buffer is a zero tensor (``0 * momentum + g`` is ``g`` exactly)
  and Adam's bias corrections come in as a tensor, so one graph serves every step.

The same arithmetic as the reference's reverse sweep (``method="manual"``); the tests
(``tests/fast/test_error_chain.py``) hold it to the reference relaxation. Not differentiable: bp-through-inference
through an ePC relaxation runs the reference loop.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ..graph import edge_key
from ..optim import SGD, Adam
from . import compiled
from .chain import DenseChain, Params, Predictions, back_through

Variables = list[torch.Tensor | None]
"""Index ``i`` of the chain's nodes: ``e_i`` of a free node, ``z_0`` of a free root, else ``None``."""

OptState = list[list[torch.Tensor | None]]
"""Per optimiser buffer (SGD: the velocity; Adam: ``m``, ``v``), one entry per node as :data:`Variables`."""


@dataclass(frozen=True)
class ErrorPlan:
    """What one ePC relaxation of a chain does, without the tensors (a compiled step's key).

    Node indices ``0 .. L`` along ``chain.nodes``.

    Attributes:
        chain: the structure.
        clamped: node ``i`` keeps its given value (a clamped ``i >= 1`` has an energy against its prediction).
        free: node ``i`` is a variable of the relaxation (its error, or its value at a free root).
        weights: ``weights[i]``: precision of node ``i`` (static precision times the constant schedule).
        optimizer: the latent update rule (pclab ``SGD`` or ``Adam``).
    """

    chain: DenseChain
    clamped: tuple[bool, ...]
    free: tuple[bool, ...]
    weights: tuple[float, ...]
    optimizer: SGD | Adam

    @property
    def buffers(self) -> int:
        """Optimiser state tensors per variable: 0 (plain SGD), 1 (momentum) or 2 (Adam's moments)."""
        if type(self.optimizer) is Adam:
            return 2
        return 0 if self.optimizer.momentum == 0.0 else 1


def plan(chain: DenseChain, problem: Any, optimizer: SGD | Adam) -> ErrorPlan:
    """The plan of ``problem`` (a :class:`pclab.core.epc.ErrorProblem` of the chain's model)."""
    names = chain.nodes
    free = set(problem.variables)
    return ErrorPlan(
        chain=chain,
        clamped=tuple(n in problem.clamped for n in names),
        free=tuple(n in free for n in names),
        weights=(0.0, *(float(problem.weights[n]) for n in names[1:])),
        optimizer=optimizer,
    )


def fixed_predictions(plan: ErrorPlan, cached: Mapping[str, torch.Tensor]) -> list[torch.Tensor | None]:
    """``[l]``: the prediction of node ``l`` from a clamped node ``l - 1`` (the reference's cached
    edge output), else ``None``."""
    names = plan.chain.nodes
    out: list[torch.Tensor | None] = [None]
    for l in range(1, len(names)):
        out.append(cached.get(edge_key(names[l - 1], names[l])) if plan.clamped[l - 1] else None)
    return out


def energies_and_grads(plan: ErrorPlan, params: Params, clamp: Sequence[torch.Tensor | None], fixed: Sequence[torch.Tensor | None],
                       variables: Variables) -> tuple[Variables, list[torch.Tensor | None]]:
    """``(dE/dvariable, energy of each node)`` at ``variables``: per node ``(batch, width)`` and
    ``(batch,)``, ``None`` where a node has no variable (no energy)."""
    chain, L, w = plan.chain, plan.chain.depth, plan.weights
    predictions = Predictions(chain, params)
    z: list[torch.Tensor | None] = [clamp[0] if plan.clamped[0] else variables[0]]
    mu: list[torch.Tensor | None] = [None]
    for l in range(1, L + 1):
        if not plan.clamped[l] and not plan.free[l]:  # a released read-out: no energy, no variable
            z.append(None)
            mu.append(None)
            continue
        m = fixed[l] if fixed[l] is not None else predictions.compute(l, z[l - 1])
        mu.append(m)
        z.append(clamp[l] if plan.clamped[l] else variables[l] + m)
    energies: list[torch.Tensor | None] = [None] * (L + 1)
    grads: Variables = [None] * (L + 1)
    above = None  # dE/dz_l through node l + 1
    for l in range(L, 0, -1):
        if plan.clamped[l]:
            energy = chain.energies[l - 1]
            energies[l] = w[l] * energy.value(clamp[l], mu[l])
            signal = w[l] * energy.grad_mu(clamp[l], mu[l])  # dE/dmu_l
        elif plan.free[l]:
            e = variables[l]
            energies[l] = w[l] * 0.5 * e.pow(2).sum(1)
            own = w[l] * e
            grads[l] = own if above is None else own + above
            signal = above
        else:
            signal = None
        above = None
        if signal is not None and plan.free[l - 1]:
            above = back_through(predictions.backward(l, signal), params[l - 1][0])
    if plan.free[0]:
        grads[0] = above if above is not None else torch.zeros_like(variables[0])
    return grads, energies


def step(plan: ErrorPlan, clamp: Sequence[torch.Tensor | None], flat: Sequence[torch.Tensor], fixed: Sequence[torch.Tensor | None],
         variables: Variables, state: OptState, corrections: torch.Tensor | None) -> tuple[Variables, OptState, list[torch.Tensor | None]]:
    """One relaxation step: ``(variables, optimiser state, energies)`` after the update, the
    energies those of the variables before it (as the reference's step returns them).

    ``flat``: the chain's parameters (:func:`pclab.core.fast.compiled.flatten`); ``corrections``:
    Adam's ``(1 - beta1^t, 1 - beta2^t)`` for this step ``t`` in the variables' dtype (``None`` for SGD).
    New tensors only (nothing is updated in place)."""
    grads, energies = energies_and_grads(plan, compiled.unflatten(plan, flat), clamp, fixed, variables)
    optimizer = plan.optimizer
    new: Variables = list(variables)
    buffers: OptState = [list(b) for b in state]
    for i, g in enumerate(grads):
        if g is None:
            continue
        if type(optimizer) is Adam:  # Adam.update's arithmetic, its bias corrections given
            b1, b2 = optimizer.betas
            m = b1 * state[0][i] + (1 - b1) * g
            v = b2 * state[1][i] + (1 - b2) * g * g
            m_hat, v_hat = m / corrections[0], v / corrections[1]
            new[i] = variables[i] - optimizer.lr * m_hat / (v_hat.sqrt() + optimizer.eps)
            buffers[0][i], buffers[1][i] = m, v
        elif optimizer.momentum == 0.0:
            new[i], _ = optimizer.update(variables[i], g, {}, True)
        else:
            new[i], s = optimizer.update(variables[i], g, {"velocity": state[0][i]}, True)
            buffers[0][i] = s["velocity"]
    return new, buffers, energies


class Steps:
    """The steps of one ePC relaxation of a chain, for :func:`pclab.core.epc.relax_errors`'s loop:
    :meth:`init` gives the optimiser state, :meth:`step` is the loop's step. Compiled (one graph
    per plan, serving the first batch size, :func:`pclab.core.fast.compiled.run`) when
    ``compile``; other batch sizes run the same function eagerly."""

    def __init__(self, plan: ErrorPlan, params: Params, clamp: Mapping[str, torch.Tensor], cached: Mapping[str, torch.Tensor],
                 compile: bool):
        self.plan, self.names = plan, plan.chain.nodes
        self.flat = compiled.flatten(params)
        self.clamp = [clamp.get(n) for n in self.names]
        self.fixed = fixed_predictions(plan, cached)
        self.batch = next(v for v in self.clamp if v is not None).shape[0]
        self.entry = None
        if compile:
            self.entry = compiled.CACHE.get(("epc-step", plan), lambda: compiled.compile_graph(lambda *args: step(plan, *args)))

    def init(self, variables: Mapping[str, torch.Tensor]) -> dict[str, Any]:
        """The optimiser's first state: zero buffers, Adam's step count 0."""
        like = [variables.get(n) for n in self.names]
        return {"buffers": [[None if v is None else torch.zeros_like(v) for v in like] for _ in range(self.plan.buffers)], "t": 0}

    def step(self, t: int, variables: Mapping[str, torch.Tensor], state: dict[str, Any]) -> tuple[dict, dict, dict]:
        """``(variables, state, energies)`` after one step, as the reference loop's step (energies
        per node name, those before the update)."""
        current = [variables.get(n) for n in self.names]
        count = state["t"] + 1
        corrections = None
        if type(self.plan.optimizer) is Adam:
            b1, b2 = self.plan.optimizer.betas
            like = self.flat[0]
            corrections = torch.tensor([1 - b1**count, 1 - b2**count], dtype=like.dtype, device=like.device)
        args = (self.clamp, self.flat, self.fixed, current, state["buffers"], corrections)
        out = None if self.entry is None else compiled.run(self.entry, self.batch, *args)
        if out is None:
            out = step(self.plan, *args)
        new, buffers, energies = out
        names = self.names
        return ({names[i]: v for i, v in enumerate(new) if v is not None}, {"buffers": buffers, "t": count},
                {names[i]: e for i, e in enumerate(energies) if e is not None})
