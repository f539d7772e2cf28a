"""The hand-derived reverse pass of the Dense-chain relaxation (:mod:`pclab.core.fast.chain_adjoint`)
gives the gradients of autograd through the unrolled relaxation.

References: autograd through the fast relaxation (``Inference(accelerators=("chain",))``) and autograd
through the general graph code (``method="manual"``), both float64.
"""

from __future__ import annotations

import contextlib
from dataclasses import replace

import pytest
import torch
from hypothesis import given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from nets import chain_names, mlp, randn, reference
from pclab.core import SGD, Adam, Constant, CrossEntropy, Decaying, Inference, Spiking, TaskLoss, relax
from pclab.core.fast import anchored, chain_adjoint, path
from pclab.core.fast.dispatch import chain_plan
from pclab.core.layers import CURVATURE

OPTIMIZERS = {
    "sgd": SGD(0.1),
    "momentum": SGD(0.05, momentum=0.9),
    "nesterov": SGD(0.05, momentum=0.8, nesterov=True),
}
SCHEDULES = {"constant": Constant(), "spiking": Spiking(0.1), "decaying": Decaying(0.5), "scaled": Constant(0.5)}
ACTIVATIONS = sorted(CURVATURE)


def _clamp(model, pattern: str, batch: int, ce: bool) -> dict[str, torch.Tensor]:
    ns = list(model.nodes)
    width = {n: model.nodes[n].shape[0] for n in ns}
    chosen = {"io": [ns[0], ns[-1]], "out": [ns[-1]], "mid": [ns[0], ns[len(ns) // 2], ns[-1]], "in": [ns[0]]}[pattern]
    out = {}
    for i, n in enumerate(chosen):
        value = randn(batch, width[n], seed=11 + i)
        out[n] = torch.softmax(value, 1) if (n == ns[-1] and ce) else value
    return out


def _loss(model, values: dict[str, torch.Tensor], clamped, target: torch.Tensor) -> torch.Tensor:
    """An MSE on the output prediction plus a cubic term on every free value, so that every final
    value (the anchored node's too) gets an adjoint."""
    mu = model._prediction(list(model.nodes)[-1], values)
    loss = ((mu - target) ** 2).mean()
    for n, v in values.items():
        if n not in clamped:
            loss = loss + 0.1 * (v**3).mean()
    return loss


def _grads(model, clamp, inference, target, start=None, hand: bool = True):
    """Parameter gradients (and the start's) of ``_loss`` after a differentiable relaxation; which
    path ran (``True``: the hand-derived reverse pass)."""
    params = list(model.parameters())
    inputs = params + ([start[n] for n in start if n not in clamp] if start is not None else [])
    if not hand:  # the Dense-chain relaxation without its reverse pass
        inference = replace(inference, accelerators=("chain",))
    relaxed = relax(model, clamp, inference, differentiable=True, initial=start)
    loss = _loss(model, relaxed.values, relaxed.clamped, target)
    grads = torch.autograd.grad(loss, inputs, allow_unused=True)
    used = any(v.grad_fn is not None and type(v.grad_fn).__name__ == "ChainRelaxationBackward" for v in relaxed.values.values())
    assert used == (path(model, inference, batch=clamp, differentiable=True, initial=start) == "chain-adjoint")
    return float(loss.detach()), grads, used, relaxed


def _rel(a: torch.Tensor | None, b: torch.Tensor | None) -> float:
    if a is None or b is None:  # no path from the loss: both must say so (or be exactly zero)
        other = b if a is None else a
        return 0.0 if other is None or float(other.abs().max()) == 0.0 else float("inf")
    return float((a - b).norm()) / max(float(b.norm()), 1e-30)


def _compare(model, clamp, inference, target, start=None, general: bool = True) -> None:
    loss, hand, used, _ = _grads(model, clamp, inference, target, start)
    assert used == (len(clamp) < len(model.nodes)), "the hand-derived reverse pass did not run"
    refs = [_grads(model, clamp, inference, target, start, hand=False)]
    if general:
        refs.append(_grads(model, clamp, reference(inference), target, start))
    for ref_loss, ref, ref_used, _ in refs:
        assert not ref_used
        assert loss == pytest.approx(ref_loss, rel=1e-12)
        worst = max(_rel(a, b) for a, b in zip(hand, ref))
        assert worst < 1e-9, worst


@hsettings(max_examples=60, deadline=None)
@given(
    depth=st.integers(2, 5),
    widths=st.lists(st.integers(2, 7), min_size=6, max_size=6),
    activation=st.sampled_from(ACTIVATIONS),
    optimizer=st.sampled_from(sorted(OPTIMIZERS)),
    pattern=st.sampled_from(["io", "out", "mid"]),
    output=st.sampled_from(["gaussian", "ce"]),
    schedule=st.sampled_from(sorted(SCHEDULES)),
    steps=st.integers(1, 9),
    bias=st.booleans(),
)
def test_hand_derived_reverse_pass_equals_autograd(depth, widths, activation, optimizer, pattern, output, schedule, steps, bias):
    ce = output == "ce"
    model = mlp(widths[: depth + 1], activation, output=CrossEntropy(0.7) if ce else None,
                  precisions=[1.0 + 0.25 * l for l in range(depth)], bias=bias)
    clamp = _clamp(model, pattern, batch=4, ce=ce)
    inference = Inference(steps=steps, optimizer=OPTIMIZERS[optimizer], precision=SCHEDULES[schedule])
    _compare(model, clamp, inference, randn(4, widths[depth], seed=3))


@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("output", ["gaussian", "ce"])
def test_every_activation_and_output_energy_on_a_training_chain(activation, output):
    """Input and label clamped, wide enough for the anchored first hidden node (the MLP case)."""
    model = mlp([9, 8, 8, 3], activation, output=CrossEntropy() if output == "ce" else None)
    clamp = _clamp(model, "io", batch=6, ce=output == "ce")
    inference = Inference(steps=12, optimizer=SGD(0.1))
    _, _, used, relaxed = _grads(model, clamp, inference, randn(6, 3, seed=3))
    assert used and anchored(model, clamp, inference) == ("h1",)
    _compare(model, clamp, inference, randn(6, 3, seed=3))


def test_the_graph_can_be_differentiated_again_with_retain_graph():
    """autograd.grad(..., retain_graph=True) twice (one call per layer, as the dynamics study's
    alignment does) gives the same gradients as one call for all parameters."""
    model = mlp([9, 8, 8, 3], "tanh")
    clamp = _clamp(model, "io", batch=6, ce=False)
    relaxed = relax(model, clamp, Inference(steps=6, optimizer=SGD(0.1)), differentiable=True)
    loss = _loss(model, relaxed.values, relaxed.clamped, randn(6, 3, seed=3))
    params = list(model.parameters())
    together = torch.autograd.grad(loss, params, retain_graph=True)
    one_by_one = [torch.autograd.grad(loss, [p], retain_graph=True)[0] for p in params]
    for a, b in zip(together, one_by_one):
        assert torch.equal(a, b)


@pytest.mark.parametrize("init", ["zeros", "given"])
def test_start_values_get_their_gradient(init):
    """Not a feed-forward start: the start values are inputs of the reverse pass too."""
    model = mlp([5, 6, 4, 3], "tanh")
    clamp = _clamp(model, "io", batch=4, ce=False)
    inference = Inference(steps=7, optimizer=SGD(0.05, momentum=0.5), init="zeros")
    start = None
    if init == "given":
        start = {n: randn(4, model.nodes[n].shape[0], seed=30 + i).requires_grad_() for i, n in enumerate(chain_names(3)) if n not in clamp}
    _compare(model, clamp, inference, randn(4, 3, seed=3), start=start)


@hsettings(max_examples=40, deadline=None)
@given(
    depth=st.integers(2, 4),
    widths=st.lists(st.integers(2, 6), min_size=5, max_size=5),
    activation=st.sampled_from(ACTIVATIONS),
    optimizer=st.sampled_from(sorted(OPTIMIZERS)),
    pattern=st.sampled_from(["io", "mid"]),
    kinds=st.lists(st.sampled_from(["mse", "ce-index", "ce-probs"]), min_size=1, max_size=3),
    steps=st.integers(1, 6),
    frozen_bias=st.booleans(),
)
def test_task_loss_grads_equal_autograd_through_the_relaxation(depth, widths, activation, optimizer, pattern, kinds, steps, frozen_bias):
    """Bp-through-inference without autograd (relaxation, MSE / cross-entropy terms on any nodes'
    predictions, by-hand derivative, reverse pass) gives autograd's loss and gradients; class-index
    targets include PyTorch's ignore_index (-100)."""
    import torch.nn.functional as F

    from pclab.core.fast.chain import dense_chain

    model = mlp([widths[i] for i in range(depth + 1)], activation)
    if frozen_bias:
        next(iter(model.edge_modules.values())).linear.bias.requires_grad_(False)
    clamp = _clamp(model, pattern, batch=5, ce=False)
    inference = Inference(steps=steps, optimizer=OPTIMIZERS[optimizer])
    ns = list(model.nodes)
    structure = dense_chain(model)
    plan = chain_plan(model, structure, frozenset(clamp), inference, feed_forward=True)
    given = [clamp.get(n) for n in ns]
    if not chain_adjoint.applies(plan, given):
        return
    terms, targets = [], []
    for j, kind in enumerate(kinds):
        k = 1 + j % depth
        width = model.nodes[ns[k]].shape[0]
        if kind == "ce-index":
            target = torch.randint(0, width, (5,), generator=torch.Generator().manual_seed(j))
            target[j % 5] = -100
        elif kind == "ce-probs":
            target = randn(5, width, seed=40 + j).abs()  # (rows need not sum to 1)
        else:
            target = randn(5, width, seed=40 + j)
        terms.append(chain_adjoint.LossTerm(k, 0.5 + j, "mse" if kind == "mse" else "ce"))
        targets.append(target)
    params = structure.params()
    need = tuple((w.requires_grad, b is not None and b.requires_grad) for w, b in params)
    with torch.no_grad():
        values, grads = chain_adjoint.task_loss_grads(plan, params, given, terms, targets, need)

    relaxed = relax(model, clamp, inference, differentiable=True)
    loss, parts = None, []
    for term, target in zip(terms, targets):
        mu = model._prediction(ns[term.node], relaxed.values)
        part = F.mse_loss(mu, target) if term.kind == "mse" else F.cross_entropy(mu, target)
        parts.append(part)
        loss = term.weight * part if loss is None else loss + term.weight * part
    inputs = [p for pair in params for p in pair if p is not None and p.requires_grad]
    ref = torch.autograd.grad(loss, inputs, allow_unused=True)
    assert values.tolist() == pytest.approx([float(loss.detach()), *(float(p.detach()) for p in parts)], rel=1e-12)
    mine = [g for (dw, db), (w, b) in zip(grads, params) for g, p in ((dw, w), (db, b)) if p is not None and p.requires_grad]
    assert all(g is None for (dw, db), (w, b) in zip(grads, params) for g, p in ((dw, w), (db, b)) if p is None or not p.requires_grad)
    assert max(_rel(a, b) for a, b in zip(mine, ref)) < 1e-9


def _rule_steps(activation: str, batch, loss, clamp, steps: int, warns=contextlib.nullcontext):
    """One bp-through-inference step on twin chains 7-6-5-3, by the Dense-chain rule and by the
    general graph code, checking they agree; whether the Dense-chain rule took its whole step without autograd
    (:func:`~pclab.core.fast.chain_adjoint.task_loss_grads`, path ``"chain-adjoint"``)."""
    from pclab.core import BPThroughInference

    model, other = mlp([7, 6, 5, 3], activation), mlp([7, 6, 5, 3], activation)
    inference = Inference(steps=steps, optimizer=SGD(0.1))
    fast = BPThroughInference(model, inference, torch.optim.SGD(model.parameters(), 0.0), loss, clamp)
    slow = BPThroughInference(other, reference(inference), torch.optim.SGD(other.parameters(), 0.0), loss, clamp)
    whole = path(model, inference, fast, batch) == "chain-adjoint"
    assert path(other, slow.inference, slow, batch) == "reference"
    with warns():
        a = fast.step(batch)
    with warns():
        b = slow.step(batch)
    assert a.keys() == b.keys()
    for key in a:
        assert a[key] == pytest.approx(b[key], rel=1e-12)
    for p, q in zip(model.parameters(), other.parameters()):
        assert _rel(p.grad, q.grad) < 1e-9
    return whole


@pytest.mark.parametrize("loss", [TaskLoss(reconstruct={"y": 1.0}), TaskLoss(reconstruct={"y": 0.4}, classify={"y": 0.6})])
def test_bp_through_inference_rule_uses_it_and_matches_the_general_path(loss):
    """The rule's step on a chain is task_loss_grads (no autograd): the general path's loss and gradients."""
    batch = {"x": randn(5, 7, seed=1), "y": torch.softmax(randn(5, 3, seed=2), 1)}
    assert _rule_steps("gelu", batch, loss, ("x", "y"), steps=6)


@pytest.mark.parametrize("target", ["class-indices", "broadcast"])
def test_bp_through_inference_on_a_free_output_takes_class_indices_and_leaves_odd_targets_to_torch(target):
    """Clamped x and h2, the output y free: a class-index cross-entropy target goes the hand-derived
    way; an MSE target of another shape goes to F.mse_loss itself (its broadcasting, its warning)."""
    batch = {"x": randn(5, 7, seed=1), "h2": randn(5, 5, seed=2)}
    if target == "class-indices":
        loss = TaskLoss(classify={"y": 1.0})
        batch["y"] = torch.tensor([0, 2, 1, -100, 2])
        assert _rule_steps("tanh", batch, loss, ("x", "h2"), steps=4)
    else:
        batch["y"] = randn(5, 1, seed=3)
        assert not _rule_steps("tanh", batch, TaskLoss(reconstruct={"y": 1.0}), ("x", "h2"), steps=4,
                               warns=lambda: pytest.warns(UserWarning, match="target size"))


@pytest.mark.parametrize("case", ["adam", "fixed-prediction", "clamp-requires-grad", "nothing-moves", "no-steps"])
def test_autograd_is_used_where_the_reverse_pass_does_not_apply(case):
    model = mlp([5, 6, 4, 3], "tanh")
    clamp = _clamp(model, "in" if case == "nothing-moves" else "io", batch=4, ce=False)
    inference = Inference(
        steps=0 if case == "no-steps" else 5,
        optimizer=Adam(0.05) if case == "adam" else SGD(0.1),
        fixed_prediction=case == "fixed-prediction",
    )
    if case == "clamp-requires-grad":
        clamp = {n: v.clone().requires_grad_() for n, v in clamp.items()}
    relaxed = relax(model, clamp, inference, differentiable=True)
    assert path(model, inference, batch=clamp, differentiable=True) == "chain"  # still the fast relaxation, differentiated by autograd
    assert not any(v.grad_fn is not None and type(v.grad_fn).__name__ == "ChainRelaxationBackward" for v in relaxed.values.values())
