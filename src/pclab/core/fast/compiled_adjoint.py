"""``torch.compile`` of bp-through-inference on Dense chains (``Inference(compile=True)``).

The hand-derived reverse pass of :mod:`pclab.core.fast.chain_adjoint` is, like the PC path of
:mod:`pclab.core.fast.compiled`, plain tensor code whose control flow depends only on the
:class:`~pclab.core.fast.chain.Plan` (and the batch size, through
:meth:`~pclab.core.fast.chain.Anchored.pays`). Two graphs per plan:

* the forward: feed-forward start plus the recorded relaxation (:func:`chain_adjoint.record`),
  returning the final values and the tape *flattened* (:func:`_pack`): a list of tensors in a
  fixed order and its structure ``spec`` (which layers carried error at each step, which ``delta``
  exist, the updates, the anchored nodes' ``c``, ...), a nested tuple of Python constants
  TorchDynamo hands back with the graph's outputs;
* the reverse: :func:`_unpack` of those tensors by ``spec``, then :func:`chain_adjoint.reverse`;
  one graph per ``(plan, spec, gradients wanted, which final values have an adjoint)``.

Both use :mod:`pclab.core.fast.compiled`'s cache and rules: a compiled graph serves the first batch
size it saw, any other runs the eager hand-derived path (same numbers up to float rounding), and
first calls count in :func:`pclab.core.fast.compiled.total_compile_seconds`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch

from . import chain_adjoint, compiled
from .chain import Anchored, LayerRecord, Params, Plan, Predictions, StepRecord


class _Anchor(NamedTuple):
    """What the reverse pass reads of an anchored node (:class:`~pclab.core.fast.chain.Anchored`)."""

    gram: torch.Tensor | None
    d: torch.Tensor | None


# ---------------------------------------------------------------------------- flat tape
def _pack(plan: Plan, z0: list[torch.Tensor], ff: Predictions | None, tape: list[StepRecord],
          anchored: dict[int, Anchored]) -> tuple[list[torch.Tensor], tuple]:
    """``(tensors, spec)``: the forward's record as a flat list of tensors (``z0``, then the
    feed-forward predictions, the anchored nodes and the tape) and its structure, Python
    constants only (inverse: :func:`_unpack`)."""
    tensors = list(z0)
    ff_spec = None
    if ff is not None:
        ff_spec = tuple(l for l in range(1, plan.chain.depth + 1) if not ff.stale[l])
        for l in ff_spec:
            tensors += [ff.a[l], ff.mu[l]]
    nodes = []
    for i, node in anchored.items():
        tensors += [t for t in (node.gram, node.d) if t is not None]
        nodes.append((i, node.gram is not None, node.d is not None))
    steps = []
    for step in tape:
        layers = []
        for rec in step.layers:
            tensors += [rec.a, rec.mu, rec.e, rec.source]
            if rec.delta is not None:
                tensors.append(rec.delta)
            layers.append((rec.l, rec.w, rec.delta is not None))
        steps.append((tuple(layers), tuple(step.updates), tuple(step.carried.items())))
    return tensors, (ff_spec, tuple(nodes), tuple(steps))


def _unpack(plan: Plan, params: Params, spec: tuple, tensors: Sequence[torch.Tensor], tape: bool = True):
    """``(z0, ff, tape, anchored)`` from :func:`_pack`'s output (``tape=False``: the tape is
    ``None``, not rebuilt); ``anchored`` maps node -> :class:`_Anchor`."""
    ff_spec, nodes, steps = spec
    it = iter(tensors)
    z0 = [next(it) for _ in range(plan.chain.depth + 1)]
    ff = None
    if ff_spec is not None:
        ff = Predictions(plan.chain, params)
        for l in ff_spec:
            ff.a[l], ff.mu[l] = next(it), next(it)
            ff.stale[l] = False
    anchored = {i: _Anchor(next(it) if gram else None, next(it) if d else None) for i, gram, d in nodes}
    if not tape:
        return z0, ff, None, anchored
    records = []
    for layers, updates, carried in steps:
        step = []
        for l, w, delta in layers:
            a, mu, e, source = next(it), next(it), next(it), next(it)
            step.append(LayerRecord(l, a, mu, e, next(it) if delta else None, source, w))
        records.append(StepRecord(step, list(updates), dict(carried)))
    return z0, ff, records, anchored


# ---------------------------------------------------------------------------- compiled functions
def _forward(plan: Plan, given: list[torch.Tensor | None], flat: list[torch.Tensor], start: list[torch.Tensor] | None):
    params = compiled.unflatten(plan, flat)
    out, z0, ff, tape, anchored = chain_adjoint.record(plan, params, given, start)
    saved, spec = _pack(plan, z0, ff, tape, anchored)
    return out, saved, spec


def _reverse(plan: Plan, spec: tuple, need: tuple[tuple[bool, bool], ...], has_adjoint: tuple[bool, ...],
             flat: list[torch.Tensor], saved: list[torch.Tensor], adjoints: list[torch.Tensor]):
    params = compiled.unflatten(plan, flat)
    z0, ff, tape, anchored = _unpack(plan, params, spec, saved)
    lam: list[torch.Tensor | None] = [None] * (plan.chain.depth + 1)
    given = iter(adjoints)
    for i, has in zip((i for i, free in enumerate(plan.free) if free), has_adjoint):
        if has:
            lam[i] = next(given)
    return chain_adjoint.reverse(plan, params, tape, lam, z0, ff, need, anchored)


def forward(plan: Plan, params: Params, given: list[torch.Tensor | None], start: list[torch.Tensor] | None) -> tuple | None:
    """The compiled :func:`pclab.core.fast.chain_adjoint.record` (its tape kept flat): ``(final values of
    the free nodes, z0, ff, anchored, saved, spec)``, ``saved`` and ``spec`` the flat tape and its
    structure for :func:`reverse`; ``None`` when this batch size is served by the eager path."""
    entry = compiled.CACHE.get(("adjoint-forward", plan), lambda: compiled.compile_graph(lambda g, f, s: _forward(plan, g, f, s)))
    batch = next(v for v in (given if start is None else start) if v is not None).shape[0]
    result = compiled.run(entry, batch, list(given), compiled.flatten(params), start)
    if result is None:
        return None
    out, saved, spec = result
    z0, ff, _, anchored = _unpack(plan, params, spec, saved, tape=False)
    return out, z0, ff, anchored, saved, spec


def reverse(plan: Plan, params: Params, spec: tuple, saved: list[torch.Tensor], z0: list[torch.Tensor], free: Sequence[int],
            lam: list[torch.Tensor | None], need: tuple[tuple[bool, bool], ...]):
    """:func:`pclab.core.fast.chain_adjoint.reverse` of a compiled forward's record (``saved``, ``spec``), compiled
    (or eager when no compiled graph serves this batch size): ``(dL/dz_0, [(dL/dW_l, dL/db_l)])``."""
    adjoints = [lam[i] for i in free]
    has_adjoint = tuple(g is not None for g in adjoints)
    key = ("adjoint-reverse", plan, spec, need, has_adjoint)
    entry = compiled.CACHE.get(key, lambda: compiled.compile_graph(lambda f, s, a: _reverse(plan, spec, need, has_adjoint, f, s, a)))
    given = [g.contiguous() for g in adjoints if g is not None]  # static strides: no recompiles
    out = compiled.run(entry, z0[0].shape[0], compiled.flatten(params), saved, given)
    if out is None:
        z0, ff, tape, anchored = _unpack(plan, params, spec, saved)
        out = chain_adjoint.reverse(plan, params, tape, lam, z0, ff, list(need), anchored)
    return out
