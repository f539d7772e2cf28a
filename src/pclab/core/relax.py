"""Relaxation: inferring the free nodes by descending the energy.

:class:`Inference` holds *how* to relax (steps, latent optimiser, initialisation, precision
schedule, early stop); :func:`relax` runs it on one batch and returns a :class:`Relaxed` state.
Recording a :class:`Trajectory` is opt-in and costs nothing when off.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import torch
from torch.utils.checkpoint import checkpoint

from . import chain as dense
from . import chain_adjoint, compiled
from .binomial import checkpointed_loop
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
        compile: run the Dense-chain fast path under ``torch.compile``: relaxation, PC and
            incremental-PC steps with their optimiser update (:mod:`pclab.core.compiled`) and
            bp-through-inference's relaxation and hand-derived reverse pass
            (:mod:`pclab.core.compiled_adjoint`). The first compiled batch (the second, with an
            optimiser that first has to create its state) compiles for seconds to tens of
            seconds, later ones run faster. Any other PCN (conv, transposed-conv, any graph)
            relaxed with pclab's ``SGD`` gets its latent gradient -- predictions, energies and
            their gradient -- as one compiled graph per step (:func:`pclab.core.compiled.latent_grads`),
            in non-differentiable relaxations whose edge modules neither sample nor move running
            statistics; everything else runs the eager code.
        check_finite: :func:`relax` raises ``FloatingPointError`` naming the first node whose final
            values hold NaN or Inf (one check after the last step). ``False`` returns them as they are,
            for callers that diagnose divergence themselves (the training loop).
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
    chain: tuple[dense.Plan, dense.ChainState] | None = field(default=None, repr=False, compare=False)
    """Set when the Dense-chain fast path relaxed: its plan, values and predictions (internal)."""


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

    A chain of :class:`~pclab.core.layers.Dense` layers relaxed with pclab's ``SGD`` or ``Adam`` takes
    the hand-derived fast path of :mod:`pclab.core.chain` (the same values; under
    ``inference.compile`` a compiled graph) unless ``record``, ``on_step``, a tolerance,
    ``truncate``, ``checkpoint_steps`` or ``checkpoint_slots`` ask for the general code.
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
        return _finite(model, _relax_binomial(model, clamp, inference, truncate, checkpoint_slots, initial, generator), inference)
    clamped = frozenset(clamp)
    general = record or on_step is not None or inference.tolerance is not None or truncate is not None or checkpoint_steps
    if not general:  # the Dense-chain fast path (differentiable too: autograd through its ops)
        structure = fast_chain(model, inference)
        if structure is not None:
            return _finite(model, _relax_chain(model, structure, clamp, inference, initial, generator, differentiable), inference)
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

        # compiled gradients with pclab's SGD only: Adam-like rules divide by the gradient's own
        # size, and where a feed-forward start makes it exactly zero the compiled graph's rounding
        # (~1e-8, its tanh is not ATen's) would become steps of ~lr/2
        traced = inference.compile and not differentiable and sources is None and type(opt) is SGD and compiled.traceable(model, free)

        def grads_at(t: int, vals: State):
            multipliers = inference.multipliers(model, t)
            if traced:  # a compiled graph (any PCN)
                out = compiled.latent_grads(model, vals, free, clamped, multipliers, cached)
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

        previous = None
        taken = 0
        for t in range(inference.steps):
            if trajectory is not None:
                measure(t, values)
            if differentiable and truncate is not None and t == inference.steps - truncate:
                values = {n: v.detach() for n, v in values.items()}
                opt_states = {n: _detach(s) for n, s in opt_states.items()}
            if differentiable and checkpoint_steps:
                values, opt_states, energies = checkpoint(step, t, values, opt_states, use_reentrant=False)
            else:
                values, opt_states, energies = step(t, values, opt_states)
            taken = t + 1
            if inference.tolerance is not None:
                total = float(sum(e.detach().sum() for e in energies.values())) if energies else 0.0
                if previous is not None and abs(previous - total) <= inference.tolerance * max(abs(previous), 1e-30):
                    break
                previous = total
        if differentiable and truncate == 0:  # through the last 0 steps: the final state is a constant
            values = {n: v.detach() for n, v in values.items()}
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
    taken = inference.steps
    if inference.tolerance is not None:  # a graph-free pass decides where the general loop would stop
        state, previous = start, None
        with torch.no_grad():
            for t in range(inference.steps):
                state, energies = advance(t, state, constants)
                total = float(sum(e.sum() for e in energies.values())) if energies else 0.0
                if previous is not None and abs(previous - total) <= inference.tolerance * max(abs(previous), 1e-30):
                    taken = t + 1
                    break
                previous = total
    # where the general loop detaches (truncate): at step steps - truncate if it gets there, and
    # at the end for truncate = 0
    cut = None
    if truncate is not None:
        if 0 <= inference.steps - truncate < taken:
            cut = inference.steps - truncate
        elif truncate == 0:
            cut = taken
    state = start
    if cut is not None:
        with torch.no_grad():
            state = (
                {n: v.detach() for n, v in state[0].items()},
                {n: _detach(s) for n, s in state[1].items()},
            )
            for t in range(cut):
                state, _ = advance(t, state, constants)
    first = cut or 0
    params = [p for p in model.parameters() if p.requires_grad]
    state = checkpointed_loop(lambda t, s, c: advance(t, s, c)[0], state, constants, taken - first, slots, params, start=first)
    values = {n: state[0][n] if n in free else v for n, v in initial.items()}
    with torch.enable_grad():
        values = _release_readouts(model, values, clamped, sources)
    return Relaxed(values, initial, clamped, taken)


def fast_chain(model: PCN, inference: Inference) -> dense.DenseChain | None:
    """The Dense-chain structure of ``model`` when :mod:`pclab.core.chain` can relax it with
    ``inference`` (the caller also checks that nothing asks for the general loop)."""
    if inference.method != "auto" or not dense.supports(inference.optimizer):
        return None
    return dense.dense_chain(model)


def chain_plan(model: PCN, structure: dense.DenseChain, clamped: frozenset[str], inference: Inference, feed_forward: bool) -> dense.Plan:
    """The static description of relaxing ``structure`` with ``inference`` (see :class:`~pclab.core.chain.Plan`)."""
    names = structure.nodes
    free = set(free_nodes(model, clamped))
    precisions = (0.0, *(e.precision for e in structure.energies))
    if inference.multipliers(model, 0) is None:
        weights = (precisions,) * inference.steps
    else:
        weights = tuple(
            (0.0, *(p * m.get(n, 1.0) for p, n in zip(precisions[1:], names[1:])))
            for m in (inference.multipliers(model, t) for t in range(inference.steps))
        )
    return dense.Plan(
        chain=structure,
        clamped=tuple(n in clamped for n in names),
        free=tuple(n in free for n in names),
        active=tuple(i >= 1 and model.active(n, clamped) for i, n in enumerate(names)),
        steps=inference.steps,
        optimizer=inference.optimizer,
        weights=weights,
        fixed_prediction=inference.fixed_prediction,
        feed_forward=feed_forward,
    )


def _relax_chain(
    model: PCN,
    structure: dense.DenseChain,
    clamp: Mapping[str, torch.Tensor],
    inference: Inference,
    initial: State | None,
    generator: torch.Generator | None,
    differentiable: bool = False,
) -> Relaxed:
    """:func:`relax` on the Dense-chain fast path (same result, see :mod:`pclab.core.chain`)."""
    clamped = frozenset(clamp)
    names = structure.nodes
    order = [*clamp, *(n for n in names if n not in clamped)]  # the general loop's key order
    feed_forward = initial is None and inference.init == "forward"
    plan = chain_plan(model, structure, clamped, inference, feed_forward)
    params = structure.params()
    with torch.set_grad_enabled(differentiable):
        if feed_forward:
            model.check_clamp(clamp)
            given = [clamp.get(n) for n in names]
            out = compiled.relax_values(plan, params, given) if inference.compile and not differentiable else None
            if out is not None:  # compiled: the values only, no predictions to hand on
                values, start = dict(zip(names, out[0])), dict(zip(names, out[1]))
                return Relaxed({n: values[n] for n in order}, {n: start[n] for n in order}, clamped, inference.steps)
            # bp-through-inference: the hand-derived reverse pass where it applies, else autograd
            state = chain_adjoint.relax(plan, params, given, compile=inference.compile) if differentiable else None
            if state is None:
                start, predictions = dense.feed_forward(plan, params, given)
        else:
            if initial is None:
                values = model.initial_state(clamp, inference.init, generator)
            else:
                model.check_clamp(clamp)
                values = {**initial, **clamp}
            start = [values[n] if differentiable else values[n].detach() for n in names]
            predictions = None
            state = chain_adjoint.relax(plan, params, [clamp.get(n) for n in names], start, compile=inference.compile) if differentiable else None
        if state is None:
            state = dense.relax_chain(plan, params, start, predictions, differentiable)
    index = {n: i for i, n in enumerate(names)}
    return Relaxed(
        values={n: state.values[index[n]] for n in order},
        initial={n: state.initial[index[n]] for n in order},
        clamped=clamped,
        steps=inference.steps,
        chain=(plan, state),
    )


def _detach(state):
    if isinstance(state, torch.Tensor):
        return state.detach()
    if isinstance(state, dict):
        return {k: _detach(v) for k, v in state.items()}
    return state


def _release_readouts(model: PCN, values: State, clamped: frozenset[str], sources: State | None) -> State:
    readouts = [n for n in model.error_nodes if not model.active(n, clamped)]
    if not readouts:
        return values
    inputs = values if sources is None else {**values, **sources}
    values = dict(values)
    for n in readouts:
        values[n] = model.nodes[n].energy.released(model._prediction(n, inputs))
    return values
