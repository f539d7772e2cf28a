"""Error-based relaxation (ePC): relax over the prediction errors instead of the states.

State-based PC (sPC) descends the energy over the states ``s``; a gradient step moves the
signal of a clamped output one layer per step, shrinking it by about the latent step size at
every layer, so deep chains need very many steps. ePC (Goemaere, Oliviers, Bogacz & Demeester
2026) changes the variables: the free variables are

* the error ``e_n`` of every free node ``n`` that has a prediction, and
* the state of every free root (a node without prediction, e.g. a generative model's top latent);

every other state is computed forward in topological order, ``s_n = e_n + mu_n(parents)``, and
the energy is each node's own energy of its error: ``precision/2 * ||e_n||^2`` for a free
Gaussian node, and ``precision * energy(clamped value, mu_n)`` for a clamped node with a
prediction (the label of a discriminative chain, the image of a generative one, both in the
hybrid). The map from these variables to the free states is a bijection with an invertible
(unit triangular) Jacobian, so ePC's stationary points are sPC's: at an ePC fixed point the
state-based latent gradient is zero and the local PC weight gradients are sPC's. What changes is
the path: a gradient step on ``e`` is a backward pass through the whole forward computation, so
the output's signal reaches every layer in one step.

Works on any PCN (chains of dense, conv, transposed-conv, residual or BatchNorm modules, the
generative and hybrid models, any DAG). Gradients are hand-derived reverse sweeps over the
edges' ``forward_with_vjp`` where every edge module has one (``method="auto"`` or ``"manual"``),
else autograd through the forward computation; both stay differentiable for
bp-through-inference. The result is an ordinary :class:`~pclab.core.relax.Relaxed` state, so
every learning rule (the local PC rule at the relaxed states) and read-out works on it. With
``Inference(compile=True)`` each step on a chain of Dense layers runs as one compiled graph
(:mod:`pclab.core.fast.error_chain`, behind :mod:`pclab.core.fast.dispatch`).

Not defined here: time-varying precision schedules (spiking, decaying: designed around sPC's
layer-by-layer error front; an energy that changes in time has no equilibrium to share),
``fixed_prediction``, and a hook inside relaxation (``on_step``, incremental PC's weight step).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from typing import Any

import torch

from .binomial import checkpointed_relaxation, unrolled_relaxation
from .energy import Gaussian
from .fast import dispatch
from .graph import PCN, State

Inference = Any
"""A :class:`pclab.core.relax.Inference` (which imports this module)."""

PARAMETRISATIONS = ("state", "error")
"""Relaxation variables: ``"state"`` (sPC, the node values) or ``"error"`` (ePC, the prediction errors)."""


def check_inference(inference: Inference) -> None:
    """Raise a one-line ``ValueError`` when ``inference`` asks for something ePC does not define."""
    if inference.fixed_prediction:
        raise ValueError("inference fixed_prediction is not defined for the error parametrisation (ePC computes every prediction "
                         "from the current states); expected fixed_prediction=False")
    schedules = inference.precision.values() if isinstance(inference.precision, Mapping) else [inference.precision]
    for s in schedules:
        if not s.is_constant:
            raise ValueError(f"the error parametrisation takes static precisions only (a Constant schedule or the nodes' own "
                             f"precision); a time-varying schedule has no equilibrium to share, got {s!r}")


def _check_model(model: PCN, errors: list[str]) -> None:
    for n in errors:
        if not isinstance(model.nodes[n].energy, Gaussian):
            raise ValueError(f"the error parametrisation needs a Gaussian energy on every free predicted node; "
                             f"node {n!r} has {type(model.nodes[n].energy).__name__}")


class ErrorProblem:
    """One batch's ePC energy as a function of its variables.

    Args:
        model: the network.
        clamp: clamped values, name -> ``(batch, *shape)``.
        free: the free nodes (not clamped, not released read-outs) in topological order.
        weights: precision of every active node (static precision times a constant schedule).
        cached: edge key -> prediction contribution of edges out of clamped nodes (computed once).
        method: ``"manual"`` (reverse sweep over ``forward_with_vjp``) or ``"autograd"``.
    """

    def __init__(self, model: PCN, clamp: Mapping[str, torch.Tensor], free: list[str], weights: dict[str, float],
                 cached: Mapping[str, torch.Tensor], method: str):
        self.model, self.clamp, self.weights, self.cached, self.method = model, clamp, weights, cached, method
        free_set = set(free)
        self.errors = [n for n in free if model.incoming[n]]
        self.roots = [n for n in free if not model.incoming[n]]
        self.variables = [n for n in model.order if n in free_set]  # errors and roots, topological order
        self.clamped = frozenset(clamp)
        self.targets = [n for n in model.error_nodes if n in self.clamped and model.active(n, self.clamped)]
        _check_model(model, self.errors)
        # membership tests of the per-step loops (the lists keep the order)
        self._errors, self._roots, self._targets = frozenset(self.errors), frozenset(self.roots), frozenset(self.targets)

    def with_constants(self, clamp: Mapping[str, torch.Tensor], cached: Mapping[str, torch.Tensor]) -> ErrorProblem:
        """The same problem reading ``clamp`` and ``cached`` (binomial checkpointing passes them as loop constants)."""
        other = copy.copy(self)
        other.clamp, other.cached = clamp, cached
        return other

    def states(self, variables: State) -> tuple[State, State]:
        """``(states, predictions)`` of every node from the variables (forward, topological order)."""
        model, values, mu = self.model, dict(self.clamp), {}
        for n in model.order:
            if n in self.clamped and n not in self._targets:
                continue
            if n in self._roots:
                values[n] = variables[n]
                continue
            mu[n] = model._prediction(n, values, self.cached)
            if n in self.clamped:
                continue
            values[n] = variables[n] + mu[n] if n in variables else model.nodes[n].energy.released(mu[n])
        return values, mu

    def energies(self, variables: State, mu: State) -> dict[str, torch.Tensor]:
        """Precision-weighted energy of every active node, each ``(batch,)``."""
        out = {}
        for n in self.model.error_nodes:
            if n in self._errors:
                e = variables[n]
                out[n] = self.weights[n] * 0.5 * e.reshape(e.shape[0], -1).pow(2).sum(1)
            elif n in self._targets:
                out[n] = self.weights[n] * self.model.nodes[n].energy.value(self.clamp[n], mu[n])
        return out

    def grads(self, variables: State, differentiable: bool) -> tuple[State, dict[str, torch.Tensor], State, State]:
        """``(dE/dvariable, energies, states, predictions)`` of each sample's energy."""
        if self.method == "manual":
            return self._manual(variables)
        with torch.enable_grad():
            local = {}
            for n, v in variables.items():
                if not differentiable:
                    v = v.detach().requires_grad_(True)
                elif not v.requires_grad:
                    v = v.requires_grad_(True) if v.is_leaf else v
                local[n] = v
            values, mu = self.states(local)
            energies = self.energies(local, mu)
            total = torch.stack(list(energies.values())).sum() if energies else None
            names = list(local)
            if total is not None and total.requires_grad:
                found = torch.autograd.grad(total, [local[n] for n in names], create_graph=differentiable, allow_unused=True)
            else:
                found = [None] * len(names)
        grads = {n: g if g is not None else torch.zeros_like(local[n]) for n, g in zip(names, found)}
        if not differentiable:
            grads = {n: g.detach() for n, g in grads.items()}
            energies = {n: e.detach() for n, e in energies.items()}
            values = {n: v.detach() for n, v in values.items()}
            mu = {n: m.detach() for n, m in mu.items()}
        return grads, energies, values, mu

    def _manual(self, variables: State) -> tuple[State, dict[str, torch.Tensor], State, State]:
        """The gradient by a reverse sweep over the edges' hand-derived VJPs (no autograd):
        ``dE/ds_n = sum over children c of J_{n->c}^T dE/dmu_c`` with ``dE/dmu_c = dE/ds_c`` for a
        free child (``s_c = e_c + mu_c``) and ``precision * dE_c/dmu`` for a clamped one; then
        ``dE/de_n = precision * e_n + dE/ds_n`` and ``dE/dr = dE/ds_r`` for a free root."""
        model, values, mu, vjps = self.model, dict(self.clamp), {}, {}
        for n in model.order:
            if n in self.clamped and n not in self._targets:
                continue
            if n in self._roots:
                values[n] = variables[n]
                continue
            total = None
            for edge in model.incoming[n]:
                module = model.edge_modules[edge.key]
                if edge.key in self.cached:
                    part = self.cached[edge.key]
                elif edge.source in self.clamped:  # (a module evaluated at every step: dropout, torch BatchNorm)
                    part = module(values[edge.source])
                else:
                    part, vjps[edge.key] = module.forward_with_vjp(values[edge.source])
                total = part if total is None else total + part
            mu[n] = total
            if n not in self.clamped:
                values[n] = variables[n] + total if n in variables else model.nodes[n].energy.released(total)
        upstream: State = {}  # dE/ds through the node's children
        grads: State = {}
        for n in reversed(model.order):
            if n in self._targets:
                energy = model.nodes[n].energy
                signal = self.weights[n] * energy.grad_mu(self.clamp[n], mu[n])
            elif n in self._errors:
                signal = upstream.get(n)
                own = self.weights[n] * variables[n]
                grads[n] = own if signal is None else own + signal
            elif n in self._roots:
                grads[n] = upstream[n] if n in upstream else torch.zeros_like(variables[n])
                continue
            else:
                continue
            if signal is None:
                continue
            for edge in model.incoming[n]:
                if edge.key in vjps:
                    back = vjps[edge.key](signal)
                    upstream[edge.source] = back if edge.source not in upstream else upstream[edge.source] + back
        return grads, self.energies(variables, mu), values, mu


def _manual_applies(model: PCN, problem_free: list[str], clamped: frozenset[str]) -> bool:
    """The reverse sweep needs a VJP on every edge out of a free node, and no read-out feeding another node."""
    for edge in model.edges:
        if edge.source in clamped:
            continue
        if edge.source not in problem_free:
            return False  # a released read-out with children: autograd handles it
        if not hasattr(model.edge_modules[edge.key], "forward_with_vjp"):
            return False
    return True


def relax_errors(
    model: PCN,
    clamp: Mapping[str, torch.Tensor],
    inference: Inference,
    free: list[str],
    *,
    trajectory: Any = None,
    differentiable: bool = False,
    truncate: int | None = None,
    checkpoint_steps: bool = False,
    checkpoint_slots: int | None = None,
    on_step: Callable | None = None,
    initial: State | None = None,
    generator: torch.Generator | None = None,
) -> tuple[State, State, int]:
    """The relaxation of :func:`~pclab.core.relax.relax` with ``inference.parametrisation ==
    "error"`` (its arguments; ``free``: the free nodes; ``trajectory``: a
    :class:`~pclab.core.relax.Trajectory` to fill, or ``None``). Returns ``(values, initial,
    steps taken)``, which ``relax`` hands on as a :class:`~pclab.core.relax.Relaxed`.

    The initial state is ``inference.init``'s (or ``initial``); the first errors are those that
    reproduce it, ``e_n = s_n - mu_n(s)``: zero for ``init="forward"`` (the feed-forward pass; a
    free root starts at its amortiser's output or zero). ``truncate`` cuts the graph at the
    errors (the states after the cut still depend on the parameters through the forward
    computation); ``truncate=0`` backpropagates through the forward pass at fixed errors.
    Where an accelerator computes the same step (with ``inference.compile``, a chain of
    :class:`~pclab.core.layers.Dense` layers), :mod:`pclab.core.fast.dispatch` hands it over.
    """
    check_inference(inference)
    if on_step is not None:
        raise ValueError("on_step (incremental PC's weight step inside relaxation) is not defined for the error parametrisation; "
                         "use PCLearning or BPThroughInference with it")
    clamped = frozenset(clamp)
    with torch.set_grad_enabled(differentiable):
        if initial is None:
            start = model.initial_state(clamp, inference.init, generator)
        else:
            model.check_clamp(clamp)
            start = {**initial, **clamp}
    if not differentiable:
        start = {n: v.detach() for n, v in start.items()}
    constant = inference.multipliers(model, 0) or {}
    weights = {n: model.nodes[n].energy.precision * constant.get(n, 1.0) for n in model.error_nodes}
    method = inference.method
    if method == "auto":
        method = "manual" if _manual_applies(model, free, clamped) else "autograd"
    elif method == "manual" and not _manual_applies(model, free, clamped):
        raise ValueError("inference method 'manual' with the error parametrisation needs forward_with_vjp on every edge out of a "
                         "free node; use 'auto' or 'autograd'")
    with torch.set_grad_enabled(differentiable):
        cached = model.clamped_contributions(start, clamped)
        problem = ErrorProblem(model, {n: start[n] for n in clamp}, free, weights, cached, method)
        forward = initial is None and inference.init == "forward"
        mu0 = model.predictions(start, cached=cached) if problem.errors else {}
        variables = {}
        for n in problem.variables:
            if n in problem.roots:
                variables[n] = start[n].clone()
            elif forward and n not in model.amortisers:
                variables[n] = torch.zeros_like(start[n])
            else:
                variables[n] = start[n] - mu0[n]
    if not differentiable:
        variables = {n: v.detach() for n, v in variables.items()}
    opt = inference.optimizer
    states = {n: opt.init(v) for n, v in variables.items()}

    def step(t: int, current: State, opt_states: dict) -> tuple[State, dict, dict]:
        grads, energies, _, _ = problem.grads(current, differentiable)
        new, new_states = {}, {}
        for n in current:
            new[n], new_states[n] = opt.update(current[n], grads[n], opt_states[n], differentiable)
        return new, new_states, energies

    fast = dispatch.error_steps(model, problem, inference, differentiable=differentiable or checkpoint_slots is not None)
    if fast is not None:  # an accelerator computes each step (its own optimiser state)
        states, step = fast.init(variables), fast.step

    def measure(current: State) -> None:
        with torch.no_grad():
            values, mu = problem.states(current)
            trajectory.record(model, values, start, problem.energies(current, mu), mu)

    if checkpoint_slots is not None:
        if trajectory is not None or on_step is not None:
            raise ValueError("checkpoint_slots reruns steps in the backward pass: not with record or on_step")
        variables, taken = _binomial(problem, variables, states, inference, truncate, checkpoint_slots, model)
    else:
        grad_context = torch.enable_grad() if differentiable else torch.no_grad()
        with grad_context:
            variables, states, taken = unrolled_relaxation(step, variables, states, inference.steps, inference.tolerance, truncate,
                                                           differentiable, checkpoint_steps,
                                                           (lambda t, v: measure(v)) if trajectory is not None else None)
            if trajectory is not None:
                measure(variables)
    with torch.set_grad_enabled(differentiable):
        values, _ = problem.states(variables)
    return {n: values[n] for n in start}, start, taken


def _binomial(problem: ErrorProblem, variables: State, states: dict, inference: Inference, truncate: int | None,
              slots: int, model: PCN) -> tuple[State, int]:
    """The differentiable loop with binomial checkpointing (:mod:`pclab.core.binomial`): the same
    values as the unrolled loop and, up to round-off, the same gradients."""
    opt = inference.optimizer

    def advance(t: int, state, constants):
        current, opt_states = state
        grads, energies, _, _ = problem.with_constants(**constants).grads(current, torch.is_grad_enabled())
        new, new_states = {}, {}
        for n in current:  # the functional update even without a graph: stored states are reused
            new[n], new_states[n] = opt.update(current[n], grads[n], opt_states[n], True)
        return (new, new_states), energies

    constants = {"clamp": problem.clamp, "cached": problem.cached}
    params = [p for p in model.parameters() if p.requires_grad]
    state, taken = checkpointed_relaxation(advance, (variables, states), constants, inference.steps, inference.tolerance, truncate,
                                           slots, params)
    return state[0], taken
