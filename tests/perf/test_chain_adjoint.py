"""The hand-derived reverse pass of the Dense-chain relaxation (:mod:`pclab.core.chain_adjoint`)
gives the gradients of autograd through the unrolled relaxation.

References: autograd through the fast relaxation (``chain_adjoint.autograd_only()``) and autograd
through the general graph code (``method="manual"``), both float64.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from perf_chains import chain, names, randn, reference

from pclab.core import SGD, Adam, Constant, CrossEntropy, Decaying, Inference, Spiking, TaskLoss, chain_adjoint, relax
from pclab.core.chain_adjoint import CURVATURE

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
    if hand:
        relaxed = relax(model, clamp, inference, differentiable=True, initial=start)
    else:
        with chain_adjoint.autograd_only():
            relaxed = relax(model, clamp, inference, differentiable=True, initial=start)
    loss = _loss(model, relaxed.values, relaxed.clamped, target)
    grads = torch.autograd.grad(loss, inputs, allow_unused=True)
    used = any(v.grad_fn is not None and type(v.grad_fn).__name__ == "_ChainRelaxationBackward" for v in relaxed.values.values())
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
    model = chain(widths[: depth + 1], activation, output=CrossEntropy(0.7) if ce else None,
                  precisions=[1.0 + 0.25 * l for l in range(depth)], bias=bias)
    clamp = _clamp(model, pattern, batch=4, ce=ce)
    inference = Inference(steps=steps, optimizer=OPTIMIZERS[optimizer], precision=SCHEDULES[schedule])
    _compare(model, clamp, inference, randn(4, widths[depth], seed=3))


@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("output", ["gaussian", "ce"])
def test_every_activation_and_output_energy_on_a_training_chain(activation, output):
    """Input and label clamped, wide enough for the anchored first hidden node (the MLP case)."""
    model = chain([9, 8, 8, 3], activation, output=CrossEntropy() if output == "ce" else None)
    clamp = _clamp(model, "io", batch=6, ce=output == "ce")
    inference = Inference(steps=12, optimizer=SGD(0.1))
    _, _, used, relaxed = _grads(model, clamp, inference, randn(6, 3, seed=3))
    assert used and relaxed.chain[1].anchored == (1,)
    _compare(model, clamp, inference, randn(6, 3, seed=3))


def test_the_graph_can_be_differentiated_again_with_retain_graph():
    """autograd.grad(..., retain_graph=True) twice (one call per layer, as the dynamics study's
    alignment does) gives the same gradients as one call for all parameters."""
    model = chain([9, 8, 8, 3], "tanh")
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
    model = chain([5, 6, 4, 3], "tanh")
    clamp = _clamp(model, "io", batch=4, ce=False)
    inference = Inference(steps=7, optimizer=SGD(0.05, momentum=0.5), init="zeros")
    start = None
    if init == "given":
        start = {n: randn(4, model.nodes[n].shape[0], seed=30 + i).requires_grad_() for i, n in enumerate(names(3)) if n not in clamp}
    _compare(model, clamp, inference, randn(4, 3, seed=3), start=start)


def test_bp_through_inference_rule_uses_it_and_matches_the_general_path():
    from pclab.core import BPThroughInference

    model = chain([7, 6, 5, 3], "gelu")
    other = chain([7, 6, 5, 3], "gelu")
    batch = {"x": randn(5, 7, seed=1), "y": randn(5, 3, seed=2)}
    inference = Inference(steps=6, optimizer=SGD(0.1))
    loss = TaskLoss(reconstruct={"y": 1.0})
    fast = BPThroughInference(model, inference, torch.optim.SGD(model.parameters(), 0.0), loss, ("x", "y"))
    slow = BPThroughInference(other, reference(inference), torch.optim.SGD(other.parameters(), 0.0), loss, ("x", "y"))
    calls = []
    original = chain_adjoint._ChainRelaxation.apply

    def counted(*args):
        calls.append(1)
        return original(*args)

    chain_adjoint._ChainRelaxation.apply = counted
    try:
        a = fast.step(batch)
    finally:
        chain_adjoint._ChainRelaxation.apply = original
    b = slow.step(batch)
    assert calls and a["loss"] == pytest.approx(b["loss"], rel=1e-12)
    for p, q in zip(model.parameters(), other.parameters()):
        assert _rel(p.grad, q.grad) < 1e-9


@pytest.mark.parametrize("case", ["adam", "fixed-prediction", "clamp-requires-grad", "nothing-moves", "no-steps"])
def test_autograd_is_used_where_the_reverse_pass_does_not_apply(case):
    model = chain([5, 6, 4, 3], "tanh")
    clamp = _clamp(model, "in" if case == "nothing-moves" else "io", batch=4, ce=False)
    inference = Inference(
        steps=0 if case == "no-steps" else 5,
        optimizer=Adam(0.05) if case == "adam" else SGD(0.1),
        fixed_prediction=case == "fixed-prediction",
    )
    if case == "clamp-requires-grad":
        clamp = {n: v.clone().requires_grad_() for n, v in clamp.items()}
    relaxed = relax(model, clamp, inference, differentiable=True)
    assert relaxed.chain is not None  # still the fast relaxation, differentiated by autograd
    assert not any(v.grad_fn is not None and type(v.grad_fn).__name__ == "_ChainRelaxationBackward" for v in relaxed.values.values())


def test_curvature_table_is_the_second_derivative_of_every_activation():
    from pclab.core.layers import ACTIVATIONS as TABLE

    assert set(CURVATURE) == set(TABLE)
    a = torch.linspace(-3, 3, 61, dtype=torch.float64).reshape(1, -1) + 0.013  # off relu's kink
    for name, entry in CURVATURE.items():
        f = TABLE[name][0]
        x = a.clone().requires_grad_()
        (d1,) = torch.autograd.grad(f(x).sum(), x, create_graph=True)
        (d2,) = torch.autograd.grad(d1.sum(), x) if d1.requires_grad else (torch.zeros_like(a),)
        mu = f(a)
        slope = chain_adjoint._slope_times(name, torch.ones_like(a), a, mu)
        assert torch.allclose(slope, d1.detach(), rtol=1e-12, atol=1e-14), name
        if entry is None:
            assert float(d2.abs().max()) == 0.0, name
            continue
        factor, through_slope, scale = entry
        second = scale * factor(a, mu) * (slope if through_slope else 1.0)
        assert torch.allclose(second, d2, rtol=1e-10, atol=1e-12), name
