"""The one door to the accelerators: which fast path, if any, computes a relaxation or a learning step.

:func:`~pclab.core.relax.relax` and the rules of :mod:`pclab.core.learning` are the reference
algorithm. Each asks this module whether an accelerator computes the same thing faster for its
inputs; the answer is a callable to run instead, or ``None``: run the reference code. Nothing
else in the core knows the accelerators exist, and each is tested equal to the reference
(``tests/fast``). :func:`path` names the choice for a given model, inference and rule.

The accelerators (:data:`ACCELERATORS`):

* ``"chain"``: a chain of plain pclab :class:`~pclab.core.layers.Dense` layers relaxed by pclab's
  ``SGD`` or ``Adam`` -- the relaxation, the PC weight gradients and incremental PC written out by
  hand (:mod:`~pclab.core.fast.chain`); bp-through-inference differentiates these ops by autograd
  where the reverse pass below does not apply;
* ``"chain-adjoint"``: bp-through-inference on such a chain relaxed by latent ``SGD``, by a
  hand-derived reverse pass (:mod:`~pclab.core.fast.chain_adjoint`, :mod:`~pclab.core.fast.differentiable`);
* ``"compiled-chain"``, ``"compiled-adjoint"``: the same under ``torch.compile``, the optimiser's
  update in the graph where it can be traced (:mod:`~pclab.core.fast.compiled`,
  :mod:`~pclab.core.fast.compiled_adjoint`);
* ``"compiled-grads"``: any other PCN relaxed by pclab's ``SGD`` without a graph: each step's latent
  gradient as one compiled graph;
* ``"compiled-update"``: bp-through-inference where no chain path applies: the optimiser's step
  after ``backward`` as a compiled graph;
* ``"compiled-epc"``: the error parametrisation (ePC, :mod:`pclab.core.epc`) of such a Dense chain
  relaxed by pclab's ``SGD`` (with or without momentum) or ``Adam``: each step of the reference
  loop -- states from the errors, energies, the reverse sweep to the errors, the latent update --
  as one compiled graph (:mod:`~pclab.core.fast.error_chain`), for any clamped nodes, any
  ``init``, with a trajectory or a tolerance. Not for bp-through-inference: a differentiable
  ePC relaxation runs the reference loop (its rule may still take ``"compiled-update"``).

The compiled ones run only with ``Inference(compile=True)``. ``Inference.accelerators`` restricts
the choice (``()``: the reference code only); the chain-based accelerators of state-based PC all
build on ``"chain"``. An error-parametrised inference takes ``"compiled-epc"`` and
``"compiled-update"`` only, a state-based one every other.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from ..graph import PCN, State
from ..loss import TaskLoss
from ..optim import SGD
from . import chain_adjoint, compiled, differentiable, error_chain
from .chain import (
    ChainState,
    DenseChain,
    Plan,
    anchor,
    dense_chain,
    feed_forward,
    incremental,
    relax_chain,
    set_grads,
    still_valid,
    supports,
    weight_gradients,
)

ACCELERATORS = ("chain", "chain-adjoint", "compiled-chain", "compiled-adjoint", "compiled-grads", "compiled-update", "compiled-epc")
"""The accelerators' names, as :func:`path` reports them and ``Inference.accelerators`` selects them."""

ERROR_ACCELERATORS = ("compiled-epc", "compiled-update")
"""The accelerators that apply to ``Inference(parametrisation="error")`` (ePC); the others are state-based PC's."""

REFERENCE = "reference"

Relaxation = Callable[[State | None, torch.Generator | None], tuple[State, State]]
"""``(initial, generator) -> (values, initial values)``: a relaxation (see :func:`relaxation`)."""

LearningStep = Callable[[], dict[str, float]]
"""A learning rule's whole step on the batch it was chosen for: its metrics."""


@dataclass
class RuleCache:
    """What the accelerators keep between the steps of one learning rule (its ``fast_cache``).

    Attributes:
        plan: ``(inference, clamped node names, Plan)`` of the last Dense-chain step.
        hyperparameters: the optimiser's when a compiled step first ran (a change would recompile:
            the step then runs eagerly).
        reached: bp-through-inference: ``(plan, loss terms, gradients wanted)`` -> which of the
            chain's parameters a gradient reaches (known after the first, eager, step).
    """

    plan: tuple[Any, frozenset[str], Plan] | None = None
    hyperparameters: tuple | None = None
    reached: dict[tuple, tuple[bool, ...]] = field(default_factory=dict)


def allowed(inference: Any, name: str) -> bool:
    """Whether ``inference`` lets accelerator ``name`` run (``compile`` for the compiled ones,
    ``accelerators`` for all; state-based PC's chain-based ones need ``"chain"`` too; each
    parametrisation its own, :data:`ERROR_ACCELERATORS`)."""
    error = inference.parametrisation == "error"
    if (name not in ERROR_ACCELERATORS) if error else (name == "compiled-epc"):
        return False
    if name.startswith("compiled") and not inference.compile:
        return False
    chosen = inference.accelerators
    if chosen is None:
        return True
    return name in chosen and (name in ("compiled-grads", "compiled-update", "compiled-epc") or "chain" in chosen)


# ---------------------------------------------------------------------------- relaxation
def relaxation(
    model: PCN, clamp: Mapping[str, torch.Tensor], inference: Any, *, differentiable: bool = False, record: bool = False,
    on_step: Callable | None = None, truncate: int | None = None, checkpoint_steps: bool = False,
    checkpoint_slots: int | None = None, initial: State | None = None,
) -> Relaxation | None:
    """A relaxation equal to :func:`~pclab.core.relax.relax`'s reference loop for these arguments
    (relax's own), or ``None``: run the loop. Only the Dense-chain accelerators relax whole; a
    trajectory, a step hook, a tolerance, truncation or checkpointing need the loop."""
    if record or on_step is not None or inference.tolerance is not None or truncate is not None or checkpoint_steps:
        return None
    if checkpoint_slots is not None:
        return None
    structure = chain_structure(model, inference)
    if structure is None:
        return None

    def run(initial: State | None, generator: torch.Generator | None) -> tuple[State, State]:
        values, start, _, _ = relax_dense_chain(model, structure, clamp, inference, initial, generator, differentiable)
        return values, start

    return run


def latent_grads(model: PCN, inference: Any, free: Sequence[str], *, differentiable: bool, fixed_prediction: bool) -> Callable | None:
    """For the reference loop of :func:`~pclab.core.relax.relax`: ``(values, clamped, multipliers,
    cached) -> (grads, energies)`` of :meth:`PCN.latent_grads` as one compiled graph
    (:func:`pclab.core.fast.compiled.latent_grads`; ``None`` from it for a batch size no graph
    serves), or ``None`` when that does not apply: a graph to differentiate, fixed predictions,
    a latent optimiser other than pclab's ``SGD`` (an Adam-like rule divides by the gradient's own
    size, and where a feed-forward start makes it exactly zero the compiled graph's rounding would
    become steps of about ``lr / 2``), or an edge module that samples or moves running statistics."""
    if differentiable or fixed_prediction or type(inference.optimizer) is not SGD or not allowed(inference, "compiled-grads"):
        return None
    if not compiled.traceable(model, free):
        return None
    free = list(free)
    return lambda values, clamped, multipliers, cached: compiled.latent_grads(model, values, free, clamped, multipliers, cached)


def error_steps(model: PCN, problem: Any, inference: Any, *, differentiable: bool) -> error_chain.Steps | None:
    """For the loop of :func:`~pclab.core.epc.relax_errors`: the accelerated steps of ``problem``
    (its :class:`~pclab.core.epc.ErrorProblem`; :class:`~pclab.core.fast.error_chain.Steps`: the
    optimiser state and the step), or ``None``: run the reference step."""
    structure = _error_chain(model, inference, differentiable)
    if structure is None or not problem.variables:
        return None
    plan = error_chain.plan(structure, problem, inference.optimizer)
    return error_chain.Steps(plan, structure.params(), problem.clamp, problem.cached, compile=True)


def _error_chain(model: PCN, inference: Any, differentiable: bool) -> DenseChain | None:
    """The Dense chain whose ePC relaxation ``"compiled-epc"`` computes, or ``None``: not
    differentiable (bp-through-inference runs the reference loop), ``method="auto"``, pclab's
    ``SGD`` or ``Adam``, a Dense chain."""
    if differentiable or inference.method != "auto" or not supports(inference.optimizer) or not allowed(inference, "compiled-epc"):
        return None
    return dense_chain(model)


# ---------------------------------------------------------------------------- Dense chains
def chain_structure(model: PCN, inference: Any) -> DenseChain | None:
    """The Dense-chain structure of ``model`` when the chain accelerators may relax it with ``inference``."""
    if inference.method != "auto" or not supports(inference.optimizer) or not allowed(inference, "chain"):
        return None
    return dense_chain(model)


def chain_plan(model: PCN, structure: DenseChain, clamped: frozenset[str], inference: Any, feed_forward: bool) -> Plan:
    """The static description of relaxing ``structure`` with ``inference`` (see :class:`~pclab.core.fast.chain.Plan`)."""
    names = structure.nodes
    precisions = (0.0, *(e.precision for e in structure.energies))
    if inference.multipliers(model, 0) is None:
        weights = (precisions,) * inference.steps
    else:
        weights = tuple(
            (0.0, *(p * m.get(n, 1.0) for p, n in zip(precisions[1:], names[1:])))
            for m in (inference.multipliers(model, t) for t in range(inference.steps))
        )
    return Plan(
        chain=structure,
        clamped=tuple(n in clamped for n in names),
        # relaxation moves a node that is neither clamped nor a released read-out (its root never is one)
        free=tuple(n not in clamped and (i == 0 or model.active(n, clamped)) for i, n in enumerate(names)),
        active=tuple(i >= 1 and model.active(n, clamped) for i, n in enumerate(names)),
        steps=inference.steps,
        optimizer=inference.optimizer,
        weights=weights,
        fixed_prediction=inference.fixed_prediction,
        feed_forward=feed_forward,
    )


def _chain_kind(inference: Any, differentiable: bool, feed_forward: bool, adjoint: bool = True) -> str:
    """Which chain accelerator relaxes (``adjoint``: the reverse pass applies to the plan)."""
    if differentiable:
        if adjoint and allowed(inference, "chain-adjoint"):
            return "compiled-adjoint" if allowed(inference, "compiled-adjoint") else "chain-adjoint"
        return "chain"
    return "compiled-chain" if feed_forward and allowed(inference, "compiled-chain") else "chain"


def relax_dense_chain(
    model: PCN, structure: DenseChain, clamp: Mapping[str, torch.Tensor], inference: Any, initial: State | None,
    generator: torch.Generator | None, differentiable: bool = False, compile: bool = True,
) -> tuple[State, State, Plan, ChainState | None]:
    """``relax(model, clamp, inference)`` on a Dense chain: ``(values, initial values)`` in relax's
    key order, the plan and the relaxed chain state (``None`` from a compiled relaxation, which
    hands on the values only). ``compile=False``: never the compiled relaxation."""
    clamped = frozenset(clamp)
    names = structure.nodes
    order = [*clamp, *(n for n in names if n not in clamped)]  # the reference loop's key order
    start_forward = initial is None and inference.init == "forward"
    plan = chain_plan(model, structure, clamped, inference, start_forward)
    params = structure.params()
    given = [clamp.get(n) for n in names]
    with torch.set_grad_enabled(differentiable):
        state = None
        if start_forward:
            model.check_clamp(clamp)
            if compile and _chain_kind(inference, differentiable, True) == "compiled-chain":
                out = compiled.relax_values(plan, params, given)
                if out is not None:  # the values only, no predictions to hand on
                    values, start = dict(zip(names, out[0])), dict(zip(names, out[1]))
                    return {n: values[n] for n in order}, {n: start[n] for n in order}, plan, None
            if differentiable and allowed(inference, "chain-adjoint"):
                state = differentiable_relax(plan, params, given, None, inference)
            if state is None:
                start, predictions = feed_forward(plan, params, given)
        else:
            if initial is None:
                values = model.initial_state(clamp, inference.init, generator)
            else:
                model.check_clamp(clamp)
                values = {**initial, **clamp}
            start = [values[n] if differentiable else values[n].detach() for n in names]
            predictions = None
            if differentiable and allowed(inference, "chain-adjoint"):
                state = differentiable_relax(plan, params, given, start, inference)
        if state is None:
            state = relax_chain(plan, params, start, predictions, differentiable)
    index = {n: i for i, n in enumerate(names)}
    return {n: state.values[index[n]] for n in order}, {n: state.initial[index[n]] for n in order}, plan, state


def differentiable_relax(plan: Plan, params, given, start, inference: Any) -> ChainState | None:
    """The relaxation autograd differentiates by the hand-derived reverse pass (compiled where
    allowed), or ``None`` where that pass does not apply."""
    return differentiable.relax(plan, params, given, start, compile=allowed(inference, "compiled-adjoint"))


def anchored(model: PCN, clamp: Mapping[str, torch.Tensor], inference: Any) -> tuple[str, ...]:
    """The free nodes a Dense-chain relaxation of ``clamp`` from the feed-forward pass carries
    through the next layer's pre-activation (:class:`~pclab.core.fast.chain.Anchored`: plain SGD, a
    clamped node below, and enough steps and batch rows for it to pay); ``()`` off the chain path."""
    structure = chain_structure(model, inference)
    if structure is None or inference.init != "forward":
        return ()
    plan = chain_plan(model, structure, frozenset(clamp), inference, feed_forward=True)
    params = structure.params()
    with torch.no_grad():
        z, predictions = feed_forward(plan, params, [clamp.get(n) for n in structure.nodes])
        nodes = anchor(plan, params, predictions, z)
    return tuple(structure.nodes[i] for i in sorted(nodes))


# ---------------------------------------------------------------------------- learning rules
def learning_step(rule: Any, batch: Mapping[str, torch.Tensor]) -> LearningStep | None:
    """A step of ``rule`` on ``batch`` equal to the rule's reference step, or ``None``: take that.

    ``rule.algorithm`` names what the rule computes; a subclass that overrides the maths
    (e.g. its own ``weight_energy``) takes the reference step."""
    chosen = _learning(rule, batch)
    return None if chosen is None else chosen[1]


def _learning(rule: Any, batch: Mapping[str, torch.Tensor]) -> tuple[str, LearningStep] | None:
    kind = getattr(rule, "algorithm", None)
    if kind == "pc":
        return _pc(rule, batch)
    if kind == "incremental-pc":
        return _incremental(rule, batch)
    if kind == "bp-through-inference":
        return _bp_through_inference(rule, batch)
    return None


def _reference_maths(rule: Any, *methods: str) -> bool:
    """Every named method of ``rule`` is the one of the class that declares its ``algorithm``."""
    declaring = next(c for c in type(rule).__mro__ if "algorithm" in c.__dict__)
    return all(getattr(type(rule), m) is getattr(declaring, m) for m in methods)


def _plan(rule: Any, clamped: frozenset[str]) -> Plan | None:
    """The Dense-chain plan of ``rule`` relaxing from the feed-forward pass with ``clamped`` (kept
    in ``rule.fast_cache`` until the inference, the clamped nodes or the model's modules change),
    or ``None`` off the chain path."""
    inference, model, cache = rule.inference, rule.model, rule.fast_cache
    memo = cache.plan
    if memo is not None and memo[0] is inference and memo[1] == clamped and still_valid(memo[2].chain, model):
        return memo[2]
    structure = chain_structure(model, inference)
    if structure is None:
        return None
    plan = chain_plan(model, structure, clamped, inference, feed_forward=True)
    cache.plan = (inference, clamped, plan)
    return plan


def _optimizer_compiles(rule: Any) -> bool:
    """Whether the optimiser's step may run compiled: its hyperparameters are those of the first
    time this was asked. A new float learning rate (a scheduler's, a manual edit) would
    recompile a compiled step; tensor rates are updated in place and read by it."""
    if rule.scheduler is not None and not compiled.rates_are_tensors(rule.optimizer):
        return False
    now = compiled.hyperparameters(rule.optimizer)
    if rule.fast_cache.hyperparameters is None:
        rule.fast_cache.hyperparameters = now
    return rule.fast_cache.hyperparameters == now


def _optimizer_step(rule: Any) -> None:
    rule.optimizer.step()
    if rule.scheduler is not None:
        rule.scheduler.step()


def _pc(rule: Any, batch: Mapping[str, torch.Tensor]) -> tuple[str, LearningStep] | None:
    inference = rule.inference
    if not _reference_maths(rule, "weight_energy") or inference.tolerance is not None:
        return None
    if inference.init == "forward" and allowed(inference, "compiled-chain"):
        plan = _plan(rule, frozenset(batch))
        return None if plan is None else ("compiled-chain", lambda: _pc_compiled(rule, plan, batch))
    structure = chain_structure(rule.model, inference)
    return None if structure is None else ("chain", lambda: _pc_chain(rule, structure, batch))


def _pc_chain(rule: Any, structure: DenseChain, batch: Mapping[str, torch.Tensor]) -> dict[str, float]:
    """The PC step with the eager chain relaxation and :func:`~pclab.core.fast.chain.weight_gradients`
    (what ``weight_energy(relaxed).backward()`` gives)."""
    _, _, plan, state = relax_dense_chain(rule.model, structure, batch, rule.inference, None, None, compile=False)
    rule.optimizer.zero_grad(set_to_none=True)
    with torch.no_grad():
        energy, grads = weight_gradients(plan, state, rule.forward_update)
    set_grads(plan.chain, grads)
    _optimizer_step(rule)
    return {"energy": float(energy.detach())}


def _pc_compiled(rule: Any, plan: Plan, batch: Mapping[str, torch.Tensor]) -> dict[str, float]:
    """The whole PC step -- relaxation, weight gradients and the optimiser's step while its
    hyperparameters stay those of the first compiled step -- from a compiled frame; the eager chain
    step for a batch size no compiled graph serves."""
    structure = plan.chain
    params = structure.params()
    rule.model.check_clamp(batch, like=params[0][0])
    clamp = [batch.get(n) for n in structure.nodes]
    if _optimizer_compiles(rule):
        with torch.no_grad():
            energy = compiled.pc_train_step(plan, params, clamp, rule.forward_update, rule.optimizer)
        if energy is not None:
            if rule.scheduler is not None:
                rule.scheduler.step()
            return {"energy": float(energy)}
    else:
        with torch.no_grad():
            out = compiled.pc_step(plan, params, clamp, rule.forward_update)
        if out is not None:
            energy, grads = out
            rule.optimizer.zero_grad(set_to_none=True)
            set_grads(structure, grads)
            _optimizer_step(rule)
            return {"energy": float(energy)}
    return _pc_chain(rule, structure, batch)


def _incremental(rule: Any, batch: Mapping[str, torch.Tensor]) -> tuple[str, LearningStep] | None:
    inference = rule.inference
    if inference.init != "forward" or inference.tolerance is not None or inference.fixed_prediction:
        return None
    plan = _plan(rule, frozenset(batch))
    if plan is None or plan.readout:
        return None
    use_compiled = allowed(inference, "compiled-chain")
    return ("compiled-chain" if use_compiled else "chain"), lambda: _incremental_chain(rule, plan, batch, use_compiled)


def _incremental_chain(rule: Any, plan: Plan, batch: Mapping[str, torch.Tensor], use_compiled: bool) -> dict[str, float]:
    """Incremental PC by :func:`~pclab.core.fast.chain.incremental` (no autograd), or the whole batch
    as one compiled graph (:func:`~pclab.core.fast.compiled.incremental_train_step`) where it applies."""
    structure = plan.chain
    params = structure.params()
    rule.model.check_clamp(batch, like=params[0][0])
    clamp = [batch.get(n) for n in structure.nodes]
    energy = None
    if use_compiled and _optimizer_compiles(rule):
        with torch.no_grad():
            out = compiled.incremental_train_step(plan, params, clamp, rule.optimizer)
        energy = None if out is None else float(out)
    if energy is None:
        def learn(grads: list[tuple[torch.Tensor | None, torch.Tensor | None]]) -> None:
            rule.optimizer.zero_grad(set_to_none=True)
            set_grads(structure, grads)
            rule.optimizer.step()

        with torch.no_grad():
            energy = float(incremental(plan, params, clamp, learn))
    if rule.scheduler is not None:
        rule.scheduler.step()
    return {"energy": energy}


def _bp_through_inference(rule: Any, batch: Mapping[str, torch.Tensor]) -> tuple[str, LearningStep] | None:
    inference = rule.inference
    plain = rule.truncate is None and rule.checkpoint is False and type(rule.loss) is TaskLoss
    if plain and inference.init == "forward" and inference.tolerance is None:
        chosen = _bpti_chain(rule, batch)
        if chosen is not None:
            return chosen
    if allowed(inference, "compiled-update"):
        return "compiled-update", lambda: _bpti_compiled_update(rule, batch)
    return None


def _bpti_chain(rule: Any, batch: Mapping[str, torch.Tensor]) -> tuple[str, LearningStep] | None:
    """Bp-through-inference without autograd on a Dense chain relaxed from its feed-forward pass with
    a plain :class:`~pclab.core.loss.TaskLoss` (:func:`~pclab.core.fast.chain_adjoint.task_loss_grads`:
    the same gradients as ``loss.backward()``); compiled, one graph with the optimiser's step
    where :func:`~pclab.core.fast.compiled.functional_groups` applies."""
    inference = rule.inference
    clamp = {n: batch[n] for n in rule.clamp}
    plan = _plan(rule, frozenset(clamp))
    if plan is None or not allowed(inference, "chain-adjoint"):
        return None
    structure = plan.chain
    params = structure.params()
    size = rule.model.check_clamp(clamp, like=params[0][0])
    given = [clamp.get(n) for n in structure.nodes]
    terms, names = chain_terms(rule.loss, structure)
    targets = [batch[n] for n in names]
    if not chain_adjoint.applies(plan, given) or not plain_targets(structure, terms, targets, params[0][0], size):
        return None
    need = tuple((w.requires_grad, b is not None and b.requires_grad) for w, b in params)
    if not any(w or b for w, b in need):
        return None  # (autograd's own error: nothing requires grad)
    use_compiled = allowed(inference, "compiled-adjoint")

    def step() -> dict[str, float]:
        key = (plan, terms, need)
        reached = rule.fast_cache.reached.get(key)
        values = None
        if use_compiled and reached is not None:  # (a first step runs eagerly: it shows which parameters the loss reaches)
            with torch.no_grad():
                if _optimizer_compiles(rule) and compiled.traces_update(rule.optimizer):
                    values = compiled.bpti_train_step(plan, params, given, terms, targets, need, reached, rule.optimizer)
                    if values is not None and rule.scheduler is not None:
                        rule.scheduler.step()
                else:
                    out = compiled.bpti_step(plan, params, given, terms, targets, need)
                    if out is not None:
                        values = out[0]
                        _set_grads_and_step(rule, key, params, out[1])
        if values is None:
            with torch.no_grad():
                values, grads = chain_adjoint.task_loss_grads(plan, params, given, terms, targets, need)
            _set_grads_and_step(rule, key, params, grads)
        numbers = values.tolist()
        metrics = {"loss": numbers[0]}
        for term, name, value in zip(terms, names, numbers[1:]):
            metrics[f"{term.kind}_{name}"] = value
        return metrics

    return ("compiled-adjoint" if use_compiled else "chain-adjoint"), step


def _set_grads_and_step(rule: Any, key: tuple, params, grads: list[tuple[torch.Tensor | None, torch.Tensor | None]]) -> None:
    """Leave ``grads`` in ``.grad``, note which parameters they reach (``key``: plan, terms, need)
    and take ``torch.optim``'s step (where the path compiles, the optimiser's update is in the graph
    of :func:`pclab.core.fast.compiled.bpti_train_step`; these eager steps are a plan's first, an odd
    batch size's and those of optimisers it cannot trace)."""
    rule.optimizer.zero_grad(set_to_none=True)
    set_grads(key[0].chain, grads)
    # in the flat order of the chain's parameters (compiled.flatten)
    reached = [g is not None and p.requires_grad for pair, layer in zip(grads, params) for g, p in zip(pair, layer) if p is not None]
    rule.fast_cache.reached[key] = tuple(reached)
    _optimizer_step(rule)


def _bpti_compiled_update(rule: Any, batch: Mapping[str, torch.Tensor]) -> dict[str, float]:
    """The reference step (:meth:`objective`, ``backward``) with the optimiser's step as a compiled
    graph (:func:`pclab.core.fast.compiled.optimizer_update`) while its hyperparameters stay put."""
    rule.optimizer.zero_grad(set_to_none=True)
    loss, parts = rule.objective(batch)
    loss.backward()
    if not (_optimizer_compiles(rule) and compiled.optimizer_update(rule.optimizer)):
        rule.optimizer.step()
    if rule.scheduler is not None:
        rule.scheduler.step()
    return {"loss": float(loss.detach()), **parts}


def chain_terms(loss: TaskLoss, chain: DenseChain) -> tuple[tuple[chain_adjoint.LossTerm, ...], tuple[str, ...]]:
    """``loss``'s terms on ``chain``'s nodes, in the order :meth:`TaskLoss.__call__` adds them, and their node names."""
    index = {n: i for i, n in enumerate(chain.nodes)}
    items = [(n, w, "mse") for n, w in loss.reconstruct.items()] + [(n, w, "ce") for n, w in loss.classify.items()]
    return tuple(chain_adjoint.LossTerm(index[n], float(w), kind) for n, w, kind in items), tuple(n for n, _, _ in items)


def plain_targets(chain: DenseChain, terms: Sequence[chain_adjoint.LossTerm], targets: Sequence[torch.Tensor],
                  like: torch.Tensor, batch: int) -> bool:
    """Targets :func:`pclab.core.fast.chain_adjoint.task_loss_grads` takes as they are: the predicted
    node's ``(batch, width)`` in ``like``'s dtype (MSE, CE with class probabilities) or ``(batch,)``
    int64 class indices (CE), on ``like``'s device, not requiring grad; anything else goes to
    ``F.mse_loss`` / ``F.cross_entropy`` themselves (their broadcasting, their errors)."""
    for term, target in zip(terms, targets):
        if not isinstance(target, torch.Tensor) or target.device != like.device or target.requires_grad:
            return False
        if term.kind == "ce" and target.dtype == torch.int64:
            expected: tuple[int, ...] = (batch,)
        else:
            expected = (batch, chain.layers[term.node - 1].linear.out_features)
            if target.dtype != like.dtype:
                return False
        if tuple(target.shape) != expected:
            return False
    return True


# ---------------------------------------------------------------------------- inspection
def path(model: PCN, inference: Any, rule: Any = None, batch: Mapping[str, torch.Tensor] | None = None, **options: Any) -> str:
    """The accelerator (a name in :data:`ACCELERATORS`) or ``"reference"`` that computes a
    relaxation or a learning step.

    Args:
        model, inference: what relaxes.
        rule: a learning rule (of ``model`` and ``inference``): name what its ``step(batch)`` runs;
            ``None``: what ``relax(model, batch, inference, **options)`` runs.
        batch: the clamped values (a rule's whole batch), name -> ``(batch, *shape)``.
        options: :func:`~pclab.core.relax.relax`'s keyword arguments (``differentiable``,
            ``record``, ``on_step``, ``truncate``, ``checkpoint_steps``, ``checkpoint_slots``, ``initial``).

    A rule whose whole step is accelerated reports that accelerator (e.g. ``"chain"``); a rule's
    reference step (or bp-through-inference's with a compiled optimiser update) whose relaxation is
    accelerated reports both, e.g. ``"reference+chain-adjoint"``, ``"compiled-update+compiled-adjoint"``.
    A compiled path runs its eager twin on batch sizes other than the first it compiled for.

    Example:
        >>> path(model, Inference(steps=20), batch={"x": x, "y": y})  # doctest: +SKIP
        'chain'
    """
    if batch is None:
        raise ValueError("path needs the batch: which nodes are clamped decides the path")
    if rule is not None:
        if rule.model is not model:
            raise ValueError("path: the rule learns another model than the one given")
        chosen = _learning(rule, batch)
        step = REFERENCE if chosen is None else chosen[0]
        if step not in (REFERENCE, "compiled-update"):
            return step
        relaxed = _reference_relaxation(rule, batch)
        return step if relaxed == REFERENCE else f"{step}+{relaxed}"
    return _relax_path(model, batch, inference, **options)


def _relax_path(model: PCN, clamp: Mapping[str, torch.Tensor], inference: Any, differentiable: bool = False, record: bool = False,
                on_step: Callable | None = None, truncate: int | None = None, checkpoint_steps: bool = False,
                checkpoint_slots: int | None = None, initial: State | None = None) -> str:
    if inference.parametrisation == "error":
        free = [n for n in model.order if n not in clamp and (n not in model.error_nodes or model.active(n, clamp))]
        fast = on_step is None and free and _error_chain(model, inference, differentiable or checkpoint_slots is not None) is not None
        return "compiled-epc" if fast else REFERENCE
    options = dict(record=record, on_step=on_step, truncate=truncate, checkpoint_steps=checkpoint_steps, checkpoint_slots=checkpoint_slots)
    if relaxation(model, clamp, inference, differentiable=differentiable, **options) is not None:
        feed = initial is None and inference.init == "forward"
        adjoint = False
        if differentiable:  # does the reverse pass take this plan?
            structure = dense_chain(model)
            plan = chain_plan(model, structure, frozenset(clamp), inference, feed)
            given = [clamp.get(n) for n in structure.nodes]
            adjoint = chain_adjoint.applies(plan, given, None if feed else [v for v in given])
        return _chain_kind(inference, differentiable, feed, adjoint)
    if checkpoint_slots is not None:
        return REFERENCE
    clamped = frozenset(clamp)
    free = [n for n in model.order if n not in clamped and (n not in model.error_nodes or model.active(n, clamped))]
    grads = latent_grads(model, inference, free, differentiable=differentiable, fixed_prediction=inference.fixed_prediction)
    return REFERENCE if grads is None else "compiled-grads"


def _reference_relaxation(rule: Any, batch: Mapping[str, torch.Tensor]) -> str:
    """The path of the relaxation inside ``rule``'s reference step."""
    kind = getattr(rule, "algorithm", None)
    inference = getattr(rule, "inference", None)
    if inference is None:
        return REFERENCE
    if kind in ("incremental-pc", "z-il"):
        return _relax_path(rule.model, batch, inference, on_step=lambda t, v: None)
    if kind == "bp-through-inference":
        per_step = rule.checkpoint is True
        slots = None if isinstance(rule.checkpoint, bool) else rule.checkpoint
        clamp = {n: batch[n] for n in rule.clamp}
        return _relax_path(rule.model, clamp, inference, differentiable=True, truncate=rule.truncate,
                           checkpoint_steps=per_step, checkpoint_slots=slots)
    return _relax_path(rule.model, batch, inference)
