"""The Dense-chain relaxation as an ``autograd.Function`` whose backward is the hand-derived reverse
pass of :mod:`pclab.core.fast.chain_adjoint` (bp-through-inference through :func:`~pclab.core.relax.relax`).

Its forward relaxes without autograd, keeping only the tape the reverse pass reads
(:func:`pclab.core.fast.chain_adjoint.record`); its backward walks that tape in reverse. With
``compile`` both passes run as compiled graphs (:mod:`pclab.core.fast.compiled_adjoint`) where one
serves the batch size.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..layers import activation
from . import chain_adjoint, compiled_adjoint
from .chain import Anchored, ChainState, Params, Plan, Predictions


class ChainRelaxation(torch.autograd.Function):
    """``(params..., free initial values...) -> final values of the free nodes``.

    With ``job.compile`` forward and backward run compiled (:mod:`pclab.core.fast.compiled_adjoint`)
    where a compiled graph serves the batch size; the forward then keeps the tape flattened
    (``job.saved``, ``job.spec``) and the backward hands it to the compiled reverse pass.
    """

    @staticmethod
    def forward(ctx, job: Job, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:  # type: ignore[override]
        plan, params = job.plan, job.params
        start = None if job.start is None else [v.detach() for v in job.start]
        out = None
        if job.compile:
            compiled = compiled_adjoint.forward(plan, params, job.given, start)
            if compiled is not None:
                out, job.z0, job.ff, job.anchored, job.saved, job.spec = compiled
        if out is None:
            out, job.z0, job.ff, job.tape, job.anchored = chain_adjoint.record(plan, params, job.given, start)
        ctx.job = job
        ctx.set_materialize_grads(False)
        return tuple(out)

    @staticmethod
    def backward(ctx, *grads: torch.Tensor | None):  # type: ignore[override]
        job: Job = ctx.job
        plan = job.plan
        n_params = len(job.flat)
        needs = ctx.needs_input_grad[1:]
        need, k = [], 0
        for _weight, bias in job.params:
            nw = needs[k]
            k += 1
            nb = False
            if bias is not None:
                nb = needs[k]
                k += 1
            need.append((nw, nb))
        lam: list[torch.Tensor | None] = [None] * (plan.chain.depth + 1)
        for i, g in zip(job.free, grads):
            lam[i] = g
        with torch.no_grad():
            if job.spec is not None:
                lam0, pgrads = compiled_adjoint.reverse(plan, job.params, job.spec, job.saved, job.z0, job.free, lam, tuple(need))
            else:
                lam0, pgrads = chain_adjoint.reverse(plan, job.params, job.tape, lam, job.z0, job.ff, need, job.anchored)
        # the tape is kept (released with the graph): autograd.grad(..., retain_graph=True) may call backward again
        flat = [g for (dw, db), (_, bias) in zip(pgrads, job.params) for g in ((dw, db) if bias is not None else (dw,))]
        assert len(flat) == n_params
        starts = [lam0[i] for i in job.free] if job.start is not None else []
        return (None, *flat, *starts)


@dataclass
class Job:
    """The non-tensor inputs of one differentiated relaxation and what its forward keeps."""

    plan: Plan
    params: Params  # detached
    flat: list[torch.Tensor]
    given: list[torch.Tensor | None]
    start: list[torch.Tensor] | None
    free: list[int]
    compile: bool = False
    ff: Predictions | None = None
    z0: list[torch.Tensor] | None = None
    tape: list[chain_adjoint.StepRecord] | None = None
    anchored: dict[int, Anchored] | None = None
    saved: list[torch.Tensor] | None = None  # compiled forward: z0, ff, anchored and tape, flattened
    spec: tuple | None = None  # ... and their structure (see compiled_adjoint)


def relax(plan: Plan, params: Params, given: Sequence[torch.Tensor | None],
          start: Sequence[torch.Tensor] | None = None, compile: bool = False) -> ChainState | None:
    """:func:`pclab.core.fast.chain.relax_chain` ``(differentiable=True)`` with the hand-derived reverse
    pass, or ``None`` when it does not apply (:func:`~pclab.core.fast.chain_adjoint.applies`; the
    caller then uses autograd).

    Args:
        plan: the relaxation (``plan.feed_forward``: start from the feed-forward pass).
        params: the layers' ``(weight, bias)`` (the parameters the gradients go to).
        given: ``given[i]`` node ``i``'s clamped value (``(batch, width_i)``) or ``None``.
        start: initial values of every node when not starting from the feed-forward pass (their
            free entries may require grad and get ``dL/dz_0``).
        compile: run the relaxation and the reverse pass under ``torch.compile``
            (:mod:`pclab.core.fast.compiled_adjoint`; batch sizes no compiled graph serves run eagerly).

    Returns:
        The relaxed state: ``values`` carry the gradient to the parameters (a released read-out
        is ``softmax(mu_L)`` of the relaxed values, by autograd); ``initial`` and the
        predictions are plain tensors.
    """
    if not chain_adjoint.applies(plan, given, None if plan.feed_forward else start):
        return None
    if not plan.feed_forward and start is None:
        return None
    chain, L = plan.chain, plan.chain.depth
    flat = [t for pair in params for t in pair if t is not None]
    detached = [(w.detach(), None if b is None else b.detach()) for w, b in params]
    free = [i for i in range(L + 1) if plan.free[i]]
    job = Job(plan, detached, flat, [None if v is None else v.detach() for v in given],
               None if plan.feed_forward else list(start), free, compile)
    starts = [] if plan.feed_forward else [start[i] for i in free]
    out = ChainRelaxation.apply(job, *flat, *starts)
    values: list[torch.Tensor] = list(job.z0)
    for i, v in zip(free, out):
        values[i] = v
    for i in range(L + 1):
        if given[i] is not None:
            values[i] = given[i]
    initial = list(job.z0)
    initial_predictions = job.ff if job.ff is not None else Predictions(chain, detached)
    state = ChainState(values, initial, Predictions(chain, params), initial_predictions, dict(job.anchored or {}))
    if plan.readout:  # by autograd from the relaxed values
        weight, bias = params[L - 1]
        state.values[L] = chain.energies[L - 1].released(activation(chain.layers[L - 1].activation)(F.linear(values[L - 1], weight, bias)))
    return state
