"""``Inference(compile=True)`` for bp-through-inference on Dense chains: the compiled forward and
reverse pass (:mod:`pclab.core.fast.compiled_adjoint`) give the eager hand-derived pass's numbers.

Compiling takes seconds (tens on a cold Inductor cache), so this file is marked slow.
"""

from __future__ import annotations

import pytest
import torch
from torch._dynamo.utils import counters

from nets import mlp, randn, twin
from pclab.core import SGD, BPThroughInference, Inference, TaskLoss, relax
from pclab.core.fast import anchored, chain_adjoint, compiled, path
from pclab.core.fast.chain import Anchored

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")]

F32 = torch.float32
# widths: [12, 8, 8, 4] has no anchored node at T <= 4; in [12, 16, 4, 4] the first hidden node
# is anchored (16 -> 4 into the next layer: its W W^T is small); in [12, 20, 24, 20, 4] layers 2 and
# 3 are wider than compiled.narrow's 16 with a free input (their weight terms: stacked products)
CHAINS = {"plain": [12, 8, 8, 4], "anchored": [12, 16, 4, 4], "wide": [12, 20, 24, 20, 4]}


def _entries(model) -> dict[str, compiled.Compiled]:
    """The compiled graphs of ``model``'s chain (forward / reverse pass, whole step), by kind."""
    first = model.module("x", "h1")
    return {key[0]: e for key, e in compiled.CACHE.entries.items()
            if key[0] in ("adjoint-forward", "adjoint-reverse", "bpti", "bpti-train") and key[1].chain.layers[0] is first}


class _OwnLoss(TaskLoss):
    """A TaskLoss subclass: the rule cannot know its derivative and takes autograd through the
    compiled forward and reverse pass."""


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).detach().norm()) / max(float(b.detach().norm()), 1e-30)


@pytest.fixture
def eager_calls(monkeypatch):
    """Counts the eager forward and reverse passes (not while TorchDynamo traces them into a
    compiled graph: it would replay the count with every call of the graph, and guard on it)."""
    calls = {"forward": 0, "reverse": 0}
    run, reverse = chain_adjoint.record, chain_adjoint.reverse

    def counted_run(*args):
        if not torch.compiler.is_compiling():
            calls["forward"] += 1
        return run(*args)

    def counted_reverse(*args):
        if not torch.compiler.is_compiling():
            calls["reverse"] += 1
        return reverse(*args)

    monkeypatch.setattr(chain_adjoint, "record", counted_run)
    monkeypatch.setattr(chain_adjoint, "reverse", counted_reverse)
    return calls


@pytest.mark.parametrize("loss", ["plain", "subclass"])
@pytest.mark.parametrize("case", sorted(CHAINS))
def test_compiled_bp_through_inference_learns_like_the_eager_reverse_pass(case, loss, eager_calls):
    """A plain TaskLoss: after an eager first step, the whole step (relaxation, loss, reverse pass,
    optimiser update) is one compiled graph; a TaskLoss subclass: autograd through the compiled
    forward and reverse pass, then the optimiser's step as a compiled graph of its own."""
    widths, steps = CHAINS[case], 4
    assert Anchored.pays(6, widths[1], widths[2], steps - 1) == (case == "anchored")
    model = mlp(widths, "tanh", dtype=F32)
    other = twin(model)
    task = (TaskLoss if loss == "plain" else _OwnLoss)(reconstruct={"y": 1.0})
    eager = BPThroughInference(other, Inference(steps=steps, optimizer=SGD(0.1)), torch.optim.SGD(other.parameters(), 0.05), task, ("x", "y"))
    inference = Inference(steps=steps, optimizer=SGD(0.1), compile=True)
    fast = BPThroughInference(model, inference, torch.optim.SGD(model.parameters(), 0.05), task, ("x", "y"))
    before = compiled.total_compile_seconds()
    graphs, breaks = None, sum(counters["graph_break"].values())  # (other tests' breaks: e.g. torch.optim's own)
    whole = loss == "plain"
    for k, batch in enumerate([6, 6, 6, 3, 6]):  # batch 3 runs on the eager path
        data = {"x": randn(batch, 12, seed=k, dtype=F32), "y": randn(batch, widths[-1], seed=50 + k, dtype=F32)}
        calls = dict(eager_calls)
        a = fast.step(data)
        ran_eagerly = {kind: eager_calls[kind] - calls[kind] for kind in calls}
        if k == int(whole):  # (the plain loss's first step is eager)
            graphs = counters["stats"]["unique_graphs"]
        if k > int(whole):  # the compiled graphs serve batch 6 without retracing; batch 3 takes the eager pass
            assert ran_eagerly == ({"forward": 1, "reverse": 1} if batch == 3 else {"forward": 0, "reverse": 0})
        b = eager.step(data)
        assert a.keys() == b.keys() and a["loss"] == pytest.approx(b["loss"], rel=1e-5)
        for p, q in zip(model.parameters(), other.parameters()):
            assert _rel(p, q) <= 1e-5
    assert counters["stats"]["unique_graphs"] == graphs and sum(counters["graph_break"].values()) == breaks
    entries = _entries(model)
    assert set(entries) == ({"bpti-train"} if whole else {"adjoint-forward", "adjoint-reverse"})
    assert all(e.batch == 6 and e.compile_seconds > 0 for e in entries.values())
    updates = [e for key, e in compiled.CACHE.entries.items() if key[0] == "update" and key[1] is fast.optimizer]
    if not whole:  # the optimiser's step after backward compiles too (compiled.optimizer_update), for any batch size
        assert len(updates) == 1 and updates[0].groups is not None and updates[0].compile_seconds > 0
    else:
        assert not updates
    total = sum(e.compile_seconds for e in [*entries.values(), *updates])
    assert compiled.total_compile_seconds() - before == pytest.approx(total)
    clamp = {"x": data["x"], "y": data["y"]}
    assert path(model, fast.inference, batch=clamp, differentiable=True) == "compiled-adjoint"
    assert anchored(model, clamp, fast.inference) == (("h1",) if case == "anchored" else ())


def _loss(model, values) -> torch.Tensor:
    """On the output prediction and on both hidden values (the anchored one's too)."""
    mu = model._prediction("y", values)
    return (mu**2).mean() + (values["h1"] ** 3).mean() + 0.5 * (values["h2"] ** 2).mean()


@pytest.mark.parametrize("case", ["anchored", "start-momentum"])
def test_compiled_gradients_equal_the_eager_hand_derived_ones(case, eager_calls):
    """A loss on the output and the hidden values; with ``start-momentum`` a given start (whose
    values get their gradient too) relaxed by heavy-ball SGD."""
    widths = CHAINS["anchored"]
    model = mlp(widths, "tanh", dtype=F32)
    momentum = case == "start-momentum"
    optimizer = SGD(0.05, momentum=0.5) if momentum else SGD(0.1)
    clamp = {"x": randn(6, 12, seed=1, dtype=F32), "y": randn(6, widths[-1], seed=2, dtype=F32)}

    def grads(compile: bool, seed: int):
        start = None
        if momentum:
            start = {n: randn(6, model.nodes[n].shape[0], seed=seed + i, dtype=F32).requires_grad_() for i, n in enumerate(["h1", "h2"])}
        inference = Inference(steps=3, optimizer=optimizer, init="zeros" if momentum else "forward", compile=compile)
        relaxed = relax(model, clamp, inference, differentiable=True, initial=start)
        inputs = list(model.parameters()) + (list(start.values()) if momentum else [])
        loss = _loss(model, relaxed.values)
        first = torch.autograd.grad(loss, inputs, retain_graph=True)
        again = torch.autograd.grad(loss, inputs)  # the saved record is reused, not consumed
        assert all(torch.equal(x, y) for x, y in zip(first, again))
        assert path(model, inference, batch=clamp, differentiable=True, initial=start) == ("compiled-adjoint" if compile else "chain-adjoint")
        return first, relaxed, anchored(model, clamp, inference)

    for seed in (10, 20):  # the second call runs the compiled graphs
        calls = dict(eager_calls)
        fast, relaxed, fast_anchored = grads(True, seed)
        if seed == 20:
            assert eager_calls == calls
        slow, reference, slow_anchored = grads(False, seed)
        assert fast_anchored == slow_anchored == (() if momentum else ("h1",))
        assert max(_rel(a, b) for a, b in zip(fast, slow)) <= 1e-5
        assert max(_rel(relaxed.values[n], reference.values[n]) for n in relaxed.values) <= 1e-5
    entries = _entries(model)
    assert set(entries) == {"adjoint-forward", "adjoint-reverse"} and all(e.batch == 6 for e in entries.values())


@pytest.mark.parametrize("loss", ["plain", "subclass"])
@pytest.mark.parametrize("optimizer", [
    lambda ps: torch.optim.Adam(ps, 0.01, weight_decay=0.01),
    lambda ps: torch.optim.SGD(ps, 0.05, momentum=0.9, nesterov=True),
    lambda ps: torch.optim.RMSprop(ps, 0.01),  # not traceable here: torch.optim's own step
], ids=["adam", "sgd-nesterov", "rmsprop"])
def test_the_optimiser_step_of_compiled_bp_through_inference_matches_torch_optim(optimizer, loss):
    """Plain TaskLoss: Adam and SGD update inside the whole step's graph; RMSprop steps by its own
    ``step`` after a compiled graph of the gradients. A TaskLoss subclass: the step after the
    compiled reverse pass compiles on its own (compiled.optimizer_update), RMSprop's excepted."""
    widths = CHAINS["anchored"]
    model = mlp(widths, "tanh", dtype=F32)
    other = twin(model)
    task = (TaskLoss if loss == "plain" else _OwnLoss)(reconstruct={"y": 1.0})
    rules = [BPThroughInference(m, Inference(steps=3, optimizer=SGD(0.1), compile=compile), optimizer(m.parameters()), task, ("x", "y"))
             for m, compile in ((other, False), (model, True))]
    for k in range(4):  # a stateful optimiser's first step runs eagerly: torch.optim creates its state
        data = {"x": randn(6, 12, seed=k, dtype=F32), "y": randn(6, widths[-1], seed=50 + k, dtype=F32)}
        b, a = (rule.step(data) for rule in rules)
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5)
        for p, q in zip(model.parameters(), other.parameters()):
            assert _rel(p, q) <= 1e-5
    fast = rules[1]
    traceable = not isinstance(fast.optimizer, torch.optim.RMSprop)
    update = [e for key, e in compiled.CACHE.entries.items() if key[0] == "update" and key[1] is fast.optimizer]
    assert len(update) == (1 if traceable and loss == "subclass" else 0)
    if loss == "plain":
        assert set(_entries(model)) == {"bpti-train" if traceable else "bpti"}
    if isinstance(fast.optimizer, torch.optim.Adam):
        assert all(float(state["step"]) == 4 for state in fast.optimizer.state.values())
