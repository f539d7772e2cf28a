"""Binomial checkpointing of a differentiable loop: memory that does not grow with its length.

Backpropagating through ``T`` steps of a loop ``state_{t+1} = step(t, state_t)`` normally keeps
every step's intermediate tensors (memory linear in ``T``); checkpointing every step keeps every
step's *state* (still linear). :func:`checkpointed_loop` keeps at most ``slots`` intermediate
states at any time, whatever ``T``: the first sweep runs without a graph and stores a few states;
the backward pass rebuilds the others from the nearest stored one and reruns one step at a time
with a graph to pull the adjoint through it. Peak memory is therefore ``slots + 2`` states (the
stored ones, the initial one, the one being advanced) plus one step's graph and one set of
accumulated parameter gradients -- constant in ``T``.

Where to store is the binomial (``revolve``-style) schedule: a segment of ``l`` steps reversed
with ``s`` free slots is split at the position that minimises the total number of steps rerun,
using the closed form of that minimum (:func:`min_advances`). The price is recomputation: every
step runs once with a graph (as in plain backprop) and :func:`schedule_cost` more times without
one; with ``c = slots + 1`` stored states (the initial one included) that is at most
``(r + 1) T`` steps, where ``r`` is the smallest integer with ``binom(c + r, c) >= T`` (8 slots:
92 at ``T = 50``, 538 at ``T = 200``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from math import comb
from typing import Any

import torch
from torch.utils.checkpoint import checkpoint

Tree = Any
"""Nested dicts, lists and tuples of tensors and other values (ints, ``None``): a loop's state."""

Step = Callable[[int, Tree, Tree], Tree]
"""``step(t, state, constants) -> next state``; must not write into its inputs."""


@dataclass
class CheckpointStats:
    """What one :func:`checkpointed_loop` did (filled in as it runs; the backward part only once
    the loss has been backpropagated).

    Attributes:
        forward_steps: steps run without a graph (the first sweep and every recomputation).
        graph_steps: steps rerun with a graph in the backward pass (``T`` per backward pass).
        max_stored: the most intermediate states held at once (the initial state not counted);
            never more than ``slots``.
    """

    forward_steps: int = 0
    graph_steps: int = 0
    max_stored: int = 0


def min_advances(length: int, free: int) -> int:
    """The least number of graph-free steps needed to reverse ``length`` steps starting from a
    stored state with ``free`` more slots (each step rerun once with a graph, not counted).

    Closed form: with ``c = free + 1`` states (the start included) and ``r`` the smallest integer
    with ``binom(c + r, c) >= length``, the minimum is ``r * length - binom(c + r, c + 1)``
    (checked against the dynamic programme in the tests).
    """
    if length <= 1:
        return 0
    if free == 0:  # rebuild every state from the start: 0 + 1 + ... + (length - 1)
        return length * (length - 1) // 2
    c, r = free + 1, 0
    while comb(c + r, c) < length:
        r += 1
    return r * length - comb(c + r, c + 1)


def _split(length: int, free: int) -> int:
    """Where to store the next state in a segment of ``length >= 2`` steps with ``free >= 1``
    slots: the offset ``j`` minimising ``j + min_advances(j, free) + min_advances(length - j,
    free - 1)``. That function of ``j`` is convex (``min_advances`` grows by a non-decreasing
    amount per step), so a binary search on its forward difference finds a minimiser."""

    def cost(j: int) -> int:
        return j + min_advances(j, free) + min_advances(length - j, free - 1)

    lo, hi = 1, length - 1
    while lo < hi:
        mid = (lo + hi) // 2
        if cost(mid + 1) - cost(mid) >= 0:
            hi = mid
        else:
            lo = mid + 1
    return lo


def binomial_schedule(steps: int, slots: int) -> Iterator[tuple[str, int, int]]:
    """The actions of checkpointed backprop through ``steps`` steps with ``slots`` slots.

    A stack of stored states starts with the initial state (time 0). Actions, in order:

    * ``("push", a, b)``: from the state on top of the stack (time ``a``) run steps ``a .. b-1``
      without a graph and push the result (time ``b``);
    * ``("finish", a, steps)``: from the top (time ``a``) run to the end without storing -- the
      end of the first sweep; every later action belongs to the backward pass;
    * ``("reverse", a, t)``: from the top (time ``a``) run steps ``a .. t-1`` without a graph, then
      step ``t`` with one, and pull the adjoint of the state at ``t + 1`` back to ``t``;
    * ``("pop", a, a)``: drop the top (time ``a``): its segment is reversed.
    """
    if steps < 0 or slots < 0:
        raise ValueError(f"steps and slots must be >= 0, got {steps} and {slots}")
    stack = [0]

    def free() -> int:
        return slots - (len(stack) - 1)

    while steps - stack[-1] > 1 and free() > 0:
        at = stack[-1] + _split(steps - stack[-1], free())
        yield ("push", stack[-1], at)
        stack.append(at)
    yield ("finish", stack[-1], steps)
    end = steps  # the adjoint held is that of the state at ``end``
    while end > 0:
        top = stack[-1]
        if top == end:
            stack.pop()
            yield ("pop", top, top)
        elif end - top == 1 or free() == 0:
            yield ("reverse", top, end - 1)
            end -= 1
        else:
            at = top + _split(end - top, free())
            yield ("push", top, at)
            stack.append(at)


def schedule_cost(steps: int, slots: int) -> tuple[int, int, int]:
    """``(forward_steps, graph_steps, max_stored)`` of :func:`binomial_schedule` (what
    :class:`CheckpointStats` records for one forward and backward pass)."""
    forward = graph = stored = peak = 0
    for kind, a, b in binomial_schedule(steps, slots):
        if kind == "push":
            forward += b - a
            stored += 1
            peak = max(peak, stored)
        elif kind == "finish":
            forward += b - a
        elif kind == "reverse":
            forward += b - a
            graph += 1
        else:
            stored -= 1
    return forward, graph, peak


# ---------------------------------------------------------------------------- trees
def _flatten(tree: Tree) -> tuple[list[torch.Tensor], Any]:
    """The tensors of ``tree`` in a fixed order, and a spec to rebuild it (:func:`_unflatten`)."""
    tensors: list[torch.Tensor] = []
    return tensors, _walk(tree, tensors)


# Module-level recursion, not nested closures: a recursive closure is a reference cycle that would
# keep the tensors it saw (a whole step's graph) alive until the cyclic garbage collector runs.
def _walk(node: Tree, tensors: list[torch.Tensor]) -> Any:
    if isinstance(node, torch.Tensor):
        tensors.append(node)
        return _Hole
    if isinstance(node, dict):
        return (dict, [(k, _walk(v, tensors)) for k, v in node.items()])
    if isinstance(node, (list, tuple)):
        return (type(node), [_walk(v, tensors) for v in node])
    return (None, node)


class _Hole:
    """Marks where a tensor goes in a flattened tree's spec."""


def _unflatten(spec: Any, tensors: Sequence[torch.Tensor]) -> Tree:
    return _build(spec, iter(tensors))


def _build(node: Any, it: Iterator[torch.Tensor]) -> Tree:
    if node is _Hole:
        return next(it)
    kind, body = node
    if kind is dict:
        return {k: _build(v, it) for k, v in body}
    if kind is list or kind is tuple:
        return kind(_build(v, it) for v in body)
    return body


def _differentiable(t: torch.Tensor) -> bool:
    return t.is_floating_point() or t.is_complex()


# ---------------------------------------------------------------------------- the loop
def checkpointed_loop(
    step: Step,
    state: Tree,
    constants: Tree,
    steps: int,
    slots: int,
    params: Sequence[torch.Tensor] = (),
    start: int = 0,
    stats: CheckpointStats | None = None,
) -> Tree:
    """``state`` after ``step(t, state, constants)`` for ``t = start .. start+steps-1``,
    differentiable in ``state``'s tensors, ``constants``' tensors and ``params``, keeping at most
    ``slots`` intermediate states (see the module docstring for memory and cost).

    Args:
        step: one step; reads ``params`` (e.g. through modules) and must not write into its
            inputs (a stored state is used again). It is called with and without grad mode.
        state: the initial state (a tree of tensors and other values; its structure may change
            from step to step, e.g. a momentum buffer that appears after the first step).
        constants: tensors every step reads, unchanged by the loop (their gradient is the sum over
            the steps).
        steps: number of steps ``T >= 0``.
        slots: how many intermediate states may be stored (``>= 1``; more slots, fewer reruns).
        params: the tensors ``step`` reads besides its arguments whose gradient is wanted.
        start: the index of the first step (``t`` passed to ``step``).
        stats: filled with what was run (:class:`CheckpointStats`).

    Returns:
        The final state, a tree like ``step``'s output.
    """
    if not isinstance(slots, int) or isinstance(slots, bool) or slots < 1:
        raise ValueError(f"checkpoint slots must be an integer >= 1, got {slots!r}")
    if steps == 0:
        return state
    state_tensors, state_spec = _flatten(state)
    const_tensors, const_spec = _flatten(constants)
    params = [p for p in params if p.requires_grad]
    run = _Run(step, state_spec, const_spec, len(state_tensors), len(const_tensors), steps, slots, start, stats)
    outputs = _Checkpointed.apply(run, *state_tensors, *const_tensors, *params)
    return _unflatten(run.out_spec, outputs)


class _Run:
    """What the forward pass hands to the backward pass besides tensors."""

    def __init__(self, step, state_spec, const_spec, n_state, n_const, steps, slots, start, stats):
        self.step, self.state_spec, self.const_spec = step, state_spec, const_spec
        self.n_state, self.n_const, self.steps, self.slots, self.start = n_state, n_const, steps, slots, start
        self.stats = stats if stats is not None else CheckpointStats()
        self.schedule: Iterator[tuple[str, int, int]] | None = None
        self.stack: list[Tree] = []  # the stored states, in the schedule's stack order
        self.out_spec: Any = None

    def advance(self, state: Tree, constants: Tree, a: int, b: int) -> Tree:
        """Steps ``a .. b-1`` (relative to ``start``) from ``state``, without a graph."""
        with torch.no_grad():
            for t in range(a, b):
                state = self.step(self.start + t, state, constants)
        self.stats.forward_steps += b - a
        return state

    def push(self, state: Tree) -> None:
        self.stack.append(state)
        self.stats.max_stored = max(self.stats.max_stored, len(self.stack) - 1)


class _Checkpointed(torch.autograd.Function):
    """``checkpointed_loop`` as one autograd node: inputs are the initial state's tensors, the
    constants' tensors and the parameters; outputs the final state's tensors."""

    @staticmethod
    def forward(ctx, run: _Run, *inputs: torch.Tensor):  # type: ignore[override]
        state_t = list(inputs[: run.n_state])
        const_t = list(inputs[run.n_state: run.n_state + run.n_const])
        state = _unflatten(run.state_spec, [t.detach() for t in state_t])
        constants = _unflatten(run.const_spec, [t.detach() for t in const_t])
        run.stack = []
        run.push(state)
        run.schedule = binomial_schedule(run.steps, run.slots)
        final = _first_sweep(run, constants)
        out, run.out_spec = _flatten(final)
        given = {id(t) for t in inputs}
        # an output that is one of the inputs (a leaf no step replaced) must be a new tensor
        out = [t.clone() if id(t) in given else t for t in out]
        ctx.run = run
        ctx.save_for_backward(*inputs)
        ctx.set_materialize_grads(False)
        return tuple(out)

    @staticmethod
    def backward(ctx, *grad_out: torch.Tensor | None):  # type: ignore[override]
        run: _Run = ctx.run
        inputs = ctx.saved_tensors
        state_t = inputs[: run.n_state]
        const_t = inputs[run.n_state: run.n_state + run.n_const]
        params = inputs[run.n_state + run.n_const:]
        # constants are shared by every step: one set of leaves, their gradients summed
        const_leaves = [t.detach().requires_grad_(t.requires_grad and _differentiable(t)) for t in const_t]
        constants = _unflatten(run.const_spec, const_leaves)
        if run.schedule is None:  # a second backward pass (retain_graph): redo the first sweep
            run.stack = []
            run.push(_unflatten(run.state_spec, [t.detach() for t in state_t]))
            run.schedule = binomial_schedule(run.steps, run.slots)
            _first_sweep(run, constants, compute_final=False)
        schedule, run.schedule = run.schedule, None
        const_grads: list[torch.Tensor | None] = [None] * len(const_t)
        param_grads: list[torch.Tensor | None] = [None] * len(params)
        adjoint: list[torch.Tensor | None] = list(grad_out)
        for kind, a, b in schedule:
            if kind == "push":
                run.push(run.advance(run.stack[-1], constants, a, b))
            elif kind == "pop":
                run.stack.pop()
            else:  # "reverse"
                before = run.advance(run.stack[-1], constants, a, b)
                adjoint = _pull(run, b, before, constants, const_leaves, params, adjoint, const_grads, param_grads)
        run.stack = []
        state_grads = [g if t.requires_grad else None for t, g in zip(state_t, adjoint)]
        return (None, *state_grads, *const_grads, *param_grads)


def _first_sweep(run: _Run, constants: Tree, compute_final: bool = True) -> Tree | None:
    """Run the schedule's actions up to and including ``finish``; the final state."""
    assert run.schedule is not None
    for kind, a, b in run.schedule:
        if kind == "push":
            run.push(run.advance(run.stack[-1], constants, a, b))
        elif kind == "finish":
            return run.advance(run.stack[-1], constants, a, b) if compute_final else None
    raise AssertionError("a binomial schedule always finishes its first sweep")


def _pull(run, t, before, constants, const_leaves, params, adjoint, const_grads, param_grads):
    """Rerun step ``t`` from ``before`` with a graph and pull ``adjoint`` (of the state after
    step ``t``) back: returns the adjoint of ``before``'s tensors and adds the constants' and
    parameters' gradients to ``const_grads`` / ``param_grads`` (in place)."""
    tensors, spec = _flatten(before)
    leaves = [t_.detach().requires_grad_(_differentiable(t_)) for t_ in tensors]
    with torch.enable_grad():
        after, _ = _flatten(run.step(run.start + t, _unflatten(spec, leaves), constants))
    if len(after) != len(adjoint):
        raise RuntimeError(f"checkpointed step {run.start + t} returned {len(after)} tensors where {len(adjoint)} were expected")
    pairs = [(o, g) for o, g in zip(after, adjoint) if g is not None and o.requires_grad]
    run.stats.graph_steps += 1
    wrt_state = [x for x in leaves if x.requires_grad]
    wrt_const = [x for x in const_leaves if x.requires_grad]
    wanted = [*wrt_state, *wrt_const, *params]
    if not pairs or not wanted:
        return [None] * len(leaves)
    found = list(torch.autograd.grad([o for o, _ in pairs], wanted, [g for _, g in pairs], allow_unused=True))
    state_found = iter(found[: len(wrt_state)])
    new_adjoint = [next(state_found) if x.requires_grad else None for x in leaves]
    const_found = iter(found[len(wrt_state): len(wrt_state) + len(wrt_const)])
    for i, x in enumerate(const_leaves):
        if x.requires_grad:
            const_grads[i] = _add(const_grads[i], next(const_found))
    for i, g in enumerate(found[len(wrt_state) + len(wrt_const):]):
        param_grads[i] = _add(param_grads[i], g)
    return new_adjoint


def _add(total: torch.Tensor | None, g: torch.Tensor | None) -> torch.Tensor | None:
    if g is None:
        return total
    # our own copy: a gradient autograd hands back may alias a tensor still in use
    return g.clone() if total is None else total.add_(g)


def detach_tree(state: Any) -> Any:
    """``state`` (a tensor, or dicts of tensors such as a latent optimiser's state) with every tensor
    detached: where truncated backprop through inference stops."""
    if isinstance(state, torch.Tensor):
        return state.detach()
    if isinstance(state, dict):
        return {k: detach_tree(v) for k, v in state.items()}
    return state


def checkpointed_relaxation(
    advance: Callable[[int, Any, Tree], tuple[Any, dict[str, torch.Tensor]]],
    start: tuple[dict[str, torch.Tensor], dict[str, Any]],
    constants: Tree,
    steps: int,
    tolerance: float | None,
    truncate: int | None,
    slots: int,
    params: list[torch.Tensor],
) -> tuple[tuple[dict[str, torch.Tensor], dict[str, Any]], int]:
    """Run a relaxation of ``steps`` steps under binomial checkpointing; return its final
    ``(variables, optimiser states)`` and the steps taken.

    ``advance(t, state, constants) -> (state, energies)`` is one step (energies per node). With a
    ``tolerance``, a graph-free pass first finds where the unrolled loop would stop (the relative
    change of the total energy below it); with ``truncate`` the loop detaches where the unrolled one
    would (at step ``steps - truncate`` if it gets there; at the end for ``truncate = 0``) and runs the
    steps before it without a graph. The values are the unrolled loop's; the gradients too, up to
    round-off.
    """
    taken = steps
    if tolerance is not None:
        state, previous = start, None
        with torch.no_grad():
            for t in range(steps):
                state, energies = advance(t, state, constants)
                total = float(sum(e.sum() for e in energies.values())) if energies else 0.0
                if previous is not None and abs(previous - total) <= tolerance * max(abs(previous), 1e-30):
                    taken = t + 1
                    break
                previous = total
    cut = None
    if truncate is not None:
        if 0 <= steps - truncate < taken:
            cut = steps - truncate
        elif truncate == 0:
            cut = taken
    state = start
    if cut is not None:
        with torch.no_grad():
            state = detach_tree(state[0]), {n: detach_tree(s) for n, s in state[1].items()}
            for t in range(cut):
                state, _ = advance(t, state, constants)
    first = cut or 0
    with torch.enable_grad():
        state = checkpointed_loop(lambda t, s, c: advance(t, s, c)[0], state, constants, taken - first, slots, params, start=first)
    return state, taken


def unrolled_relaxation(
    step: Callable[[int, dict[str, torch.Tensor], dict[str, Any]], tuple[dict[str, torch.Tensor], dict[str, Any], dict[str, torch.Tensor]]],
    variables: dict[str, torch.Tensor],
    states: dict[str, Any],
    steps: int,
    tolerance: float | None,
    truncate: int | None,
    differentiable: bool,
    checkpoint_steps: bool,
    measure: Callable[[int, dict[str, torch.Tensor]], None] | None = None,
) -> tuple[dict[str, torch.Tensor], dict[str, Any], int]:
    """Run up to ``steps`` relaxation steps as one unrolled loop; return the final variables, latent
    optimiser states and the steps taken.

    ``step(t, variables, states) -> (variables, states, energies)`` is one step (energies per node);
    ``measure(t, variables)`` is called before each. The loop stops early once the relative change of
    the total energy falls below ``tolerance``. In a ``differentiable`` loop, ``truncate`` detaches the
    state ``truncate`` steps before the end (``0``: the final state is a constant), and
    ``checkpoint_steps`` recomputes each step in the backward pass instead of storing it. The caller
    sets the grad mode. :func:`checkpointed_relaxation` is the same loop under binomial checkpointing.
    """
    previous, taken = None, 0
    for t in range(steps):
        if measure is not None:
            measure(t, variables)
        if differentiable and truncate is not None and t == steps - truncate:
            variables = {n: v.detach() for n, v in variables.items()}
            states = {n: detach_tree(s) for n, s in states.items()}
        if differentiable and checkpoint_steps:
            variables, states, energies = checkpoint(step, t, variables, states, use_reentrant=False)
        else:
            variables, states, energies = step(t, variables, states)
        taken = t + 1
        if tolerance is not None:
            total = float(sum(e.detach().sum() for e in energies.values())) if energies else 0.0
            if previous is not None and abs(previous - total) <= tolerance * max(abs(previous), 1e-30):
                break
            previous = total
    if differentiable and truncate == 0:  # through the last 0 steps: the final state is a constant
        variables = {n: v.detach() for n, v in variables.items()}
    return variables, states, taken
