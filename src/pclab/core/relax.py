"""Relaxation: inferring the free nodes by descending the energy.

:class:`Inference` holds *how* to relax (steps, latent optimiser, initialisation, precision
schedule, early stop); :func:`relax` runs it on one batch and returns a :class:`Relaxed` state.
Recording a :class:`Trajectory` is opt-in and costs nothing when off.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import torch

from . import epc
from .binomial import checkpointed_relaxation, unrolled_relaxation
from .fast import dispatch
from .graph import PCN, State
from .optim import SGD, LatentOptimizer
from .precision import Constant, PrecisionSchedule

StepHook = Callable[[int, State], None]


@dataclass(frozen=True)
class Inference:
    """How to relax a PCN.

    Args:
        steps: number of inference steps ``T`` (>= 0).
        optimizer: latent update rule (:class:`~pclab.core.optim.SGD`, ``Adam``, ``TorchOptimizer``).
        init: first values of the free nodes: ``"forward"`` (feed-forward pass / amortisers),
            ``"zeros"`` or ``"random"``.
        precision: a schedule for every error node, or a mapping node name -> schedule
            (missing nodes: constant 1).
        tolerance: stop early once the relative change of the total energy between two steps falls
            below this (``None``: always run ``steps``).
        fixed_prediction: compute every prediction (and its Jacobian) from the initial values, not
            the current ones (the fixed-prediction assumption).
        method: latent gradients by ``"auto"``, ``"manual"`` or ``"autograd"`` (see
            :meth:`PCN.latent_grads`).
        compile: let the compiled accelerators run (:mod:`pclab.core.fast.dispatch`): a Dense
            chain's relaxation and learning steps with their optimiser update as compiled graphs,
            and any other PCN relaxed by pclab's ``SGD`` its latent gradient as one compiled graph
            per step. The first compiled batch (the second, with an optimiser that first has to
            create its state) compiles for seconds to tens of seconds, later ones run faster.
        accelerators: names of the accelerators relaxation and learning may use
            (:data:`pclab.core.fast.ACCELERATORS`); ``None``: every one that applies; ``()``: the
            reference code only. Each computes what the reference code does (tests/fast).
        check_finite: :func:`relax` raises ``FloatingPointError`` naming the first node whose final
            values hold NaN or Inf (one check after the last step). ``False`` returns them as they are,
            for callers that diagnose divergence themselves (the training loop).
        parametrisation: the relaxation's variables: ``"state"`` (state-based PC, the node values)
            or ``"error"`` (error-based PC, ePC: the prediction errors of the free nodes and the
            free roots' values, states computed forward; the same equilibria in far fewer steps
            on deep chains, see :mod:`pclab.core.epc`; static precisions only, no
            ``fixed_prediction``; with ``compile``, a Dense chain's steps as a compiled graph).
    """

    steps: int = 20
    optimizer: LatentOptimizer = field(default_factory=SGD)
    init: str = "forward"
    precision: PrecisionSchedule | Mapping[str, PrecisionSchedule] = field(default_factory=Constant)
    tolerance: float | None = None
    fixed_prediction: bool = False
    method: str = "auto"
    compile: bool = False
    check_finite: bool = True
    accelerators: tuple[str, ...] | None = None
    parametrisation: str = "state"

    def __post_init__(self) -> None:
        if not isinstance(self.steps, int) or isinstance(self.steps, bool) or self.steps < 0:
            raise ValueError(f"inference steps must be an integer >= 0, got {self.steps!r}")
        if self.init not in ("forward", "zeros", "random"):
            raise ValueError(f"inference init must be 'forward', 'zeros' or 'random', got {self.init!r}")
        if self.tolerance is not None and not (self.tolerance > 0):
            raise ValueError(f"inference tolerance must be > 0 or None, got {self.tolerance!r}")
        if self.method not in ("auto", "manual", "autograd"):
            raise ValueError(f"inference method must be 'auto', 'manual' or 'autograd', got {self.method!r}")
        if not isinstance(self.compile, bool):
            raise ValueError(f"inference compile must be True or False, got {self.compile!r}")
        if self.accelerators is not None:
            unknown = [a for a in self.accelerators if a not in dispatch.ACCELERATORS] if isinstance(self.accelerators, tuple) else None
            if unknown is None or unknown:
                raise ValueError(f"inference accelerators must be None or a tuple of names from {dispatch.ACCELERATORS}, got {self.accelerators!r}")
        if self.parametrisation not in epc.PARAMETRISATIONS:
            raise ValueError(f"inference parametrisation must be 'state' or 'error', got {self.parametrisation!r}")
        if self.parametrisation == "error":
            epc.check_inference(self)

    def multipliers(self, model: PCN, step: int) -> dict[str, float] | None:
        """Precision multipliers of every error node at ``step`` (``None`` when all are 1)."""
        schedules = self.precision
        if not isinstance(schedules, Mapping):
            if schedules.is_constant and schedules(0, 0, 1) == 1.0:
                return None
            schedules = {n: schedules for n in model.error_nodes}
        return {
            name: float(schedules[name](step, model.layer_index[name], model.num_layers)) if name in schedules else 1.0
            for name in model.error_nodes
        }


@dataclass
class Trajectory:
    """What happened at each step ``t = 0 .. steps`` (``steps + 1`` rows; row ``t`` is the state
    after ``t`` updates).

    Attributes:
        nodes: names of the error nodes, the column order of ``energy`` and ``error_norm``.
        energy: ``(steps+1, nodes)`` batch-mean precision-weighted energy per node (zero for
            inactive nodes); schedules included.
        error_norm: ``(steps+1, nodes)`` batch-mean L2 norm of each node's prediction error.
        free: names of the free nodes, the column order of ``drift``.
        drift: ``(steps+1, free)`` batch-mean L2 distance of each free node from its initial value.
    """

    nodes: list[str]
    free: list[str]
    energy: list[list[float]] = field(default_factory=list)
    error_norm: list[list[float]] = field(default_factory=list)
    drift: list[list[float]] = field(default_factory=list)

    def record(self, model: PCN, values: State, initial: State, energies: Mapping[str, torch.Tensor], mu: State) -> None:
        with torch.no_grad():
            zero = next(iter(values.values())).new_zeros(())
            e = [energies[n].mean() if n in energies else zero for n in self.nodes]
            err = [_norm(values[n] - mu[n]) if n in mu else zero for n in self.nodes]
            dr = [_norm(values[n] - initial[n]) for n in self.free]
            row = torch.stack(e + err + dr).double().cpu().tolist()
        k, m = len(self.nodes), 2 * len(self.nodes)
        self.energy.append(row[:k])
        self.error_norm.append(row[k:m])
        self.drift.append(row[m:])

    def total_energy(self) -> list[float]:
        """Total energy per step."""
        return [sum(r) for r in self.energy]


def _norm(t: torch.Tensor) -> torch.Tensor:
    return t.reshape(t.shape[0], -1).norm(dim=1).mean()


@dataclass
class Relaxed:
    """The result of :func:`relax`.

    Attributes:
        values: the relaxed state (free released cross-entropy nodes hold ``softmax(mu)``).
        initial: the state before the first step (the feed-forward values with ``init="forward"``).
        clamped: the clamped node names.
        steps: steps taken (fewer than asked when the tolerance stopped it).
        trajectory: per-step records when ``record=True``.
    """

    values: State
    initial: State
    clamped: frozenset[str]
    steps: int
    trajectory: Trajectory | None = None


def free_nodes(model: PCN, clamped: frozenset[str]) -> list[str]:
    """Nodes relaxation moves: not clamped, and not a released read-out."""
    readouts = {n for n in model.error_nodes if not model.active(n, clamped)}
    return [n for n in model.order if n not in clamped and n not in readouts]


def relax(
    model: PCN,
    clamp: Mapping[str, torch.Tensor],
    inference: Inference,
    *,
    record: bool = False,
    differentiable: bool = False,
    truncate: int | None = None,
    checkpoint_steps: bool = False,
    checkpoint_slots: int | None = None,
    on_step: StepHook | None = None,
    initial: State | None = None,
    generator: torch.Generator | None = None,
) -> Relaxed:
    """Infer the free nodes of ``model`` for one batch.

    Args:
        model: the network.
        clamp: values of the clamped nodes, name -> ``(batch, *shape)``.
        inference: how to relax.
        record: keep a :class:`Trajectory`.
        differentiable: keep the unrolled graph so a loss on the result can be backpropagated to the
            parameters (``bp-through-inference``); otherwise run under ``no_grad``.
        truncate: with ``differentiable``, backpropagate through the last ``truncate`` steps only.
        checkpoint_steps: with ``differentiable``, recompute each step in the backward pass instead of
            storing its intermediate tensors (memory per step: the state only).
        checkpoint_slots: with ``differentiable``, binomial checkpointing instead: keep at most this
            many intermediate states (latents and latent-optimiser state) and recompute the rest in
            the backward pass (:mod:`pclab.core.binomial`): memory independent of ``steps``, at the
            cost of :func:`~pclab.core.binomial.schedule_cost` extra graph-free steps. Not with
            ``record`` or ``on_step``; with a tolerance, a graph-free first pass finds the number of
            steps.
        on_step: called as ``on_step(t, values)`` at each step ``t = 0 .. steps-1``, after the
            latent gradients of step ``t`` are computed and before they are applied (incremental
            PC takes its weight step here). Disables the cache of clamped-input predictions.
        initial: start from these values instead of ``inference.init``.
        generator: random source for ``init="random"``.

    This is the reference algorithm; where an accelerator computes the same relaxation (e.g. a
    chain of :class:`~pclab.core.layers.Dense` layers), :mod:`pclab.core.fast.dispatch` hands it
    over (:func:`pclab.core.fast.path` names it).
    """
    if initial is not None:
        model.check_state(initial, clamp, "relax initial")
    if truncate is not None and not (isinstance(truncate, int) and truncate >= 0):
        raise ValueError(f"truncate must be an integer >= 0 or None, got {truncate!r}")
    if (truncate is not None or checkpoint_steps or checkpoint_slots is not None) and not differentiable:
        raise ValueError("truncate, checkpoint_steps and checkpoint_slots only apply with differentiable=True")
    if checkpoint_slots is not None:
        if not isinstance(checkpoint_slots, int) or isinstance(checkpoint_slots, bool) or checkpoint_slots < 1:
            raise ValueError(f"checkpoint_slots must be an integer >= 1 or None, got {checkpoint_slots!r}")
        if checkpoint_steps:
            raise ValueError("checkpoint_steps and checkpoint_slots are two checkpointing schemes; choose one")
        if record or on_step is not None:
            raise ValueError("checkpoint_slots reruns steps in the backward pass: not with record or on_step")
    if inference.parametrisation == "error":  # ePC: relaxation over the errors, its own loop
        free = free_nodes(model, frozenset(clamp))
        trajectory = Trajectory(list(model.error_nodes), free) if record else None
        values, start, taken = epc.relax_errors(
            model, clamp, inference, free, trajectory=trajectory, differentiable=differentiable, truncate=truncate,
            checkpoint_steps=checkpoint_steps, checkpoint_slots=checkpoint_slots, on_step=on_step, initial=initial, generator=generator,
        )
        return _finite(model, Relaxed(values, start, frozenset(clamp), taken, trajectory), inference)
    if checkpoint_slots is not None:
        return _finite(model, _relax_binomial(model, clamp, inference, truncate, checkpoint_slots, initial, generator), inference)
    clamped = frozenset(clamp)
    fast = dispatch.relaxation(model, clamp, inference, differentiable=differentiable, record=record, on_step=on_step,
                               truncate=truncate, checkpoint_steps=checkpoint_steps, initial=initial)
    if fast is not None:  # an accelerator computes this relaxation
        return _finite(model, Relaxed(*fast(initial, generator), clamped, inference.steps), inference)
    with torch.set_grad_enabled(differentiable):
        if initial is None:
            initial = model.initial_state(clamp, inference.init, generator)
        else:
            model.check_clamp(clamp)
            initial = {**initial, **clamp}
    if not differentiable:
        initial = {n: v.detach() for n, v in initial.items()}
    free = free_nodes(model, clamped)
    values = dict(initial)
    for n in free:  # latent updates may work in place; keep ``initial`` intact
        values[n] = values[n].clone()
    sources = {n: initial[n] for n in free} if inference.fixed_prediction else None
    opt = inference.optimizer
    opt_states = {n: opt.init(values[n]) for n in free}
    trajectory = Trajectory(list(model.error_nodes), list(free)) if record else None

    grad_context = torch.enable_grad() if differentiable else torch.no_grad()
    with grad_context:
        cached = None
        if on_step is None and not inference.fixed_prediction:
            cached = model.clamped_contributions(values, clamped)

        fast_grads = dispatch.latent_grads(model, inference, free, differentiable=differentiable, fixed_prediction=sources is not None)

        def grads_at(t: int, vals: State):
            multipliers = inference.multipliers(model, t)
            out = None if fast_grads is None else fast_grads(vals, clamped, multipliers, cached)  # (None: run the reference)
            if out is not None:
                return out
            return model.latent_grads(
                vals, free, clamped, multipliers, sources, cached, differentiable=differentiable, method=inference.method,
            )

        def step(t: int, vals: State, states: dict) -> tuple[State, dict, dict]:
            grads, energies = grads_at(t, vals)
            if on_step is not None:
                on_step(t, vals)
            new_vals, new_states = dict(vals), {}
            for n in free:
                new_vals[n], new_states[n] = opt.update(vals[n], grads[n], states[n], differentiable)
            return new_vals, new_states, energies

        def measure(t: int, vals: State) -> None:
            assert trajectory is not None
            mu = model.predictions(vals, sources)
            energies = model.energies(vals, clamped, mu, inference.multipliers(model, t))
            trajectory.record(model, vals, initial, energies, mu)

        values, opt_states, taken = unrolled_relaxation(step, values, opt_states, inference.steps, inference.tolerance, truncate,
                                                        differentiable, checkpoint_steps, measure if trajectory is not None else None)
        if trajectory is not None:
            measure(taken, values)
        values = _release_readouts(model, values, clamped, sources)
    return _finite(model, Relaxed(values, initial, clamped, taken, trajectory), inference)


def _finite(model: PCN, result: Relaxed, inference: Inference) -> Relaxed:
    """``result``, after one check that every final value is finite (``inference.check_finite``): the L2
    norm of each node by one foreach kernel and one synchronisation (a finite norm means finite entries);
    only if a norm is not finite (NaN, Inf, or an overflow of the norm itself) are the entries inspected."""
    if not inference.check_finite or not result.values:
        return result
    values = [v.detach() for v in result.values.values() if v.numel()]
    with torch.no_grad():
        if not values or bool(torch.stack([n.float() for n in torch._foreach_norm(values)]).isfinite().all()):
            return result
        name = next((n for n, v in result.values.items() if not bool(torch.isfinite(v.detach()).all())), None)
    if name is None:  # large but finite values: the norm overflowed
        return result
    raise FloatingPointError(f"relax: node {name!r} holds NaN or Inf after {result.steps} inference steps (expected finite values); "
                             f"lower the latent step size (the inference optimizer's lr) or check the clamped values")


def _relax_binomial(
    model: PCN,
    clamp: Mapping[str, torch.Tensor],
    inference: Inference,
    truncate: int | None,
    slots: int,
    initial: State | None,
    generator: torch.Generator | None,
) -> Relaxed:
    """:func:`relax` with ``differentiable`` and binomial checkpointing (``checkpoint_slots``): the
    same values and, up to round-off, the same gradients as the unrolled general loop."""
    clamped = frozenset(clamp)
    with torch.enable_grad():
        if initial is None:
            initial = model.initial_state(clamp, inference.init, generator)
        else:
            model.check_clamp(clamp)
            initial = {**initial, **clamp}
        free = free_nodes(model, clamped)
        sources = {n: initial[n] for n in free} if inference.fixed_prediction else None
        cached = None
        if not inference.fixed_prediction:  # as in the general loop
            cached = model.clamped_contributions(initial, clamped)
    # everything a step reads but does not move; tensors in here that carry a graph (cached
    # predictions, fixed-prediction sources, amortised read-outs) get their gradient summed over steps
    constants = {"fixed": {n: v for n, v in initial.items() if n not in free}, "sources": sources, "cached": cached}
    opt = inference.optimizer

    def advance(t: int, state, const) -> tuple[tuple[State, dict], dict[str, torch.Tensor]]:
        values, opt_states = state
        grads, energies = model.latent_grads(
            {**const["fixed"], **values}, free, clamped, inference.multipliers(model, t), const["sources"],
            const["cached"], differentiable=torch.is_grad_enabled(), method=inference.method,
        )
        new_values, new_states = {}, {}
        for n in free:  # the functional update even without a graph: stored states are reused
            new_values[n], new_states[n] = opt.update(values[n], grads[n], opt_states[n], True)
        return (new_values, new_states), energies

    start = ({n: initial[n] for n in free}, {n: opt.init(initial[n]) for n in free})
    params = [p for p in model.parameters() if p.requires_grad]
    state, taken = checkpointed_relaxation(advance, start, constants, inference.steps, inference.tolerance, truncate, slots, params)
    values = {n: state[0][n] if n in free else v for n, v in initial.items()}
    with torch.enable_grad():
        values = _release_readouts(model, values, clamped, sources)
    return Relaxed(values, initial, clamped, taken)


def _release_readouts(model: PCN, values: State, clamped: frozenset[str], sources: State | None) -> State:
    readouts = [n for n in model.error_nodes if not model.active(n, clamped)]
    if not readouts:
        return values
    inputs = values if sources is None else {**values, **sources}
    values = dict(values)
    for n in readouts:
        values[n] = model.nodes[n].energy.released(model._prediction(n, inputs))
    return values
