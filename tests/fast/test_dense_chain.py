"""The Dense-chain fast path computes what the reference path computes.

Reference: ``PCN.latent_grads`` on the general graph (``method="manual"`` or ``"autograd"``) for
relaxation, and ``PCLearning.weight_energy(relaxed).backward()`` for the weight update.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from nets import F64, autograd, chain_names, max_rel, mlp, randn, reference, twin
from pclab.core import (
    PCN,
    SGD,
    Adam,
    Constant,
    CrossEntropy,
    Decaying,
    Dense,
    Inference,
    Node,
    PCLearning,
    Spiking,
    TorchOptimizer,
    relax,
)
from pclab.core.fast import anchored, path

OPTIMIZERS = {
    "sgd": SGD(0.1),
    "momentum": SGD(0.05, momentum=0.9),
    "nesterov": SGD(0.05, momentum=0.8, nesterov=True),
    "adam": Adam(0.05),
}
SCHEDULES = {"constant": Constant(), "spiking": Spiking(0.1), "decaying": Decaying(0.5), "scaled": Constant(0.5)}


def clamp_for(model: PCN, pattern: str, batch: int = 5, seed: int = 1) -> dict[str, torch.Tensor]:
    """Clamped values: ``io`` input and output (training), ``in`` input only, ``out`` output only
    (generation), ``mid`` input and a hidden node."""
    ns = list(model.nodes)
    width = {n: model.nodes[n].shape[0] for n in ns}
    y = torch.softmax(randn(batch, width[ns[-1]], seed=seed + 1), 1)
    chosen = {"io": [ns[0], ns[-1]], "in": [ns[0]], "out": [ns[-1]], "mid": [ns[0], ns[len(ns) // 2]]}[pattern]
    return {n: (y if n == ns[-1] else randn(batch, width[n], seed=seed + i)) for i, n in enumerate(chosen)}


# ---------------------------------------------------------------------------- relaxation
@pytest.mark.parametrize("optimizer", sorted(OPTIMIZERS))
@pytest.mark.parametrize("pattern", ["io", "in", "out", "mid"])
@pytest.mark.parametrize("output", ["gaussian", "ce"])
def test_chain_relaxation_equals_reference(optimizer, pattern, output):
    model = mlp([6, 5, 7, 4, 3], "tanh", output=CrossEntropy() if output == "ce" else None)
    clamp = clamp_for(model, pattern)
    inference = Inference(steps=9, optimizer=OPTIMIZERS[optimizer])
    fast = relax(model, clamp, inference)
    assert path(model, inference, batch=clamp) == "chain"
    for ref in (reference(inference), autograd(inference)):
        slow = relax(model, clamp, ref)
        assert path(model, ref, batch=clamp) == "reference"
        assert max_rel(fast.values, slow.values) < 1e-12
        assert max_rel(fast.initial, slow.initial) < 1e-12
        assert fast.steps == slow.steps and fast.clamped == slow.clamped


@pytest.mark.parametrize("schedule", sorted(SCHEDULES))
@pytest.mark.parametrize("fixed_prediction", [False, True])
@pytest.mark.parametrize("init", ["forward", "zeros"])
def test_chain_relaxation_handles_schedules_fixed_prediction_and_init(schedule, fixed_prediction, init):
    """The zero-error bookkeeping stays exact when schedules switch layers off, predictions are
    fixed, or the start is not a feed-forward pass."""
    model = mlp([5, 6, 6, 6, 2], ["tanh", "sigmoid", "gelu", "identity"], precisions=[1.0, 0.7, 2.0, 1.5])
    clamp = clamp_for(model, "io")
    inference = Inference(steps=8, optimizer=SGD(0.1, momentum=0.5), init=init,
                          precision=SCHEDULES[schedule], fixed_prediction=fixed_prediction)
    fast, slow = relax(model, clamp, inference), relax(model, clamp, reference(inference))
    assert path(model, inference, batch=clamp) == "chain"
    assert max_rel(fast.values, slow.values) < 1e-12


def test_chain_relaxation_trajectory_equals_reference_at_every_step():
    model = mlp([8, 7, 6, 5, 4, 3], "tanh")
    clamp = clamp_for(model, "io")
    for steps in range(0, 12):
        inference = Inference(steps=steps, optimizer=SGD(0.2))
        fast, slow = relax(model, clamp, inference), relax(model, clamp, reference(inference))
        assert max_rel(fast.values, slow.values) < 1e-12, steps


def test_chain_relaxation_from_given_initial_values_and_random_init():
    model = mlp([4, 5, 5, 3], "tanh")
    clamp = clamp_for(model, "io")
    start = {n: randn(5, model.nodes[n].shape[0], seed=10 + i) for i, n in enumerate(model.nodes)}
    inference = Inference(steps=6, optimizer=SGD(0.1))
    fast = relax(model, clamp, inference, initial=start)
    slow = relax(model, clamp, reference(inference), initial=start)
    assert path(model, inference, batch=clamp, initial=start) == "chain" and max_rel(fast.values, slow.values) < 1e-12
    noisy = Inference(steps=6, optimizer=Adam(0.1), init="random")
    fast = relax(model, clamp, noisy, generator=torch.Generator().manual_seed(3))
    slow = relax(model, clamp, reference(noisy), generator=torch.Generator().manual_seed(3))
    assert max_rel(fast.values, slow.values) < 1e-12


@hsettings(max_examples=40, deadline=None, derandomize=True, database=None)
@given(
    widths=st.lists(st.integers(1, 7), min_size=2, max_size=6),
    activation=st.sampled_from(["identity", "tanh", "sigmoid", "relu", "leaky_relu", "gelu", "silu"]),
    optimizer=st.sampled_from(sorted(OPTIMIZERS)),
    pattern=st.sampled_from(["io", "in", "out"]),
    steps=st.integers(0, 7),
    bias=st.booleans(),
)
def test_random_chains_relax_like_the_reference(widths, activation, optimizer, pattern, steps, bias):
    model = mlp(widths, activation, bias=bias, seed=len(widths) + steps)
    clamp = clamp_for(model, pattern, batch=3)
    inference = Inference(steps=steps, optimizer=OPTIMIZERS[optimizer])
    fast, slow = relax(model, clamp, inference), relax(model, clamp, reference(inference))
    assert path(model, inference, batch=clamp) == "chain"
    assert max_rel(fast.values, slow.values) < 1e-12


def test_float32_mnist_shaped_chain_matches_reference_to_single_precision():
    """The benchmark network (784-128-128-10 tanh, batch 64, T = 20) in float32."""
    model = mlp([784, 128, 128, 10], "tanh", dtype=torch.float32)
    x = torch.rand(64, 784, generator=torch.Generator().manual_seed(0))
    y = torch.nn.functional.one_hot(torch.arange(64) % 10, 10).float()
    inference = Inference(steps=20, optimizer=SGD(0.1))
    fast, slow = relax(model, {"x": x, "y": y}, inference), relax(model, {"x": x, "y": y}, reference(inference))
    assert max_rel(fast.values, slow.values) < 1e-6


# ---------------------------------------------------------------------------- the error front
class CountLinear(torch.overrides.TorchFunctionMode):
    """Counts calls of ``F.linear`` (predictions) and matrix products (backward products)."""

    def __init__(self):
        super().__init__()
        self.linear = self.matmul = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func is torch.nn.functional.linear:
            self.linear += 1
        elif func in (torch.matmul, torch.Tensor.__matmul__, torch.mm, torch.Tensor.matmul, torch.Tensor.mm, torch.addmm):
            self.matmul += 1
        return func(*args, **(kwargs or {}))


def test_layers_the_error_has_not_reached_cost_nothing():
    """Feed-forward init, output clamped: at step t only layers within t of the output carry error.

    With L layers and T <= L steps the fast path computes L feed-forward predictions, then at step
    t re-predicts only layers whose input moved (t of them, from the output down) and forms the
    backward product of only the t layers the error has reached below the output."""
    depth, steps = 6, 4
    model = mlp([5] * (depth + 1), "tanh")
    clamp = clamp_for(model, "io")
    counter = CountLinear()
    with counter:
        relax(model, clamp, Inference(steps=steps, optimizer=SGD(0.1)))
    # predictions: L feed-forward + sum_{t<T} (number of layers whose input moved before step t)
    assert counter.linear == depth + sum(range(steps))
    # backward products J^T eps: one per layer carrying error whose input node is free, at step t
    # the errors sit on the t + 1 layers nearest the output; the top one's input is free too
    assert counter.matmul == sum(min(t + 1, depth - 1) for t in range(steps))


# ---------------------------------------------------------------------------- weight updates
def grads(model: PCN) -> list[torch.Tensor | None]:
    return [None if p.grad is None else p.grad.clone() for p in model.parameters()]


@pytest.mark.parametrize("forward_update", [False, True])
@pytest.mark.parametrize("output", ["gaussian", "ce"])
@pytest.mark.parametrize("pattern", ["io", "in", "mid"])
@pytest.mark.parametrize("fixed_prediction", [False, True])
def test_chain_weight_gradients_equal_autograd(forward_update, output, pattern, fixed_prediction):
    """``dW = -(pi e f'(a))^T z_prev / batch`` equals autograd of ``PCN.energy`` at the relaxed state
    (with fixed predictions during relaxation too: the weight energy is still taken at the relaxed state)."""
    model = mlp([6, 5, 4, 3], "tanh", output=CrossEntropy(0.8) if output == "ce" else None, precisions=[1.0, 0.5, 2.0])
    clamp = clamp_for(model, pattern)
    inference = Inference(steps=5, optimizer=SGD(0.1), fixed_prediction=fixed_prediction)
    fast_rule = PCLearning(model, inference, torch.optim.SGD(model.parameters(), 0.0), forward_update=forward_update)
    if pattern == "in":  # no target: every error is 0 from the feed-forward start, a step would learn nothing
        with pytest.raises(ValueError, match="expected the batch to clamp a node that has a prediction"):
            fast_rule.step(clamp)
        return
    energy = fast_rule.step(clamp)["energy"]
    fast = grads(model)

    other = twin(model)
    slow_rule = PCLearning(other, reference(inference), torch.optim.SGD(other.parameters(), 0.0), forward_update=forward_update)
    relaxed = relax(other, clamp, reference(inference))
    expected_energy = slow_rule.weight_energy(relaxed)
    expected_energy.backward()
    slow = grads(other)
    assert abs(energy - float(expected_energy.detach())) <= 1e-12 * max(1.0, abs(energy))
    for g, h in zip(fast, slow):
        assert (g is None) == (h is None)  # a released read-out's layer gets no gradient
        if g is not None:
            assert float((g - h).norm()) <= 1e-12 * max(float(h.norm()), 1e-12)


def test_zero_precision_layer_gets_zero_not_missing_gradient():
    model = mlp([4, 4, 3], "tanh", precisions=[0.0, 1.0])
    clamp = clamp_for(model, "io")
    PCLearning(model, Inference(steps=3), torch.optim.SGD(model.parameters(), 0.0)).step(clamp)
    first = model.module("x", "h1").linear
    assert first.weight.grad is not None and float(first.weight.grad.abs().max()) == 0.0


def test_frozen_parameters_get_no_gradient():
    model = mlp([4, 4, 3], "tanh")
    model.module("x", "h1").linear.weight.requires_grad_(False)
    PCLearning(model, Inference(steps=3), torch.optim.SGD(model.parameters(), 0.1)).step(clamp_for(model, "io"))
    assert model.module("x", "h1").linear.weight.grad is None
    assert model.module("x", "h1").linear.bias.grad is not None


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_pc_training_on_fast_path_equals_reference_training(optimizer):
    """Several PC steps with Adam on the weights: the parameters stay equal to 1e-12."""
    model = mlp([7, 6, 5, 3], "tanh")
    other = twin(model)
    inference = Inference(steps=6, optimizer=OPTIMIZERS[optimizer])
    fast = PCLearning(model, inference, torch.optim.Adam(model.parameters(), 1e-2))
    slow = PCLearning(other, reference(inference), torch.optim.Adam(other.parameters(), 1e-2))
    for k in range(5):
        batch = clamp_for(model, "io", seed=100 + k)
        a, b = fast.step(batch), slow.step(batch)
        assert abs(a["energy"] - b["energy"]) <= 1e-10 * max(1.0, abs(b["energy"]))
    for p, q in zip(model.parameters(), other.parameters()):
        assert float((p - q).detach().norm()) <= 1e-12 * float(q.detach().norm())


# ---------------------------------------------------------------------------- selection
class SubDense(Dense):
    def forward(self, z):
        return super().forward(z) * 2.0


def _general_models() -> dict[str, PCN]:
    branch = PCN(
        [Node("x", (4,)), Node("a", (3,)), Node("b", (3,))],
        [("x", "a", Dense(4, 3, "tanh")), ("x", "b", Dense(4, 3))],
    )
    merge = PCN(
        [Node("x", (4,)), Node("u", (4,)), Node("y", (3,))],
        [("x", "y", Dense(4, 3)), ("u", "y", Dense(4, 3))],
    )
    sequential = PCN(
        [Node("x", (4,)), Node("h", (3,)), Node("y", (2,))],
        [("x", "h", torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Tanh())), ("h", "y", Dense(3, 2))],
    )
    subclass = PCN([Node("x", (4,)), Node("h", (3,)), Node("y", (2,))], [("x", "h", SubDense(4, 3, "tanh")), ("h", "y", Dense(3, 2))])
    hooked = mlp([4, 3, 2])
    hooked.module("x", "h1").register_forward_hook(lambda m, i, o: o * 3.0)
    amortised = PCN(
        [Node("x", (4,)), Node("h", (3,)), Node("y", (2,))],
        [("x", "h", Dense(4, 3, "tanh")), ("h", "y", Dense(3, 2))],
        amortisers=[("y", "h", Dense(2, 3))],
    )
    hidden_ce = PCN(
        [Node("x", (4,)), Node("h", (3,), CrossEntropy()), Node("y", (2,))],
        [("x", "h", Dense(4, 3)), ("h", "y", Dense(3, 2))],
    )
    return {"branch": branch, "merge": merge, "sequential": sequential, "subclass": subclass,
            "hooked": hooked, "amortised": amortised, "hidden_ce": hidden_ce}


@pytest.mark.parametrize("kind", sorted(_general_models()))
def test_fast_path_is_not_used_for_general_graphs(kind):
    model = _general_models()[kind].to(F64)
    root = [n for n in model.order if not model.incoming[n]][0]
    clamp = {root: randn(3, model.nodes[root].shape[0], seed=0)}
    inference = Inference(steps=3)
    relaxed = relax(model, clamp, inference)
    assert path(model, inference, batch=clamp) == "reference"
    expected = relax(model, clamp, reference(inference))
    assert max_rel(relaxed.values, expected.values) < 1e-12


def test_fast_path_is_not_used_when_the_general_loop_is_asked_for():
    model = mlp([4, 3, 2])
    clamp = clamp_for(model, "io")
    assert path(model, Inference(steps=2), batch=clamp) == "chain"
    assert path(model, Inference(steps=2, method="manual"), batch=clamp) == "reference"
    assert path(model, Inference(steps=2, method="autograd"), batch=clamp) == "reference"
    assert path(model, Inference(steps=2, tolerance=1e-3), batch=clamp) == "reference"
    assert path(model, Inference(steps=2, optimizer=TorchOptimizer(torch.optim.SGD, lr=0.1)), batch=clamp) == "reference"
    assert path(model, Inference(steps=2), batch=clamp, record=True) == "reference"
    assert path(model, Inference(steps=2), batch=clamp, on_step=lambda t, v: None) == "reference"
    assert path(model, Inference(steps=2, accelerators=()), batch=clamp) == "reference"


def test_subclassed_weight_energy_is_respected():
    """A PCLearning subclass with its own weight energy must not be bypassed by the fast gradients."""

    class Doubled(PCLearning):
        def weight_energy(self, relaxed):
            return 2.0 * super().weight_energy(relaxed)

    model, other = mlp([4, 3, 2]), None
    other = twin(model)
    clamp = clamp_for(model, "io")
    Doubled(model, Inference(steps=3), torch.optim.SGD(model.parameters(), 0.0)).step(clamp)
    PCLearning(other, Inference(steps=3), torch.optim.SGD(other.parameters(), 0.0)).step(clamp)
    for p, q in zip(model.parameters(), other.parameters()):
        assert torch.allclose(p.grad, 2.0 * q.grad, rtol=1e-12, atol=0)


def test_names_helper_matches_chain():
    assert list(mlp([3, 3, 3]).nodes) == chain_names(2)


# ---------------------------------------------------------------------------- anchored nodes
@pytest.mark.parametrize("schedule", ["constant", "spiking-off", "scaled"])
@pytest.mark.parametrize("pattern", ["io", "mid"])
@pytest.mark.parametrize("output", ["gaussian", "ce"])
def test_anchored_first_hidden_node_relaxes_like_the_reference(schedule, pattern, output):
    """A free node above a clamped one, relaxed by plain SGD, is carried through the next layer's
    pre-activation (one product with W W^T per step): the same values as the direct updates."""
    model = mlp([7, 6, 6, 5, 3], "tanh", output=CrossEntropy() if output == "ce" else None, precisions=[0.8, 1.0, 1.3, 1.0])
    clamp = clamp_for(model, pattern)
    precision = {"constant": Constant(), "spiking-off": Spiking(0.0), "scaled": Decaying(0.3)}[schedule]
    inference = Inference(steps=10, optimizer=SGD(0.1), precision=precision)
    fast = relax(model, clamp, inference)
    assert "h1" in anchored(model, clamp, inference)
    slow = relax(model, clamp, reference(inference))
    assert max_rel(fast.values, slow.values) < 1e-12


def test_anchored_node_in_float32_matches_reference_to_single_precision():
    model = mlp([784, 128, 128, 10], "tanh", dtype=torch.float32)
    x = torch.rand(64, 784, generator=torch.Generator().manual_seed(1))
    y = torch.nn.functional.one_hot(torch.arange(64) % 10, 10).float()
    inference = Inference(steps=20, optimizer=SGD(0.1))
    fast = relax(model, {"x": x, "y": y}, inference)
    assert anchored(model, {"x": x, "y": y}, inference) == ("h1",)
    slow = relax(model, {"x": x, "y": y}, reference(inference))
    assert max_rel(fast.values, slow.values) < 1e-6


@pytest.mark.parametrize("case", ["momentum", "adam", "zeros-init", "fixed-prediction", "few-steps"])
def test_nodes_are_anchored_only_where_the_algebra_holds(case):
    model = mlp([7, 6, 6, 3], "tanh")
    clamp = clamp_for(model, "io")
    inference = {
        "momentum": Inference(steps=10, optimizer=SGD(0.1, momentum=0.5)),
        "adam": Inference(steps=10, optimizer=Adam(0.1)),
        "zeros-init": Inference(steps=10, optimizer=SGD(0.1), init="zeros"),
        "fixed-prediction": Inference(steps=10, optimizer=SGD(0.1), fixed_prediction=True),
        "few-steps": Inference(steps=1, optimizer=SGD(0.1)),
    }[case]
    fast = relax(model, clamp, inference)
    assert anchored(model, clamp, inference) == ()
    assert max_rel(fast.values, relax(model, clamp, reference(inference)).values) < 1e-12


# ---------------------------------------------------------------------------- backprop through inference
@pytest.mark.parametrize("optimizer", ["sgd", "nesterov", "adam"])
@pytest.mark.parametrize("clamp_names", [("x",), ("x", "y")])
@pytest.mark.parametrize("init", ["forward", "zeros"])
def test_backprop_through_the_fast_relaxation_equals_the_reference(optimizer, clamp_names, init):
    """Autograd through the Dense-chain relaxation (skipped zero errors, anchored node included)
    gives the parameter gradients of the general graph code."""
    from pclab.core import BPThroughInference, TaskLoss

    if optimizer == "adam" and clamp_names == ("x",) and init == "forward":
        pytest.skip("no latent moves (a feed-forward start with only the input clamped): the general "
                    "path differentiates Adam at a zero gradient, a 1/eps slope that amplifies rounding; "
                    "see test_a_relaxation_that_cannot_move_backpropagates_like_plain_backprop")
    model = mlp([7, 6, 5, 3], "tanh")
    other = twin(model)
    batch = {"x": randn(5, 7, seed=1), "y": randn(5, 3, seed=2)}
    inference = Inference(steps=6, optimizer=OPTIMIZERS[optimizer], init=init)
    loss = TaskLoss(reconstruct={"y": 1.0})
    fast = BPThroughInference(model, inference, torch.optim.SGD(model.parameters(), 0.0), loss, clamp_names)
    slow = BPThroughInference(other, reference(inference), torch.optim.SGD(other.parameters(), 0.0), loss, clamp_names)
    a, b = fast.step(batch), slow.step(batch)
    assert a["loss"] == pytest.approx(b["loss"], rel=1e-12)
    # Adam's step has slope ~1/eps at a zero gradient: where the general path's derivative of an
    # exactly-zero latent gradient carries rounding noise, Adam multiplies it by ~1e8
    tolerance = 1e-8 if optimizer == "adam" else 1e-10
    for p, q in zip(model.parameters(), other.parameters()):
        assert float((p.grad - q.grad).norm()) <= tolerance * max(float(q.grad.norm()), 1e-12)


def test_differentiable_fast_relaxation_is_used_unless_truncated_or_checkpointed():
    model = mlp([4, 3, 2])
    clamp = clamp_for(model, "io")
    assert path(model, Inference(steps=2), batch=clamp, differentiable=True) == "chain-adjoint"
    assert path(model, Inference(steps=2, accelerators=("chain",)), batch=clamp, differentiable=True) == "chain"
    assert path(model, Inference(steps=2), batch=clamp, differentiable=True, truncate=1) == "reference"
    assert path(model, Inference(steps=2), batch=clamp, differentiable=True, checkpoint_steps=True) == "reference"


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_a_relaxation_that_cannot_move_backpropagates_like_plain_backprop(optimizer):
    """Feed-forward start, only the input clamped: every error is exactly zero at every step, so the
    fast path does no relaxation work and bp-through-inference is plain backprop."""
    from pclab.core import Backprop, BPThroughInference, TaskLoss

    model = mlp([7, 6, 5, 3], "tanh")
    other = twin(model)
    batch = {"x": randn(5, 7, seed=1), "y": randn(5, 3, seed=2)}
    loss = TaskLoss(reconstruct={"y": 1.0})
    inference = Inference(steps=6, optimizer=OPTIMIZERS[optimizer])
    BPThroughInference(model, inference, torch.optim.SGD(model.parameters(), 0.0), loss, ("x",)).step(batch)
    Backprop(other, torch.optim.SGD(other.parameters(), 0.0), loss, ("x",)).step(batch)
    for p, q in zip(model.parameters(), other.parameters()):
        assert torch.equal(p.grad, q.grad)
