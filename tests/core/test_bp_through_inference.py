"""Backprop through inference: the gradient of a task loss on the relaxed state, through the
unrolled relaxation, against central finite differences of that unrolled loss.

What truncation means (``truncate=k`` of ``T`` steps): the state and latent-optimiser state after
step ``T - k`` are constants; the gradient flows through the last ``k`` steps and through the
parameters' direct use (predictions of clamped inputs, the loss itself). So the reference is the
finite-difference gradient of ``L(theta) = loss(k steps from the frozen state at T - k; theta)``,
with the frozen state computed once at the unperturbed parameters.
"""

from __future__ import annotations

import pytest
import torch

from nets import F64, central_difference, chain, hybrid, randn, rel_err, some_indices
from pclab.core import (
    SGD,
    Adam,
    Backprop,
    BPThroughInference,
    Inference,
    TaskLoss,
    free_nodes,
)

FD_TOL = 1e-6
STEPS = 5
OPTIMIZERS = {
    "sgd": SGD(lr=0.1),
    "nesterov": SGD(lr=0.1, momentum=0.5, nesterov=True),
    "adam": Adam(lr=0.05),
}


def hybrid_problem(seed: int = 0):
    """Hybrid image/latent/label model, a batch with class-index labels, and its loss (lam 0.3)."""
    model = hybrid(image=6, latent=3, classes=4, seed=seed)
    batch = {"x": randn(5, 6, seed=seed + 1), "y": torch.tensor([0, 3, 1, 2, 1])}
    return model, batch, TaskLoss.mix(0.3)


def rule_for(model, optimizer, loss, truncate=None, checkpoint=False, steps=STEPS) -> BPThroughInference:
    inference = Inference(steps=steps, optimizer=optimizer)
    return BPThroughInference(
        model, inference, torch.optim.SGD(model.parameters(), lr=0.1), loss,
        clamp=("x",), truncate=truncate, checkpoint=checkpoint,
    )


def objective_grads(rule: BPThroughInference, batch) -> tuple[torch.Tensor, list[torch.Tensor]]:
    params = list(rule.model.parameters())
    loss, _ = rule.objective(batch)
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    return loss.detach(), [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads)]


def unroll(model, clamp, inference, values, states, start: int, stop: int):
    """Relaxation steps ``start .. stop-1`` written out from the public pieces (autograd latent
    gradients, the optimiser's functional update); no graph is kept."""
    free = free_nodes(model, frozenset(clamp))
    values, states = dict(values), dict(states)
    with torch.no_grad():
        for t in range(start, stop):
            grads, _ = model.latent_grads(values, free, set(clamp), inference.multipliers(model, t), method="autograd")
            for n in free:
                values[n], states[n] = inference.optimizer.update(values[n], grads[n], states[n], True)
    return values, states


def truncated_loss(rule: BPThroughInference, batch, k: int):
    """``theta -> loss`` with the state after step ``T - k`` frozen at the current parameters."""
    model, inference = rule.model, rule.inference
    clamp = {n: batch[n] for n in rule.clamp}
    with torch.no_grad():
        start = model.initial_state(clamp, inference.init)
    states = {n: inference.optimizer.init(start[n]) for n in free_nodes(model, frozenset(clamp))}
    frozen, frozen_states = unroll(model, clamp, inference, start, states, 0, inference.steps - k)

    def loss() -> torch.Tensor:
        values, _ = unroll(model, clamp, inference, frozen, frozen_states, inference.steps - k, inference.steps)
        with torch.no_grad():
            return rule.loss(model, values, batch)[0]

    return loss


def encoder_grads(model, grads) -> list[torch.Tensor]:
    """The entries of ``grads`` that belong to the amortiser (encoder) parameters."""
    encoder = {id(p) for p in model.amortiser_modules.parameters()}
    return [g for p, g in zip(model.parameters(), grads) if id(p) in encoder]


def fd_check(model, grads, loss_fn, entries: int = 3) -> None:
    for i, (p, g) in enumerate(zip(model.parameters(), grads)):
        idxs = some_indices(p.shape, entries, seed=100 + i)
        fd = torch.tensor([central_difference(loss_fn, p.data, idx) for idx in idxs], dtype=F64)
        auto = torch.stack([g[idx] for idx in idxs])
        assert float((auto - fd).norm()) <= FD_TOL * float(fd.norm()) + 1e-10, f"parameter {i}"


# --------------------------------------------------------------------------- full unroll


@pytest.mark.parametrize("opt", list(OPTIMIZERS))
def test_bp_through_inference_gradients_match_finite_differences_of_the_unrolled_loss(opt):
    """Hybrid model (x clamped, amortised z free, decoder and head; ``TaskLoss.mix(0.3)``): the
    parameter gradient of ``objective`` is that of the whole unrolled loss, encoder included."""
    model, batch, loss = hybrid_problem(seed=1)
    rule = rule_for(model, OPTIMIZERS[opt], loss)
    value, grads = objective_grads(rule, batch)
    fd_check(model, grads, lambda: rule.objective(batch)[0].detach())
    assert all(torch.count_nonzero(g) > 0 for g in encoder_grads(model, grads))


@pytest.mark.parametrize("opt", list(OPTIMIZERS))
@pytest.mark.parametrize("k", [0, 1, 3, STEPS])
def test_truncated_bp_through_inference_differentiates_only_the_last_k_steps(opt, k):
    """``truncate=k``: gradients equal finite differences of the loss with the state after step
    ``T - k`` held constant. ``k = T`` freezes the initial state (the encoder gets no gradient);
    ``k = 0`` leaves only the parameters' direct use in the loss."""
    model, batch, loss = hybrid_problem(seed=2)
    rule = rule_for(model, OPTIMIZERS[opt], loss, truncate=k)
    value, grads = objective_grads(rule, batch)
    reference = truncated_loss(rule, batch, k)
    assert float(value) == pytest.approx(float(reference()), rel=1e-12)
    fd_check(model, grads, reference)
    assert all(torch.count_nonzero(g) == 0 for g in encoder_grads(model, grads))


def test_truncation_longer_than_the_unroll_is_the_full_gradient():
    """``truncate > T`` cuts nothing: the gradient is that of the untruncated unroll."""
    model, batch, loss = hybrid_problem(seed=3)
    _, full = objective_grads(rule_for(model, OPTIMIZERS["sgd"], loss), batch)
    _, long = objective_grads(rule_for(model, OPTIMIZERS["sgd"], loss, truncate=STEPS + 3), batch)
    for a, b in zip(full, long):
        assert torch.equal(a, b)


@pytest.mark.parametrize("opt", list(OPTIMIZERS))
@pytest.mark.parametrize("truncate", [None, 2])
def test_checkpointed_bp_through_inference_gives_identical_gradients(opt, truncate):
    """``checkpoint=True`` recomputes the steps in the backward pass: the same loss and bit-for-bit
    the same gradients, with and without truncation."""
    model, batch, loss = hybrid_problem(seed=4)
    value, plain = objective_grads(rule_for(model, OPTIMIZERS[opt], loss, truncate=truncate), batch)
    value_ck, ck = objective_grads(rule_for(model, OPTIMIZERS[opt], loss, truncate=truncate, checkpoint=True), batch)
    assert torch.equal(value, value_ck)
    for a, b in zip(plain, ck):
        assert torch.equal(a, b)


@pytest.mark.parametrize(
    "optimizer",
    [OPTIMIZERS["sgd"], OPTIMIZERS["nesterov"], Adam(lr=0.05, eps=0.1)],
    ids=["sgd", "nesterov", "adam"],
)
def test_bp_through_inference_from_a_fixed_point_equals_backprop(optimizer):
    """A discriminative chain with only ``x`` clamped starts relaxation at its fixed point (the
    feed-forward pass has zero error everywhere): every latent gradient is zero for all theta,
    the latents never move, and BP-through-inference must give plain backprop's gradient,
    finite, for every latent optimiser -- including Adam, whose steps all see ``g = 0``.

    (Adam's update ``lr g / (|g| + eps)`` has slope ``lr / eps`` at ``g = 0``; with the default
    ``eps = 1e-8`` that slope multiplies the round-off of the cancelling terms at every unrolled
    step, so the exact comparison uses a large ``eps``. The derivative itself is checked in
    ``test_differentiable_adam_update_has_finite_derivatives_at_a_zero_gradient``.)"""
    model = chain([4, 5, 5, 3], "tanh", seed=5)
    batch = {"x": randn(4, 4, seed=6), "y": torch.tensor([0, 2, 1, 2])}
    loss = TaskLoss(classify={"y": 1.0})
    _, through = objective_grads(rule_for(model, optimizer, loss), batch)
    bp_rule = Backprop(model, torch.optim.SGD(model.parameters(), lr=0.1), loss, clamp=("x",))
    bp_loss, _ = bp_rule.objective(batch)
    bp = torch.autograd.grad(bp_loss, list(model.parameters()))
    for a, b in zip(through, bp):
        assert torch.isfinite(a).all()
        assert rel_err(a, b) < 1e-12


def test_bp_through_inference_with_zero_steps_is_backprop():
    model, batch, loss = hybrid_problem(seed=7)
    _, through = objective_grads(rule_for(model, OPTIMIZERS["sgd"], loss, steps=0), batch)
    bp_rule = Backprop(model, torch.optim.SGD(model.parameters(), lr=0.1), loss, clamp=("x",))
    bp = torch.autograd.grad(bp_rule.objective(batch)[0], list(model.parameters()))
    for a, b in zip(through, bp):
        assert torch.equal(a, b)


def test_differentiable_adam_update_has_finite_derivatives_at_a_zero_gradient():
    """At ``g = 0`` the first Adam step ``lr g / (|g| + eps)`` has derivative ``lr / eps`` in
    ``g`` and 1 in ``z``; the differentiable update must give these (not ``0 * inf = nan``)."""
    adam = Adam(lr=0.05, eps=1e-3)
    z = randn(3, 2, seed=8).requires_grad_(True)
    g = torch.zeros(3, 2, dtype=F64, requires_grad=True)
    new, _ = adam.update(z, g, adam.init(z), True)
    dz, dg = torch.autograd.grad(new.sum(), [z, g])
    assert torch.equal(new.detach(), z.detach())
    assert torch.isfinite(dg).all() and torch.isfinite(dz).all()
    assert torch.allclose(dz, torch.ones_like(dz))
    assert torch.allclose(dg, torch.full_like(dg, -0.05 / 1e-3), rtol=1e-12)
