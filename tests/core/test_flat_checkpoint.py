"""Binomial checkpointing of bp-through-inference (``checkpoint=<slots>``, :mod:`pclab.core.binomial`).

Three things are checked: the schedule (every step reversed once, in order, never more than
``slots`` states stored, its cost the closed-form minimum checked against a dynamic programme);
the gradients (float64, against the plain unrolled relaxation, for every latent optimiser, with
precision schedules, fixed prediction, truncation and an early stop); and the memory (how many
step outputs are alive at once, counted with weak references, stays bounded as ``T`` grows).
"""

from __future__ import annotations

import importlib
import weakref

import pytest
import torch

from nets import chain, hybrid, randn, rel_err
from pclab.core import (
    SGD,
    Adam,
    BPThroughInference,
    Decaying,
    Inference,
    Spiking,
    TaskLoss,
    relax,
)
from pclab.core.binomial import (
    CheckpointStats,
    binomial_schedule,
    checkpointed_loop,
    min_advances,
    schedule_cost,
)

binomial_module = importlib.import_module("pclab.core.binomial")

OPTIMIZERS = {
    "sgd": SGD(lr=0.1),
    "momentum": SGD(lr=0.1, momentum=0.5),
    "nesterov": SGD(lr=0.1, momentum=0.5, nesterov=True),
    "adam": Adam(lr=0.05),
}
TOL = 1e-10


def objective_grads(model, batch, clamp, loss, inference, **kwargs) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Loss and parameter gradients (zeros where a parameter gets none) of a BPTI rule's objective."""
    rule = BPThroughInference(model, inference, torch.optim.SGD(model.parameters(), lr=0.1), loss, clamp=clamp, **kwargs)
    value, _ = rule.objective(batch)
    params = list(model.parameters())
    grads = torch.autograd.grad(value, params, allow_unused=True)
    return value.detach(), [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads)]


def assert_same(reference, checkpointed) -> None:
    (value, grads), (value_ck, grads_ck) = reference, checkpointed
    assert float(value_ck) == pytest.approx(float(value), rel=1e-13, abs=1e-15)
    assert any(torch.count_nonzero(g) > 0 for g in grads)  # a real comparison, not of zeros
    for i, (a, b) in enumerate(zip(grads_ck, grads)):
        assert rel_err(a, b) <= TOL, f"parameter {i}: relative error {rel_err(a, b):.3g}"


def chain_problem(seed: int = 0):
    """Dense chain 6-5-4-3 (tanh), input and target clamped, MSE on the output prediction."""
    model = chain([6, 5, 4, 3], "tanh", seed=seed)
    batch = {"x": randn(4, 6, seed=seed + 1), "y": randn(4, 3, seed=seed + 2)}
    return model, batch, TaskLoss(reconstruct={"y": 1.0})


def hybrid_problem(seed: int = 0):
    """Hybrid image/latent/label model (amortised latent, CE read-out), image clamped."""
    model = hybrid(image=6, latent=3, classes=4, seed=seed)
    batch = {"x": randn(5, 6, seed=seed + 1), "y": torch.tensor([0, 3, 1, 2, 1])}
    return model, batch, TaskLoss.mix(0.3)


# --------------------------------------------------------------------------- the schedule


def brute_force_advances(length: int, slots: int) -> list[list[int]]:
    """``table[s][l]``: the least graph-free steps to reverse ``l`` steps with ``s`` free slots,
    by trying every place for the next stored state."""
    table = [[0] * (length + 1) for _ in range(slots + 1)]
    for s in range(slots + 1):
        for n in range(2, length + 1):
            if s == 0:
                table[s][n] = n * (n - 1) // 2
            else:
                table[s][n] = min(j + table[s][j] + table[s - 1][n - j] for j in range(1, n))
    return table


def test_closed_form_cost_is_the_minimum_over_all_placements():
    table = brute_force_advances(60, 4)
    for s in range(5):
        for n in range(1, 61):
            assert min_advances(n, s) == table[s][n], (n, s)


@pytest.mark.parametrize("slots", [1, 2, 3, 5, 8])
def test_schedule_reverses_every_step_once_in_order_within_the_slots(slots):
    """Replay the actions on a stack of times: each starts from the top, pushes only forwards,
    reverses ``T-1, T-2, .., 0`` exactly once each, never holds more than ``slots`` states, and
    its cost is the optimum for the part after the first sweep plus that sweep."""
    for steps in range(70):
        stack, reversed_, end, finished, spine_end = [0], [], steps, False, 0
        forward = 0
        for kind, a, b in binomial_schedule(steps, slots):
            assert a == stack[-1], (steps, kind, a, b)
            if kind == "push":
                assert a < b < end
                stack.append(b)
                assert len(stack) - 1 <= slots
                forward += b - a
            elif kind == "finish":
                assert not finished and b == steps
                finished, spine_end = True, a
                forward += b - a
            elif kind == "reverse":
                assert finished and a <= b == end - 1
                reversed_.append(b)
                end = b
                forward += b - a
            else:
                assert kind == "pop" and a == end
                stack.pop()
        assert reversed_ == list(range(steps - 1, -1, -1))
        assert schedule_cost(steps, slots)[:2] == (forward, steps)
        # the first sweep's stores are those the optimal reversal would make anyway; it adds the
        # run from the last of them to the end
        assert forward == min_advances(steps, slots) + (steps - spine_end), steps


def test_cost_grows_like_the_repetition_number():
    """With ``c = slots + 1`` states and ``r`` the least integer with ``binom(c + r, c) >= T``,
    every step is rerun at most ``r + 1`` times without a graph (here 8 slots: T = 10 -> r = 1,
    T = 200 -> r = 3)."""
    for steps, r in [(10, 1), (50, 2), (200, 3)]:
        forward, graph, stored = schedule_cost(steps, 8)
        assert graph == steps and stored <= 8
        assert steps <= forward <= (r + 1) * steps


# --------------------------------------------------------------------------- exact gradients


@pytest.mark.parametrize("opt", list(OPTIMIZERS))
@pytest.mark.parametrize("steps,slots", [(1, 1), (3, 8), (7, 3), (20, 1), (20, 3), (23, 4)])
def test_gradients_equal_the_unrolled_relaxation_on_a_chain(opt, steps, slots):
    """T smaller than the slots (3 of 8), T not a multiple of them (7 of 3, 23 of 4), one slot
    (quadratic-free worst case of the schedule): the gradients of the plain unrolled general loop."""
    model, batch, loss = chain_problem(seed=1)
    inference = Inference(steps=steps, optimizer=OPTIMIZERS[opt], method="manual")
    reference = objective_grads(model, batch, ("x", "y"), loss, inference)
    assert_same(reference, objective_grads(model, batch, ("x", "y"), loss, inference, checkpoint=slots))


@pytest.mark.parametrize("opt", ["sgd", "adam"])
def test_gradients_equal_the_fast_path(opt):
    """The default (fast, hand-derived) BPTI of a Dense chain is the reference here. Adam with
    ``eps = 1e-3``: with the default ``1e-8`` the slope ``lr / eps`` of its first step amplifies
    the round-off by which the fast path and the general code differ (see
    ``test_bp_through_inference_from_a_fixed_point_equals_backprop``)."""
    optimizer = SGD(lr=0.1) if opt == "sgd" else Adam(lr=0.05, eps=1e-3)
    model, batch, loss = chain_problem(seed=2)
    inference = Inference(steps=15, optimizer=optimizer)
    reference = objective_grads(model, batch, ("x", "y"), loss, inference)
    assert_same(reference, objective_grads(model, batch, ("x", "y"), loss, inference, checkpoint=4))


@pytest.mark.parametrize("opt", ["sgd", "nesterov", "adam"])
@pytest.mark.parametrize("precision", [None, Decaying(0.5), Spiking(0.3)], ids=["constant", "decaying", "spiking"])
@pytest.mark.parametrize("fixed_prediction", [False, True])
def test_gradients_with_amortiser_readout_schedules_and_fixed_prediction(opt, precision, fixed_prediction):
    """Hybrid model: encoder (gradient through the initial state), CE read-out, step-dependent
    precision, the fixed-prediction assumption (gradient through the sources at every step)."""
    model, batch, loss = hybrid_problem(seed=3)
    kwargs = {} if precision is None else {"precision": precision}
    inference = Inference(steps=11, optimizer=OPTIMIZERS[opt], fixed_prediction=fixed_prediction, **kwargs)
    reference = objective_grads(model, batch, ("x",), loss, inference)
    assert_same(reference, objective_grads(model, batch, ("x",), loss, inference, checkpoint=3))


@pytest.mark.parametrize("opt", ["sgd", "adam"])
@pytest.mark.parametrize("truncate", [0, 1, 4, 9, 12])
def test_truncation_combines_with_binomial_checkpointing(opt, truncate):
    """``truncate=k`` of 9 steps: the same gradients as the plain truncated unroll (``k = 9`` and
    ``k = 12`` cut nothing but the initial state's / nothing; ``k = 0`` only the direct use)."""
    model, batch, loss = hybrid_problem(seed=4)
    inference = Inference(steps=9, optimizer=OPTIMIZERS[opt], method="autograd")
    reference = objective_grads(model, batch, ("x",), loss, inference, truncate=truncate)
    assert_same(reference, objective_grads(model, batch, ("x",), loss, inference, truncate=truncate, checkpoint=2))


def test_early_stop_takes_the_same_steps_and_gradients():
    model, batch, loss = chain_problem(seed=5)
    inference = Inference(steps=200, optimizer=SGD(lr=0.2), tolerance=1e-4)
    clamp = {n: batch[n] for n in ("x", "y")}
    plain = relax(model, clamp, inference, differentiable=True)
    flat = relax(model, clamp, inference, differentiable=True, checkpoint_slots=3)
    assert 1 < flat.steps == plain.steps < 200
    reference = objective_grads(model, batch, ("x", "y"), loss, inference)
    assert_same(reference, objective_grads(model, batch, ("x", "y"), loss, inference, checkpoint=3))


def test_a_second_backward_pass_gives_the_same_gradients():
    """``retain_graph=True``: the stored states were used up by the first pass; the second redoes
    the first sweep."""
    model, batch, loss = chain_problem(seed=6)
    rule = BPThroughInference(model, Inference(steps=13, optimizer=Adam(lr=0.05)), torch.optim.SGD(model.parameters(), lr=0.1),
                              loss, clamp=("x", "y"), checkpoint=2)
    value, _ = rule.objective(batch)
    params = list(model.parameters())
    first = torch.autograd.grad(value, params, retain_graph=True, allow_unused=True)
    second = torch.autograd.grad(value, params, allow_unused=True)
    for a, b in zip(first, second):
        assert (a is None and b is None) or torch.equal(a, b)


# --------------------------------------------------------------------------- bounded storage


@pytest.mark.parametrize("steps", [5, 40, 130])
def test_bpti_stores_at_most_the_slots(monkeypatch, steps):
    """What the relaxation really ran (:class:`CheckpointStats`): ``T`` graph steps, the
    schedule's graph-free steps, and never more than the slots stored, whatever ``T``."""
    recorded: list[CheckpointStats] = []

    def with_stats(*args, **kwargs):
        recorded.append(CheckpointStats())
        return checkpointed_loop(*args, **kwargs, stats=recorded[-1])

    monkeypatch.setattr(binomial_module, "checkpointed_loop", with_stats)  # what the relaxation driver calls
    model, batch, loss = chain_problem(seed=7)
    objective_grads(model, batch, ("x", "y"), loss, Inference(steps=steps, optimizer=Adam(lr=0.05)), checkpoint=4)
    (stats,) = recorded
    forward, graph, stored = schedule_cost(steps, 4)
    assert (stats.forward_steps, stats.graph_steps, stats.max_stored) == (forward, graph, stored)
    assert stats.graph_steps == steps and stats.max_stored <= 4


def live_states_during_backward(steps: int, slots: int | None) -> tuple[int, torch.Tensor]:
    """Peak number of step outputs alive at once while backpropagating a toy loop
    ``z <- z + 0.1 tanh(W z)``, by weak references to every tensor a step returns; with
    ``slots=None`` the loop is unrolled plainly. Also the gradient of ``W``."""
    weight = torch.nn.Parameter(randn(8, 8, seed=8) * 0.3)
    alive: weakref.WeakSet[torch.Tensor] = weakref.WeakSet()
    peak = [0]

    def step(t: int, state, constants):
        peak[0] = max(peak[0], len(alive))
        z = state["z"] + 0.1 * torch.tanh(state["z"] @ weight + constants["bias"])
        alive.add(z)
        return {"z": z}

    z0, bias = randn(3, 8, seed=9), randn(8, seed=10)
    if slots is None:
        state = {"z": z0}
        for t in range(steps):
            state = step(t, state, {"bias": bias})
    else:
        state = checkpointed_loop(step, {"z": z0}, {"bias": bias}, steps, slots, [weight])
    loss = state["z"].square().sum()
    del state
    (grad,) = torch.autograd.grad(loss, [weight])
    return peak[0], grad


def test_states_alive_stay_bounded_as_the_loop_grows():
    """Plain unrolling keeps every step's output (the count grows with ``T``); binomial
    checkpointing with 3 slots keeps at most the slots plus the ones in flight, the same at
    ``T = 20`` and ``T = 200`` -- and the gradients agree."""
    plain_20, grad_20 = live_states_during_backward(20, None)
    plain_200, grad_200 = live_states_during_backward(200, None)
    assert plain_20 >= 19 and plain_200 >= 199  # the counter sees what autograd keeps
    flat_20, flat_grad_20 = live_states_during_backward(20, 3)
    flat_200, flat_grad_200 = live_states_during_backward(200, 3)
    assert flat_20 <= 3 + 2 and flat_200 <= 3 + 2
    assert rel_err(flat_grad_20, grad_20) <= TOL and rel_err(flat_grad_200, grad_200) <= TOL


# --------------------------------------------------------------------------- arguments


def test_arguments_are_checked():
    model, batch, loss = chain_problem()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    for bad in (0, -2, 2.5, "4"):
        with pytest.raises(ValueError, match="checkpoint"):
            BPThroughInference(model, Inference(steps=3), optimizer, loss, clamp=("x",), checkpoint=bad)
    clamp = {"x": batch["x"]}
    with pytest.raises(ValueError, match="differentiable"):
        relax(model, clamp, Inference(steps=3), checkpoint_slots=2)
    with pytest.raises(ValueError, match="choose one"):
        relax(model, clamp, Inference(steps=3), differentiable=True, checkpoint_steps=True, checkpoint_slots=2)
    with pytest.raises(ValueError, match="record"):
        relax(model, clamp, Inference(steps=3), differentiable=True, record=True, checkpoint_slots=2)
    with pytest.raises(ValueError, match="slots"):
        checkpointed_loop(lambda t, s, c: s, {"z": batch["x"]}, {}, 3, 0)


def test_run_config_takes_a_slot_count():
    """``learning.checkpoint``: ``true`` (per step) stays a bool, an integer is the slot count."""
    from pclab.train.config import LearningConfig

    assert LearningConfig(rule="bp-through-inference", checkpoint=True).checkpoint is True
    assert LearningConfig(rule="bp-through-inference", checkpoint=8).checkpoint == 8
    with pytest.raises(ValueError):
        LearningConfig(rule="bp-through-inference", checkpoint=0)
