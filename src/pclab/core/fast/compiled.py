"""``torch.compile`` of the Dense-chain fast path (opt in with ``Inference(compile=True)``), and of
any other PCN's latent gradient (:func:`latent_grads`).

The functions of :mod:`pclab.core.fast.chain` are plain tensor code whose control flow depends only on
the :class:`~pclab.core.fast.chain.Plan` (which layers carry error at which step is known before any
tensor is seen), so TorchDynamo traces a whole relaxation -- ``T`` steps unrolled, the
exactly-zero errors already pruned -- plus the PC weight gradients into one graph, and Inductor
fuses the elementwise work between the matrix products into a few C++ loops. (Under compilation
products through very narrow layers, e.g. a 10-class output, are written as reductions that
Inductor fuses into those loops: BLAS is slow for such shapes.)

Costs and rules:

* the first call for a plan and batch size compiles (tens of seconds on a small CPU); Inductor
  keeps the generated code in its on-disk cache (``$TORCHINDUCTOR_CACHE_DIR``, by default
  ``/tmp/torchinductor_<user>``), so later processes compiling the same graph take a few seconds;
* one compiled graph per plan serves the batch size it was first called with; any other batch
  size (an epoch's short last batch) runs the eager fast path, which gives the same numbers up to
  float rounding;
* results equal the eager fast path up to float rounding (Inductor's own ``tanh`` etc.), which
  ``tests/fast`` checks;
* the PC rule's weight update joins the compiled call (:func:`pc_train_step`), what PCX gets from
  jitting optax's update into its train step. For ``torch.optim.Adam``, ``AdamW`` and ``SGD``
  the update is traced into the same graph as the relaxation (:func:`functional_groups`): SGD
  as ``torch.optim``'s own functional form (``torch.optim.sgd.sgd``, single-tensor variant), Adam
  as the arithmetic of its single-tensor form with the bias corrections computed once per step
  outside the graph (:func:`_adam_update`); a stateful optimiser's first step runs eagerly, so that
  ``torch.optim`` creates its state, and the next one compiles; any other optimiser, or one
  with step hooks, runs its ``step`` from the compiled frame, as a second graph (``torch.optim``
  breaks the graph there on purpose). The one graph saves the second graph's frames, guards and
  launch (the benchmarks page has the measurement). All this
  holds while the optimiser's hyperparameters stay those of the first call; a changed float
  learning rate would recompile, so after a change (or with a scheduler over float rates) the
  step runs eagerly instead. A tensor rate (:func:`rates_are_tensors`) is an
  input of the compiled step: a scheduler updates it in place and nothing recompiles;
* bp-through-inference with a plain :class:`~pclab.core.learning.TaskLoss` is traced whole, like a
  PC step: relaxation, loss and its hand-derived reverse pass
  (:func:`pclab.core.fast.chain_adjoint.task_loss_grads`) and the functional update
  (:func:`bpti_train_step`; :func:`bpti_step` without the update for other optimisers), which
  is faster than autograd through the compiled forward and reverse pass with the update as a third
  graph (that costs its Python, the autograd ``Function`` and the tape of tensors between the
  graphs). With any other loss, the gradients come from ``backward``
  (through the compiled passes of :mod:`pclab.core.fast.compiled_adjoint`) and the optimiser step then
  runs as a graph of its own, the same update under the same rules (:func:`optimizer_update`).
"""

from __future__ import annotations

import logging
import time
import types
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.optim import optimizer as _optim_base
from torch.optim.sgd import sgd as _sgd

from ..graph import PCN, evaluates_once
from . import chain_adjoint
from .chain import Params, Plan, feed_forward, incremental, relax_chain, set_grads, weight_gradients


def flatten(params: Params) -> list[torch.Tensor]:
    """The chain's parameters as one list: each layer's weight, then its bias if it has one."""
    return [t for pair in params for t in pair if t is not None]


def unflatten(plan: Plan, flat: Sequence[torch.Tensor]) -> Params:
    """The inverse of :func:`flatten` for ``plan``'s chain."""
    out, k = [], 0
    for layer in plan.chain.layers:
        weight = flat[k]
        k += 1
        bias = None
        if layer.linear.bias is not None:
            bias = flat[k]
            k += 1
        out.append((weight, bias))
    return out


def _relax_values(plan: Plan, clamp: Sequence[torch.Tensor | None], flat: Sequence[torch.Tensor]):
    params = unflatten(plan, flat)
    start, predictions = feed_forward(plan, params, clamp)
    state = relax_chain(plan, params, start, predictions)
    return state.values, state.initial


def _learn(plan: Plan, forward_update: bool, clamp: Sequence[torch.Tensor | None], flat: Sequence[torch.Tensor]):
    params = unflatten(plan, flat)
    start, predictions = feed_forward(plan, params, clamp)
    state = relax_chain(plan, params, start, predictions)
    return weight_gradients(plan, state, forward_update)


def _train(plan: Plan, forward_update: bool, optimizer: torch.optim.Optimizer,
           clamp: Sequence[torch.Tensor | None], flat: Sequence[torch.Tensor]) -> torch.Tensor:
    energy, grads = _learn(plan, forward_update, clamp, flat)
    set_grads(plan.chain, grads)  # (the caller cleared every .grad: zero_grad breaks the graph)
    optimizer.step()
    return energy


def _flat_grads(plan: Plan, grads: Sequence[tuple[torch.Tensor | None, torch.Tensor | None]]) -> list[torch.Tensor | None]:
    """Per-layer ``(dW, db)`` in :func:`flatten`'s order of the parameters."""
    return [g for (dw, db), layer in zip(grads, plan.chain.layers) for g in ((dw, db) if layer.linear.bias is not None else (dw,))]


def _train_functional(plan: Plan, forward_update: bool, groups: Sequence[FunctionalGroup],
                      clamp: Sequence[torch.Tensor | None], flat: Sequence[torch.Tensor],
                      state: Sequence[Sequence[Any]], corrections: Sequence[torch.Tensor | None]) -> tuple[torch.Tensor, Params]:
    energy, grads = _learn(plan, forward_update, clamp, flat)
    _update(groups, flat, _flat_grads(plan, grads), state, corrections)
    return energy, grads


def _incremental_functional(plan: Plan, groups: Sequence[FunctionalGroup], clamp: Sequence[torch.Tensor | None],
                            flat: Sequence[torch.Tensor], state: Sequence[Sequence[Any]],
                            corrections: Sequence[torch.Tensor | None]) -> tuple[torch.Tensor, Params]:
    last: list[Params] = []

    def learn(grads: list[tuple[torch.Tensor | None, torch.Tensor | None]]) -> None:
        # in place: the next inference step predicts with the new weights; this batch's k-th weight step
        _update(groups, flat, _flat_grads(plan, grads), state, corrections, k=len(last))
        last.append(grads)

    energy = incremental(plan, unflatten(plan, flat), clamp, learn)
    return energy, last[-1]


def _bpti_learn(plan: Plan, terms: tuple[chain_adjoint.LossTerm, ...], need: tuple[tuple[bool, bool], ...],
                inputs: tuple[Sequence[torch.Tensor | None], Sequence[torch.Tensor]], flat: Sequence[torch.Tensor]):
    given, targets = inputs
    return chain_adjoint.task_loss_grads(plan, unflatten(plan, flat), given, terms, targets, need)


def _bpti_functional(plan: Plan, terms: tuple[chain_adjoint.LossTerm, ...], need: tuple[tuple[bool, bool], ...],
                     groups: Sequence[FunctionalGroup], inputs: tuple[Sequence[torch.Tensor | None], Sequence[torch.Tensor]],
                     flat: Sequence[torch.Tensor], state: Sequence[Sequence[Any]],
                     corrections: Sequence[torch.Tensor | None]) -> tuple[torch.Tensor, Params]:
    values, grads = _bpti_learn(plan, terms, need, inputs, flat)
    _update(groups, flat, _flat_grads(plan, grads), state, corrections)
    return values, grads


@dataclass(frozen=True, eq=False)
class FunctionalGroup:
    """One parameter group's ``torch.optim`` update in functional form, for a compiled graph.

    Attributes:
        kind: ``"adam"`` (``torch.optim.Adam`` and ``AdamW``: :func:`_adam_update`) or ``"sgd"``
            (``torch.optim.sgd.sgd``).
        index: positions, in the chain's flat parameter list, of the parameters this group steps
            (those with a gradient: an active layer's, requiring grad).
        options: the group's hyperparameters as the update takes them; float values
            are constants of the graph, tensor values (a scheduled rate) are read when called.
        state_keys: the per-parameter state tensors the call reads and updates, in its order.
    """

    kind: str
    index: tuple[int, ...]
    options: dict[str, Any]
    state_keys: tuple[str, ...]

    def step(self, flat: Sequence[torch.Tensor], grads: Sequence[torch.Tensor | None], state: Sequence[list[torch.Tensor]],
             corrections: torch.Tensor | None = None) -> None:
        """The update of ``flat[index]`` (in place) from ``grads[index]`` and the state lists;
        ``corrections``: Adam's ``(1 - beta1^t, sqrt(1 - beta2^t))`` of each stepped parameter,
        shape ``(len(index), 2)``, float64 (:meth:`corrections`)."""
        params = [flat[i] for i in self.index]
        g = [grads[i] for i in self.index]
        if self.kind == "adam":
            exp_avgs, exp_avg_sqs, *rest = state
            max_exp_avg_sqs, steps = (rest[0], rest[1]) if len(rest) == 2 else ([None] * len(params), rest[0])
            assert corrections is not None
            for k, (param, grad) in enumerate(zip(params, g)):
                _adam_update(param, grad, exp_avgs[k], exp_avg_sqs[k], max_exp_avg_sqs[k], steps[k], corrections[k, 0],
                             corrections[k, 1], **self.options)
        else:
            _sgd(params, g, state[0] if state else [None] * len(params), **self.options)

    def corrections(self, state: Sequence[list[torch.Tensor]], updates: int) -> torch.Tensor | None:
        """Adam's bias corrections for the next ``updates`` steps of each stepped parameter:
        ``(updates, len(index), 2)`` float64, ``[..., 0] = 1 - beta1^t`` and ``[..., 1] =
        sqrt(1 - beta2^t)`` at the counts ``t`` those steps reach, computed as eager ``torch.optim``
        computes them (Python floats), on the parameters' device; ``None`` for SGD."""
        if self.kind != "adam":
            return None
        beta1, beta2 = self.options["beta1"], self.options["beta2"]
        counts = [float(step) for step in state[-1]]
        return torch.tensor([[(1 - beta1 ** (t + k), (1 - beta2 ** (t + k)) ** 0.5) for t in counts] for k in range(1, updates + 1)],
                            dtype=torch.float64, device=state[0][0].device if self.index else None)


def _adam_update(param: torch.Tensor, grad: torch.Tensor, exp_avg: torch.Tensor, exp_avg_sq: torch.Tensor,
                 max_exp_avg_sq: torch.Tensor | None, step: torch.Tensor, bias_correction1: torch.Tensor,
                 bias_correction2_sqrt: torch.Tensor, *, beta1: float, beta2: float, lr: float | torch.Tensor,
                 weight_decay: float, eps: float, maximize: bool, amsgrad: bool, decoupled_weight_decay: bool) -> None:
    """One step of ``torch.optim.Adam``/``AdamW`` on one parameter, in place: the arithmetic of its
    single-tensor form (``torch.optim.adam._single_tensor_adam``, not capturable), but with the bias
    corrections given. Traced, ``1 - beta^t`` from the step count in the state would be
    recomputed by Inductor inside the update's element loop, two ``pow`` calls per 16 values,
    several times the cost of the update with the corrections as inputs."""
    if maximize:
        grad = -grad
    step += 1
    if weight_decay != 0:
        if decoupled_weight_decay:
            param.mul_(1 - lr * weight_decay)
        else:
            grad = grad.add(param, alpha=weight_decay)
    exp_avg.lerp_(grad, 1 - beta1)
    exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
    second = exp_avg_sq
    if max_exp_avg_sq is not None:
        torch.maximum(max_exp_avg_sq, exp_avg_sq, out=max_exp_avg_sq)
        second = max_exp_avg_sq
    denom = (second.sqrt() / bias_correction2_sqrt).add_(eps)
    param.add_(exp_avg / denom * (-lr / bias_correction1))


_FUNCTIONAL_KINDS = {torch.optim.Adam: "adam", torch.optim.AdamW: "adam", torch.optim.SGD: "sgd"}


def _functional_kind(optimizer: torch.optim.Optimizer) -> str | None:
    """``"adam"``/``"sgd"`` where :func:`functional_groups` may replace ``optimizer.step()``: one of
    PyTorch's Adam, AdamW or SGD exactly (a subclass may change ``step``), its ``step`` not replaced
    (a learning-rate scheduler's wrapper excepted), no step hooks (they run around ``step``), no
    AMP gradient scaling, no differentiable groups and no tensor betas."""
    kind = _FUNCTIONAL_KINDS.get(type(optimizer))
    if kind is None:
        return None
    own_step = optimizer.__dict__.get("step")
    if own_step is not None and not getattr(own_step, "_wrapped_by_lr_sched", False):
        return None
    if (optimizer._optimizer_step_pre_hooks or optimizer._optimizer_step_post_hooks
            or _optim_base._global_optimizer_pre_hooks or _optim_base._global_optimizer_post_hooks):
        return None
    if getattr(optimizer, "grad_scale", None) is not None or getattr(optimizer, "found_inf", None) is not None:
        return None
    if any(group["differentiable"] for group in optimizer.param_groups):
        return None
    if kind == "adam" and any(isinstance(beta, torch.Tensor) for group in optimizer.param_groups for beta in group["betas"]):
        return None  # (the bias corrections are computed from float betas, FunctionalGroup.corrections)
    return kind


def traces_update(optimizer: torch.optim.Optimizer) -> bool:
    """Whether ``optimizer``'s step can be traced into a compiled graph (:func:`functional_groups`)."""
    return _functional_kind(optimizer) is not None


def _options(kind: str, group: dict[str, Any]) -> tuple[dict[str, Any], tuple[str, ...]]:
    """The functional call's keyword arguments for ``group`` (as ``Optimizer.step`` passes them,
    but the single-tensor form: ``fused`` kernels cannot be traced, Inductor fuses this one) and
    the state keys it reads."""
    if kind == "adam":
        beta1, beta2 = group["betas"]
        options = dict(amsgrad=group["amsgrad"], beta1=beta1, beta2=beta2, lr=group["lr"], weight_decay=group["weight_decay"],
                       eps=group["eps"], maximize=group["maximize"], decoupled_weight_decay=group["decoupled_weight_decay"])
        keys = ("exp_avg", "exp_avg_sq") + (("max_exp_avg_sq",) if group["amsgrad"] else ()) + ("step",)
        return options, keys
    options = dict(weight_decay=group["weight_decay"], momentum=group["momentum"], lr=group["lr"],
                   dampening=group["dampening"], nesterov=group["nesterov"], maximize=group["maximize"],
                   has_sparse_grad=False, foreach=False, fused=False)
    return options, (("momentum_buffer",) if group["momentum"] != 0 else ())


def functional_groups(plan: Plan, flat: Sequence[torch.Tensor], optimizer: torch.optim.Optimizer,
                      reached: Sequence[bool] | None = None) -> tuple[FunctionalGroup, ...] | None:
    """``optimizer.step()`` for the gradients of ``plan``'s chain as :class:`FunctionalGroup`\\ s
    (one per parameter group), or ``None`` where ``torch.optim``'s ``step`` must run instead.
    ``reached[i]``: ``flat[i]`` gets a gradient (default: PC's, an active layer's parameters
    that require grad)."""
    kind = _functional_kind(optimizer)
    if kind is None:
        return None
    position = {id(p): i for i, p in enumerate(flat)}
    if reached is None:
        # flat positions that get a gradient, as set_grads gives them: an active layer's, requiring grad
        active = _flat_grads(plan, [(True, True) if plan.active[l] else (None, None) for l in range(1, plan.chain.depth + 1)])
        reached = [bool(has) and param.requires_grad for param, has in zip(flat, active)]
    return _groups(kind, optimizer, position, {i for i, has in enumerate(reached) if has})


def _groups(kind: str, optimizer: torch.optim.Optimizer, position: dict[int, int], gets: set[int]) -> tuple[FunctionalGroup, ...]:
    """One :class:`FunctionalGroup` per parameter group, stepping the parameters whose flat
    position (``position[id(param)]``) is in ``gets``."""
    groups = []
    for group in optimizer.param_groups:
        index = tuple(position[id(p)] for p in group["params"] if position.get(id(p)) in gets)
        options, keys = _options(kind, group)
        groups.append(FunctionalGroup(kind, index, options, keys))
    return tuple(groups)


def _update(groups: Sequence[FunctionalGroup], params: Sequence[torch.Tensor], grads: Sequence[torch.Tensor | None],
            state: Sequence[Sequence[Any]], corrections: Sequence[torch.Tensor | None], k: int = 0) -> None:
    """Every group's ``k``-th update of this call (``corrections[g][k]``)."""
    for group, tensors, c in zip(groups, state, corrections):
        group.step(params, grads, tensors, None if c is None else c[k])


def optimizer_update(optimizer: torch.optim.Optimizer) -> bool:
    """``optimizer.step()`` on the gradients in ``.grad`` as one compiled graph (the update of
    :func:`functional_groups`), for rules whose gradients come from ``backward``
    (bp-through-inference); ``False``, nothing done, where ``torch.optim``'s own ``step`` must run:
    another optimiser class or step hooks (:func:`_functional_kind`), a parameter that is not a
    real floating tensor, a sparse gradient, or no optimiser state yet (the first step creates it
    in ``torch.optim``'s format). Compiled with the hyperparameters of the first call, as
    :func:`pc_train_step`; one graph per set of parameters that have a gradient."""
    kind = _functional_kind(optimizer)
    if kind is None:
        return False
    params = [p for group in optimizer.param_groups for p in group["params"]]
    grads = [p.grad for p in params]
    key = ("update", optimizer, tuple(g is not None for g in grads))
    entry = CACHE.entries.get(key)
    if entry is None:  # (a compiled entry has passed these checks; parameters keep their kind)
        if any(p.is_complex() or not p.is_floating_point() or (g is not None and g.is_sparse) for p, g in zip(params, grads)):
            return False
        groups = _groups(kind, optimizer, {id(p): i for i, p in enumerate(params)}, {i for i, g in enumerate(grads) if g is not None})
    else:
        groups = entry.groups
    state = _state(optimizer, params, groups)
    if state is None:
        return False
    entry = CACHE.get(key, lambda: compile_graph(lambda p, g, s, k: _update(groups, p, g, s, k)))
    entry.groups = groups
    corrections = [group.corrections(tensors, 1) for group, tensors in zip(groups, state)]
    with torch.no_grad():
        run(entry, 0, params, grads, state, corrections)  # (any batch size: 0 stands for all)
    optimizer._opt_called = True  # what torch.optim's step tells a learning-rate scheduler
    return True


class _ProfilerNote(logging.Filter):
    """Drops Dynamo's note that it ignores ``record_function`` while tracing ``torch.optim``'s
    ``step``: said once per process on every compiled optimiser step, and nothing for a user to do."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Profiler record function")


logging.getLogger("torch._dynamo.variables.ctx_manager").addFilter(_ProfilerNote())


RECOMPILE_LIMIT = 64
"""TorchDynamo's ``recompile_limit`` while a compiled function is first called (compiled): how many
optimisers of one process get a compiled ``step``; later ones step eagerly (same numbers)."""

INDUCTOR_OPTIONS: dict[str, Any] = {"cpp_wrapper": True}
"""Inductor options of every compiled relaxation. ``cpp_wrapper``: kernels are launched from C++,
not Python (a relaxation is hundreds of small kernels)."""


def _own_code(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn`` with a code object of its own. TorchDynamo keeps compiled versions per code object,
    at most ``recompile_limit`` (8) of them, and then runs that code eagerly; each function compiled
    here serves one plan (and optimiser), so sharing one lambda's (or ``_train``'s) code object
    across them would leave the ninth model of a process uncompiled."""
    return types.FunctionType(fn.__code__.replace(), fn.__globals__, fn.__name__, fn.__defaults__, fn.__closure__)


def compile_graph(fn: Callable[..., Any], fullgraph: bool = True) -> Callable[..., Any]:
    """``torch.compile`` of (a copy of, :func:`_own_code`) ``fn`` with static shapes, into one whole
    graph unless ``fullgraph=False``, with :func:`guard_filter`."""
    return torch.compile(_own_code(fn), fullgraph=fullgraph, dynamic=False, options={**INDUCTOR_OPTIONS, "guard_filter_fn": guard_filter})


def guard_filter(entries: Sequence[Any]) -> list[bool]:
    """TorchDynamo's ``guard_filter_fn``: every guard but those that a module object reached under
    two names is one object: the functions traced here reach :mod:`pclab.core.fast.chain` both
    from this module and as their own module, and TorchDynamo would check the two are the same once
    per inlined call, hundreds of identical checks on every call of a PC step."""
    return [not (e.guard_type == "DUPLICATE_INPUT" and e.has_value and isinstance(e.value, types.ModuleType)) for e in entries]


@dataclass
class Compiled:
    """One compiled function and the batch size it serves."""

    fn: Callable[..., Any]
    setup_seconds: float = 0.0  # making ``fn`` (the first ``torch.compile`` of a process imports Inductor)
    batch: int | None = None
    compile_seconds: float | None = None
    groups: tuple[FunctionalGroup, ...] | None = None  # a functional optimiser step's


@dataclass
class CompileCache:
    """Compiled relaxations / PC steps by plan (a small bounded cache)."""

    limit: int = 8
    entries: dict[tuple, Compiled] = field(default_factory=dict)

    def get(self, key: tuple, make: Callable[[], Callable[..., Any]]) -> Compiled:
        entry = self.entries.get(key)
        if entry is None:
            if len(self.entries) >= self.limit:
                self.entries.pop(next(iter(self.entries)))
            start = time.perf_counter()
            fn = make()
            entry = self.entries[key] = Compiled(fn, time.perf_counter() - start)
        return entry


CACHE = CompileCache()

_compile_seconds = 0.0


def total_compile_seconds() -> float:
    """Wall seconds this process has spent in first (compiling) calls of compiled relaxations and
    PC steps so far; training loops subtract it to report epoch times without compilation."""
    return _compile_seconds


def run(entry: Compiled, batch: int, *args) -> Any | None:
    """Run the compiled function if it serves ``batch`` (the first batch size it saw)."""
    if entry.batch is None:
        entry.batch = batch
        start = time.perf_counter()
        # torch.optim's step functions are code shared by every optimiser of a process, compiled
        # once per optimiser (see _own_code): let more than the default 8 optimisers have one
        with torch._dynamo.config.patch(recompile_limit=max(torch._dynamo.config.recompile_limit, RECOMPILE_LIMIT)):
            out = entry.fn(*args)
        entry.compile_seconds = time.perf_counter() - start + entry.setup_seconds
        global _compile_seconds
        _compile_seconds += entry.compile_seconds
        return out
    if entry.batch != batch:
        return None
    return entry.fn(*args)


def relax_values(plan: Plan, params: Params, clamp: Sequence[torch.Tensor | None]):
    """``(values, initial)``: relaxed and feed-forward values ``z[0] .. z[L]`` from the compiled
    relaxation, or ``None`` when this batch size is served by the eager path."""
    key = ("relax", plan)
    entry = CACHE.get(key, lambda: compile_graph(lambda c, f: _relax_values(plan, c, f)))
    batch = next(v for v in clamp if v is not None).shape[0]
    return run(entry, batch, list(clamp), flatten(params))


def pc_step(plan: Plan, params: Params, clamp: Sequence[torch.Tensor | None], forward_update: bool):
    """``(E, grads)`` of :func:`pclab.core.fast.chain.weight_gradients` after a compiled relaxation, or
    ``None`` when this batch size is served by the eager path."""
    key = ("learn", plan, forward_update)
    entry = CACHE.get(key, lambda: compile_graph(lambda c, f: _learn(plan, forward_update, c, f)))
    batch = next(v for v in clamp if v is not None).shape[0]
    return run(entry, batch, list(clamp), flatten(params))


# ---------------------------------------------------------------------------- any PCN
def _energy_grads(model: PCN, clamped: frozenset[str]) -> Callable[..., Any]:
    """``(free values, fixed values, cached, multipliers) -> (dE/dz per free node, energies)``: the
    gradient of the summed precision-weighted energy by ``torch.func.grad`` (each sample's energy
    depends on its own row only, so the sum's gradient is every sample's own)."""

    def total(free: dict[str, torch.Tensor], fixed: dict[str, torch.Tensor], cached: dict[str, torch.Tensor] | None,
              multipliers: dict[str, torch.Tensor] | None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        values = {**fixed, **free}
        energies = model.energies(values, clamped, model.predictions(values, cached=cached), multipliers)
        summed = next(iter(free.values())).sum() * 0.0  # a tensor even with no active error node
        for e in energies.values():
            summed = summed + e.sum()
        return summed, energies

    def grads(free: dict[str, torch.Tensor], fixed: dict[str, torch.Tensor], cached: dict[str, torch.Tensor] | None,
              multipliers: dict[str, torch.Tensor] | None) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        return torch.func.grad(total, has_aux=True)(free, fixed, cached, multipliers)

    return grads


def traceable(model: PCN, free: Sequence[str]) -> bool:
    """Whether :func:`latent_grads` applies to ``model``: some node is free, and no edge module
    samples or moves running statistics when called (dropout, a ``torch.nn`` BatchNorm in training
    mode). Checked once per relaxation (it walks the modules), not at every step."""
    return bool(free) and all(evaluates_once(m) for m in model.edge_modules.values())


def latent_grads(model: PCN, values: Mapping[str, torch.Tensor], free: Sequence[str], clamped: frozenset[str],
                 multipliers: Mapping[str, float] | None, cached: Mapping[str, torch.Tensor] | None) -> tuple[dict, dict] | None:
    """:meth:`PCN.latent_grads` (not differentiable, no fixed-prediction sources) of a :func:`traceable`
    PCN as one compiled graph: the predictions, energies and their latent gradient with Inductor's
    fused loops between the products and convolutions. ``None`` for a batch size other than the first
    one compiled: the eager code must run instead.

    Precision multipliers go in as tensors, so a schedule's changing values do not recompile.
    The same numbers as the eager gradients up to float rounding (``tests/fast``); :func:`pclab.core.relax.relax`
    calls it for pclab's ``SGD`` only (an Adam-like rule would blow that rounding up where a
    feed-forward start makes the gradient exactly zero). It pays where the elementwise work between
    the products is a large part of a step, less where convolutions dominate (measured times: the
    benchmarks page)."""
    # (train / eval mode: a graph each, each compiled and timed on its first call)
    key = ("grads", model, model.training, clamped, tuple(free), multipliers is None, None if cached is None else tuple(cached))
    entry = CACHE.get(key, lambda: compile_graph(_energy_grads(model, clamped)))
    like = values[free[0]]
    if multipliers is not None:
        multipliers = {n: torch.tensor(float(m), dtype=like.dtype, device=like.device) for n, m in multipliers.items()}
    fixed = {n: v for n, v in values.items() if n not in free}
    return run(entry, like.shape[0], {n: values[n] for n in free}, fixed, None if cached is None else dict(cached), multipliers)


def hyperparameters(optimizer: torch.optim.Optimizer) -> tuple:
    """Everything of ``optimizer.param_groups`` but the parameters (tensors by identity), to tell
    whether a compiled optimiser step still applies."""
    return tuple(
        tuple((k, ("tensor", id(v)) if isinstance(v, torch.Tensor) else v) for k, v in group.items() if k != "params")
        for group in optimizer.param_groups
    )


def rates_are_tensors(optimizer: torch.optim.Optimizer) -> bool:
    """Every parameter group's learning rate is a tensor (``torch.optim.Adam(params, lr=torch.tensor(1e-3))``):
    a scheduler then updates it in place, and a compiled optimiser step reads the new value
    instead of recompiling."""
    return all(isinstance(group["lr"], torch.Tensor) for group in optimizer.param_groups)


def pc_train_step(plan: Plan, params: Params, clamp: Sequence[torch.Tensor | None], forward_update: bool,
                  optimizer: torch.optim.Optimizer) -> torch.Tensor | None:
    """One whole PC training step -- relaxation, weight gradients (left in ``.grad``, as
    ``backward`` would) and the optimiser's step -- from one compiled frame; the batch-mean energy,
    or ``None`` (nothing done) when this batch size is served by the eager path, or when a
    functional step (:func:`functional_groups`) finds no optimiser state yet (the first eager step
    creates it, in ``torch.optim``'s own format).

    The step is compiled with ``optimizer``'s hyperparameters of the first call: the caller keeps
    them (:func:`hyperparameters`) and steps eagerly after a change, which would recompile."""
    flat = flatten(params)
    batch = next(v for v in clamp if v is not None).shape[0]
    if _functional_kind(optimizer) is None:
        return _optimizer_train_step(plan, flat, clamp, forward_update, optimizer, batch)
    return _functional_step(("train", plan, forward_update), plan, flat, list(clamp), optimizer, batch, 1,
                            lambda groups: lambda c, f, s, k: _train_functional(plan, forward_update, groups, c, f, s, k))


def bpti_step(plan: Plan, params: Params, given: Sequence[torch.Tensor | None],
              terms: tuple[chain_adjoint.LossTerm, ...], targets: Sequence[torch.Tensor], need: tuple[tuple[bool, bool], ...]):
    """``(values, grads)`` of :func:`pclab.core.fast.chain_adjoint.task_loss_grads` (bp-through-inference
    with a task loss) as one compiled graph, or ``None`` when this batch size is served by the eager path."""
    key = ("bpti", plan, terms, need)
    entry = CACHE.get(key, lambda: compile_graph(lambda i, f: _bpti_learn(plan, terms, need, i, f)))
    batch = next(v for v in given if v is not None).shape[0]
    return run(entry, batch, (list(given), list(targets)), flatten(params))


def bpti_train_step(plan: Plan, params: Params, given: Sequence[torch.Tensor | None],
                    terms: tuple[chain_adjoint.LossTerm, ...], targets: Sequence[torch.Tensor], need: tuple[tuple[bool, bool], ...],
                    reached: Sequence[bool], optimizer: torch.optim.Optimizer) -> torch.Tensor | None:
    """:func:`bpti_step` and ``optimizer``'s step (a functional update of the parameters in
    ``reached``, :func:`functional_groups`) as one compiled graph, the gradients left in ``.grad``;
    the loss and term values, or ``None`` where this does not apply (as :func:`pc_train_step`)."""
    if _functional_kind(optimizer) is None:
        return None
    flat = flatten(params)
    batch = next(v for v in given if v is not None).shape[0]
    return _functional_step(("bpti-train", plan, terms, need), plan, flat, (list(given), list(targets)), optimizer, batch, 1,
                            lambda groups: lambda i, f, s, k: _bpti_functional(plan, terms, need, groups, i, f, s, k), reached)


def incremental_train_step(plan: Plan, params: Params, clamp: Sequence[torch.Tensor | None],
                           optimizer: torch.optim.Optimizer) -> torch.Tensor | None:
    """Incremental PC (:func:`pclab.core.fast.chain.incremental`) on one batch as one compiled graph: the
    ``T`` latent steps, each with its weight gradients and ``optimizer``'s functional update
    (:func:`functional_groups`), the last gradients left in ``.grad``; the energy of the last step,
    or ``None`` where this does not apply (another optimiser class or step hooks, no optimiser
    state yet, another batch size): the caller then takes the eager path. Hyperparameters as in
    :func:`pc_train_step`."""
    if _functional_kind(optimizer) is None:
        return None
    flat = flatten(params)
    batch = next(v for v in clamp if v is not None).shape[0]
    return _functional_step(("incremental", plan), plan, flat, list(clamp), optimizer, batch, plan.steps,
                            lambda groups: lambda c, f, s, k: _incremental_functional(plan, groups, c, f, s, k))


def _functional_step(kind: tuple, plan: Plan, flat: list[torch.Tensor], inputs: Any,
                     optimizer: torch.optim.Optimizer, batch: int, updates: int,
                     traced: Callable[[tuple[FunctionalGroup, ...]], Callable[..., Any]],
                     reached: Sequence[bool] | None = None) -> torch.Tensor | None:
    """Run (compiling at first) ``traced(groups)(inputs, flat, state, corrections) -> (energy, per-layer
    grads)``, a function that takes ``updates`` optimiser steps, updating ``flat`` and the
    optimiser's state in place, then leave the gradients in ``.grad``; ``None`` if the optimiser
    has no state yet or the graph serves another batch size. ``inputs``: the batch's tensors
    (the clamped values); ``reached``: as :func:`functional_groups`."""
    layout = (tuple(p.requires_grad for p in flat), tuple(len(group["params"]) for group in optimizer.param_groups))
    key = (*kind, optimizer, layout)
    entry = CACHE.entries.get(key)
    groups = entry.groups if entry is not None else functional_groups(plan, flat, optimizer, reached)
    state = _state(optimizer, flat, groups)
    if state is None or (entry is not None and entry.batch not in (None, batch)):
        return None
    entry = CACHE.get(key, lambda: compile_graph(traced(groups)))
    entry.groups = groups
    corrections = [group.corrections(tensors, updates) for group, tensors in zip(groups, state)]
    energy, grads = run(entry, batch, inputs, flat, state, corrections)
    for group in optimizer.param_groups:  # zero_grad(set_to_none=True), without its profiler and dispatch overhead
        for param in group["params"]:
            param.grad = None
    set_grads(plan.chain, grads)
    optimizer._opt_called = True  # what torch.optim's step tells a learning-rate scheduler
    return energy


def _state(optimizer: torch.optim.Optimizer, flat: Sequence[torch.Tensor],
           groups: Sequence[FunctionalGroup]) -> list[list[list[torch.Tensor]]] | None:
    """Each group's state tensors, one list per state key, or ``None`` if a stepped parameter has none yet."""
    out = []
    for group in groups:
        lists: list[list[torch.Tensor]] = [[] for _ in group.state_keys]
        for i in group.index:
            state = optimizer.state.get(flat[i])
            for values, key in zip(lists, group.state_keys):
                value = None if state is None else state.get(key)
                if value is None:
                    return None
                values.append(value)
        out.append(lists)
    return out


def _optimizer_train_step(plan: Plan, flat: list[torch.Tensor], clamp: Sequence[torch.Tensor | None],
                          forward_update: bool, optimizer: torch.optim.Optimizer, batch: int) -> torch.Tensor | None:
    """:func:`pc_train_step` with ``optimizer.step()`` itself run from the compiled frame (a second graph)."""
    key = ("train", plan, forward_update, optimizer)

    def make() -> Callable[..., Any]:
        train = _own_code(_train)  # its own resume functions after torch.optim's graph breaks, too
        return compile_graph(lambda c, f: train(plan, forward_update, optimizer, c, f), fullgraph=False)

    entry = CACHE.get(key, make)
    if entry.batch is not None and entry.batch != batch:
        return None
    optimizer.zero_grad(set_to_none=True)
    return run(entry, batch, list(clamp), flat)


def compile_seconds() -> dict[str, float]:
    """Wall time of each compiled function's first call (compilation included), by kind."""
    return {f"{key[0]}#{i}": e.compile_seconds for i, (key, e) in enumerate(CACHE.entries.items()) if e.compile_seconds is not None}
