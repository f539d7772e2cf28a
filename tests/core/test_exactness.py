"""When PC's weight updates equal backprop's gradients (REFERENCE section 1).

* Fixed-prediction assumption: predictions and Jacobians frozen at the feed-forward pass,
  latent SGD with step 1 for ``T = L`` steps, weights updated from the feed-forward presynaptic
  values (forward update): exactly backprop.
* Z-IL: feed-forward init, step 1, ``T = L``, layer ``l`` learns at step ``L - 1 - l``: exactly
  backprop.
* Small output error: as the output's share of the energy shrinks, ``dE/dtheta / beta`` tends
  to backprop's gradient, with an error of order ``beta``.

Backprop's loss is the batch mean of the per-sample loss ``0.5 * ||y - f(x)||^2`` (Gaussian
output) or ``CE(f(x), y)`` (cross-entropy output), matching the batch-mean energy of learning.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from nets import F64, backprop_grads, chain, examples, flat, one_hot, randn, rel_err
from pclab.core import SGD, CrossEntropy, Gaussian, Inference, PCLearning, ZeroDivergenceIL, relax

EXACT = 1e-6
ACTS = ("tanh", "sigmoid", "gelu", "identity", "leaky_relu", "silu")


@st.composite
def feedforward_problems(draw):
    """A random chain of 2-5 weight layers, widths 1-8, per-layer activations, and a batch."""
    layers = draw(st.integers(2, 5))
    widths = draw(st.lists(st.integers(1, 8), min_size=layers + 1, max_size=layers + 1))
    acts = draw(st.lists(st.sampled_from(ACTS), min_size=layers, max_size=layers))
    output = draw(st.sampled_from(["gaussian", "cross_entropy"]))
    seed = draw(st.integers(0, 2**16))
    batch = 3
    if output == "cross_entropy":
        widths[-1] = max(widths[-1], 2)
        model = chain(widths, acts, output=CrossEntropy(), seed=seed)
        labels = torch.randint(0, widths[-1], (batch,), generator=torch.Generator().manual_seed(seed + 2))
        target = one_hot(labels, widths[-1])
    else:
        model = chain(widths, acts, seed=seed)
        target = randn(batch, widths[-1], seed=seed + 2)
    x = randn(batch, widths[0], seed=seed + 1)
    kind = "ce" if output == "cross_entropy" else "mse"
    return model, x, target, kind


def assert_equal_gradients(pc: list[torch.Tensor], bp: list[torch.Tensor], tol: float = EXACT) -> None:
    assert len(pc) == len(bp)
    for a, b in zip(pc, bp):
        assert float((a - b).norm()) <= tol * float(b.norm()) + 1e-13


@pytest.mark.parametrize("method", ["auto", "manual", "autograd"])
@examples(20)
@given(problem=feedforward_problems())
def test_pc_updates_equal_backprop_under_fixed_prediction(problem, method):
    """Fixed-prediction PC (SGD step 1, ``T = L``, forward update) gives backprop's gradient,
    for Gaussian (MSE) and cross-entropy outputs, whichever latent-gradient method relaxes."""
    model, x, target, kind = problem
    bp = backprop_grads(model, x, target, kind)
    inference = Inference(steps=model.num_layers, optimizer=SGD(lr=1.0), fixed_prediction=True, method=method)
    relaxed = relax(model, {"x": x, "y": target}, inference)
    rule = PCLearning(model, inference, torch.optim.SGD(model.parameters(), lr=0.1), forward_update=True)
    pc = list(torch.autograd.grad(rule.weight_energy(relaxed), list(model.parameters())))
    assert_equal_gradients(pc, bp)


@examples(25)
@given(problem=feedforward_problems())
def test_zero_divergence_il_updates_equal_backprop(problem):
    """Z-IL accumulates exactly backprop's gradient; with parameter SGD of step 1 the parameter
    change is minus that gradient."""
    model, x, target, kind = problem
    bp = backprop_grads(model, x, target, kind)
    params = list(model.parameters())
    before = [p.detach().clone() for p in params]
    optimizer = torch.optim.SGD(params, lr=1.0)
    captured = []
    optimizer.register_step_pre_hook(lambda opt, args, kwargs: captured.append([p.grad.clone() for p in params]))
    rule = ZeroDivergenceIL(model, optimizer)
    assert rule.inference.steps == model.num_layers
    rule.step({"x": x, "y": target})
    assert len(captured) == 1
    assert_equal_gradients(captured[0], bp)
    deltas = [b - p.detach() for b, p in zip(before, params)]
    assert_equal_gradients(deltas, captured[0], tol=1e-12)


@pytest.mark.parametrize("output", ["gaussian", "cross_entropy"])
def test_pc_updates_approach_backprop_in_the_small_output_error_limit(output):
    """Output energy weighted by ``beta`` (target clamped): at equilibrium ``dE/dtheta / beta``
    approaches backprop's gradient: the relative error is of order ``beta`` (about 10x smaller
    per decade of ``beta``) and the cosine tends to 1."""
    x = randn(6, 4, seed=1)
    if output == "gaussian":
        target, kind = randn(6, 3, seed=2), "mse"
    else:
        target, kind = one_hot(torch.tensor([0, 2, 1, 1, 0, 2]), 3), "ce"
    errors, cosines = [], []
    for beta in (1e-1, 1e-2, 1e-3):
        energy = Gaussian(beta) if output == "gaussian" else CrossEntropy(beta)
        model = chain([4, 6, 5, 3], ["tanh", "gelu", "identity"], output=energy, seed=3)
        bp = flat(backprop_grads(model, x, target, kind))
        inference = Inference(steps=150, optimizer=SGD(lr=0.5))
        relaxed = relax(model, {"x": x, "y": target}, inference)
        rule = PCLearning(model, inference, torch.optim.SGD(model.parameters(), lr=0.1))
        pc = flat(torch.autograd.grad(rule.weight_energy(relaxed), list(model.parameters()))) / beta
        cosines.append(float(pc @ bp / (pc.norm() * bp.norm())))
        errors.append(rel_err(pc, bp))
    assert cosines[0] > 0.98 and cosines[1] > 0.999 and cosines[2] > 0.99999
    assert errors[-1] < 5e-3
    assert errors[1] < errors[0] / 5 and errors[2] < errors[1] / 5


def test_relaxed_errors_of_a_linear_network_are_the_analytic_equilibrium():
    """Linear chain ``x -> h -> y`` with ``x``, ``y`` clamped: at equilibrium
    ``e_h = W2^T e_y`` and ``e_y = (I + W2 W2^T)^{-1} r`` with ``r = y - f(x)``. (So clamping ``y``
    to a slightly nudged value ``mu + beta (t - mu)`` scales every error by ``beta`` but leaves
    the ratio to backprop's ``r`` unchanged: it is the output *weight* that must be small.)"""
    model = chain([3, 4, 2], "identity", seed=4)
    x, y = randn(5, 3, seed=5), randn(5, 2, seed=6)
    relaxed = relax(model, {"x": x, "y": y}, Inference(steps=400, optimizer=SGD(lr=0.3)))
    with torch.no_grad():
        mu = model.predictions(relaxed.values)
        r = y - model.initial_state({"x": x})["y"]
    w2 = model.module("h1", "y").linear.weight.detach()
    e_y = y - mu["y"]
    e_h = relaxed.values["h1"] - mu["h1"]
    expected = torch.linalg.solve(torch.eye(2, dtype=F64) + w2 @ w2.T, r.T).T
    assert rel_err(e_y, expected) < 1e-10
    assert rel_err(e_h, e_y @ w2) < 1e-10
