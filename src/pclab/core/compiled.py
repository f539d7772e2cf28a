"""``torch.compile`` of the Dense-chain fast path (opt in with ``Inference(compile=True)``).

The functions of :mod:`pclab.core.chain` are plain tensor code whose control flow depends only on
the :class:`~pclab.core.chain.Plan` (which layers carry error at which step is known before any
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
  ``tests/perf`` checks;
* the PC rule's weight update joins the compiled call (:func:`pc_train_step`): ``torch.optim``'s
  ``step`` breaks the graph on purpose, so it becomes a second, fused graph run from the same
  compiled frame -- what PCX gets from jitting optax's update into its train step. That holds
  while the optimiser's hyperparameters stay those of the first call; a changed float learning
  rate would recompile, so after a change (or with a scheduler over float rates) the step runs
  eagerly instead. A tensor rate (:func:`rates_are_tensors`) is an input of the compiled step: a
  scheduler updates it in place and nothing recompiles.
"""

from __future__ import annotations

import logging
import time
import types
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from . import chain as dense


def _flat(params: dense.Params) -> list[torch.Tensor]:
    return [t for pair in params for t in pair if t is not None]


def _unflat(plan: dense.Plan, flat: Sequence[torch.Tensor]) -> dense.Params:
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


def _relax_values(plan: dense.Plan, clamp: Sequence[torch.Tensor | None], flat: Sequence[torch.Tensor]):
    params = _unflat(plan, flat)
    start, predictions = dense.feed_forward(plan, params, clamp)
    state = dense.relax_chain(plan, params, start, predictions)
    return state.values, state.initial


def _learn(plan: dense.Plan, forward_update: bool, clamp: Sequence[torch.Tensor | None], flat: Sequence[torch.Tensor]):
    params = _unflat(plan, flat)
    start, predictions = dense.feed_forward(plan, params, clamp)
    state = dense.relax_chain(plan, params, start, predictions)
    return dense.weight_gradients(plan, state, forward_update)


def _train(plan: dense.Plan, forward_update: bool, optimizer: torch.optim.Optimizer,
           clamp: Sequence[torch.Tensor | None], flat: Sequence[torch.Tensor]) -> torch.Tensor:
    energy, grads = _learn(plan, forward_update, clamp, flat)
    dense.set_grads(plan.chain, grads)  # (the caller cleared every .grad: zero_grad breaks the graph)
    optimizer.step()
    return energy


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


def _compile(fn: Callable[..., Any], fullgraph: bool = True) -> Callable[..., Any]:
    """``torch.compile`` of (a copy of, :func:`_own_code`) ``fn`` with static shapes, into one whole
    graph unless ``fullgraph=False``."""
    return torch.compile(_own_code(fn), fullgraph=fullgraph, dynamic=False, options=dict(INDUCTOR_OPTIONS))


@dataclass
class _Compiled:
    """One compiled function and the batch size it serves."""

    fn: Callable[..., Any]
    setup_seconds: float = 0.0  # making ``fn`` (the first ``torch.compile`` of a process imports Inductor: ~1 s)
    batch: int | None = None
    compile_seconds: float | None = None


@dataclass
class CompileCache:
    """Compiled relaxations / PC steps by plan (a small bounded cache)."""

    limit: int = 8
    entries: dict[tuple, _Compiled] = field(default_factory=dict)

    def get(self, key: tuple, make: Callable[[], Callable[..., Any]]) -> _Compiled:
        entry = self.entries.get(key)
        if entry is None:
            if len(self.entries) >= self.limit:
                self.entries.pop(next(iter(self.entries)))
            start = time.perf_counter()
            fn = make()
            entry = self.entries[key] = _Compiled(fn, time.perf_counter() - start)
        return entry


CACHE = CompileCache()

_compile_seconds = 0.0


def total_compile_seconds() -> float:
    """Wall seconds this process has spent in first (compiling) calls of compiled relaxations and
    PC steps so far; training loops subtract it to report epoch times without compilation."""
    return _compile_seconds


def _call(entry: _Compiled, batch: int, *args) -> Any | None:
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


def relax_values(plan: dense.Plan, params: dense.Params, clamp: Sequence[torch.Tensor | None]):
    """``(values, initial)``: relaxed and feed-forward values ``z[0] .. z[L]`` from the compiled
    relaxation, or ``None`` when this batch size is served by the eager path."""
    key = ("relax", plan)
    entry = CACHE.get(key, lambda: _compile(lambda c, f: _relax_values(plan, c, f)))
    batch = next(v for v in clamp if v is not None).shape[0]
    return _call(entry, batch, list(clamp), _flat(params))


def pc_step(plan: dense.Plan, params: dense.Params, clamp: Sequence[torch.Tensor | None], forward_update: bool):
    """``(E, grads)`` of :func:`pclab.core.chain.weight_gradients` after a compiled relaxation, or
    ``None`` when this batch size is served by the eager path."""
    key = ("learn", plan, forward_update)
    entry = CACHE.get(key, lambda: _compile(lambda c, f: _learn(plan, forward_update, c, f)))
    batch = next(v for v in clamp if v is not None).shape[0]
    return _call(entry, batch, list(clamp), _flat(params))


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


def pc_train_step(plan: dense.Plan, params: dense.Params, clamp: Sequence[torch.Tensor | None], forward_update: bool,
                  optimizer: torch.optim.Optimizer) -> torch.Tensor | None:
    """One whole PC training step -- relaxation, weight gradients (left in ``.grad``, as
    ``backward`` would) and ``optimizer.step()`` -- from one compiled frame; the batch-mean energy,
    or ``None`` (nothing done) when this batch size is served by the eager path.

    The step is compiled with ``optimizer``'s hyperparameters of the first call: the caller keeps
    them (:func:`hyperparameters`) and steps eagerly after a change, which would recompile."""
    key = ("train", plan, forward_update, optimizer)

    def make() -> Callable[..., Any]:
        train = _own_code(_train)  # its own resume functions after torch.optim's graph breaks, too
        return _compile(lambda c, f: train(plan, forward_update, optimizer, c, f), fullgraph=False)

    entry = CACHE.get(key, make)
    batch = next(v for v in clamp if v is not None).shape[0]
    if entry.batch is not None and entry.batch != batch:
        return None
    optimizer.zero_grad(set_to_none=True)
    return _call(entry, batch, list(clamp), _flat(params))


def compile_seconds() -> dict[str, float]:
    """Wall time of each compiled function's first call (compilation included), by kind."""
    return {f"{key[0]}#{i}": e.compile_seconds for i, (key, e) in enumerate(CACHE.entries.items()) if e.compile_seconds is not None}
