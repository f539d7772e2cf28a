"""Relaxation: energy descent, early stopping, latent optimisers and the recorded trajectory."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from nets import F64, SMOOTH, chain, examples, hybrid, randn, rel_err, seeded
from pclab.core import (
    PCN,
    SGD,
    Adam,
    Constant,
    CrossEntropy,
    Decaying,
    Dense,
    Gaussian,
    Inference,
    Node,
    PCLearning,
    Spiking,
    TorchOptimizer,
    relax,
)


@st.composite
def small_chains(draw):
    layers = draw(st.integers(1, 4))
    widths = draw(st.lists(st.integers(1, 6), min_size=layers + 1, max_size=layers + 1))
    acts = draw(st.lists(st.sampled_from(SMOOTH), min_size=layers, max_size=layers))
    precisions = draw(st.lists(st.sampled_from([0.5, 1.0, 2.0]), min_size=layers, max_size=layers))
    seed = draw(st.integers(0, 2**16))
    init = draw(st.sampled_from(["forward", "zeros", "random"]))
    clamp_y = draw(st.booleans())
    model = chain(widths, acts, output=Gaussian(precisions[-1]), hidden_precision=precisions[:-1], seed=seed)
    clamp = {"x": randn(3, widths[0], seed=seed + 1)}
    if clamp_y:
        clamp["y"] = randn(3, widths[-1], seed=seed + 2)
    return model, clamp, init, seed


@examples(40)
@given(small_chains())
def test_relaxation_with_a_small_step_never_increases_the_energy(case):
    """Plain SGD with a small latent step on a random chain: the recorded total energy is
    non-increasing at every step (whatever the initialisation and clamping)."""
    model, clamp, init, seed = case
    inference = Inference(steps=25, optimizer=SGD(lr=0.02), init=init)
    relaxed = relax(model, clamp, inference, record=True, generator=torch.Generator().manual_seed(seed))
    energy = relaxed.trajectory.total_energy()
    assert len(energy) == 26
    for before, after in zip(energy, energy[1:]):
        assert after <= before + 1e-12 * max(1.0, abs(before))


def test_tolerance_stops_relaxation_early_and_reports_the_steps_taken():
    """On a converging problem the tolerance stops before ``steps``; ``Relaxed.steps`` is the
    number of updates made, and the stop happens at the first step whose relative energy change
    falls below the tolerance."""
    model = chain([3, 5, 4, 2], "tanh", seed=1)
    clamp = {"x": randn(4, 3, seed=2), "y": randn(4, 2, seed=3)}
    tol = 1e-6
    relaxed = relax(model, clamp, Inference(steps=5000, optimizer=SGD(lr=0.2), tolerance=tol), record=True)
    assert 2 <= relaxed.steps < 5000
    energy = relaxed.trajectory.total_energy()
    assert len(energy) == relaxed.steps + 1
    # energies at the start of steps 0 .. taken-1 drive the criterion
    changes = [abs(a - b) / abs(a) for a, b in zip(energy[: relaxed.steps - 1], energy[1 : relaxed.steps])]
    assert changes[-1] <= tol
    assert all(c > tol for c in changes[:-1])
    full = relax(model, clamp, Inference(steps=relaxed.steps + 7, optimizer=SGD(lr=0.2)))
    assert full.steps == relaxed.steps + 7


def test_relaxation_without_tolerance_runs_every_step():
    model = chain([2, 3, 2], "tanh", seed=4)
    clamp = {"x": randn(2, 2, seed=5), "y": randn(2, 2, seed=6)}
    assert relax(model, clamp, Inference(steps=13, optimizer=SGD(lr=0.1))).steps == 13


@pytest.mark.parametrize(
    "torch_kwargs, ours",
    [
        ({"lr": 0.1}, SGD(lr=0.1)),
        ({"lr": 0.05, "momentum": 0.8}, SGD(lr=0.05, momentum=0.8)),
        ({"lr": 0.05, "momentum": 0.8, "nesterov": True}, SGD(lr=0.05, momentum=0.8, nesterov=True)),
    ],
    ids=["plain", "momentum", "nesterov"],
)
def test_torch_sgd_relaxation_equals_pclab_sgd_relaxation(torch_kwargs, ours):
    """``TorchOptimizer(torch.optim.SGD, ...)`` and pclab's SGD give the same relaxed state."""
    model = chain([3, 5, 4, 2], "gelu", seed=7)
    clamp = {"x": randn(4, 3, seed=8), "y": randn(4, 2, seed=9)}
    a = relax(model, clamp, Inference(steps=15, optimizer=TorchOptimizer(torch.optim.SGD, **torch_kwargs)))
    b = relax(model, clamp, Inference(steps=15, optimizer=ours))
    for n in ("h1", "h2"):
        assert torch.allclose(a.values[n], b.values[n], rtol=1e-13, atol=1e-14)
    assert not torch.equal(a.values["h1"], a.initial["h1"])


def test_torch_adam_relaxation_equals_pclab_adam_relaxation():
    model = chain([3, 5, 4, 2], "tanh", seed=10)
    clamp = {"x": randn(4, 3, seed=11), "y": randn(4, 2, seed=12)}
    a = relax(model, clamp, Inference(steps=15, optimizer=TorchOptimizer(torch.optim.Adam, lr=0.05)))
    b = relax(model, clamp, Inference(steps=15, optimizer=Adam(lr=0.05)))
    for n in ("h1", "h2"):
        assert torch.allclose(a.values[n], b.values[n], rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize(
    "optimizer",
    [SGD(lr=0.05, momentum=0.7, nesterov=True), SGD(lr=0.05, momentum=0.7), Adam(lr=0.02)],
    ids=["nesterov", "momentum", "adam"],
)
@pytest.mark.parametrize("init", ["forward", "random"])
def test_momentum_and_adam_latent_optimisers_decrease_the_energy(optimizer, init):
    """Nesterov/heavy-ball SGD and Adam on the latents end at a much lower energy than they start."""
    model = chain([4, 6, 5, 3], "tanh", seed=13)
    clamp = {"x": randn(8, 4, seed=14), "y": randn(8, 3, seed=15)}
    relaxed = relax(model, clamp, Inference(steps=60, optimizer=optimizer, init=init), record=True, generator=torch.Generator().manual_seed(16))
    energy = relaxed.trajectory.total_energy()
    assert energy[-1] < 0.8 * energy[0]
    assert min(energy) < 0.8 * energy[0]


def test_trajectory_has_one_row_per_step_plus_the_start_and_zero_drift_at_step_zero():
    """``steps + 1`` rows; columns are error nodes (energy, error norm) and free nodes (drift);
    row 0 is the initial state: drift 0, energies those of ``PCN.energies``; a released
    cross-entropy read-out has zero energy."""
    model = hybrid(seed=17)
    x = randn(5, 6, seed=18)
    steps = 9
    relaxed = relax(model, {"x": x}, Inference(steps=steps, optimizer=SGD(lr=0.1)), record=True)
    traj = relaxed.trajectory
    assert traj.nodes == model.error_nodes and set(traj.nodes) == {"x", "y"}
    assert traj.free == ["z"]
    for table, width in ((traj.energy, len(traj.nodes)), (traj.error_norm, len(traj.nodes)), (traj.drift, len(traj.free))):
        assert len(table) == steps + 1
        assert all(len(row) == width for row in table)
    assert traj.drift[0] == [0.0]
    assert traj.drift[-1][0] > 0.0
    energies = model.energies(relaxed.initial, {"x"})
    assert traj.energy[0][traj.nodes.index("x")] == pytest.approx(float(energies["x"].detach().mean()), rel=1e-12)
    assert all(row[traj.nodes.index("y")] == 0.0 for row in traj.energy)
    assert len(traj.total_energy()) == steps + 1


def test_relaxation_leaves_clamped_values_and_the_initial_state_untouched():
    model = chain([3, 4, 2], "tanh", seed=19)
    x, y = randn(3, 3, seed=20), randn(3, 2, seed=21)
    x0, y0 = x.clone(), y.clone()
    relaxed = relax(model, {"x": x, "y": y}, Inference(steps=10, optimizer=SGD(lr=0.1)))
    assert torch.equal(relaxed.values["x"], x0) and torch.equal(relaxed.values["y"], y0)
    assert torch.equal(x, x0) and torch.equal(y, y0)
    forward = model.initial_state({"x": x}, "forward")["h1"].detach()
    assert torch.equal(relaxed.initial["h1"], forward)
    assert not torch.equal(relaxed.values["h1"], forward)
    assert relaxed.values["h1"].dtype == F64


@st.composite
def relaxation_setups(draw):
    """A random chain and every relaxation option a chain can take."""
    layers = draw(st.integers(1, 4))
    widths = draw(st.lists(st.integers(1, 6), min_size=layers + 1, max_size=layers + 1))
    acts = draw(st.lists(st.sampled_from(["identity", "tanh", "sigmoid", "gelu", "silu", "leaky_relu", "relu"]), min_size=layers, max_size=layers))
    seed = draw(st.integers(0, 2**16))
    cross_entropy = draw(st.booleans())
    if cross_entropy:
        widths[-1] = max(2, widths[-1])
    output = CrossEntropy(draw(st.sampled_from([1.0, 0.5]))) if cross_entropy else Gaussian(draw(st.sampled_from([1.0, 2.0])))
    model = chain(widths, acts, output=output, hidden_precision=[draw(st.sampled_from([1.0, 0.3]))] * (layers - 1), seed=seed)
    clamp = {"x": randn(3, widths[0], seed=seed + 1)}
    if draw(st.booleans()):
        y = randn(3, widths[-1], seed=seed + 2)
        clamp["y"] = torch.softmax(y, dim=1) if cross_entropy else y
    optimizer = draw(st.sampled_from([SGD(lr=0.1), SGD(lr=0.05, momentum=0.6), SGD(lr=0.05, momentum=0.6, nesterov=True), Adam(lr=0.03)]))
    precision = draw(st.sampled_from([Constant(), Spiking(alpha=0.01), Decaying(k=0.5)]))
    options = dict(
        steps=draw(st.integers(0, 8)),
        optimizer=optimizer,
        init=draw(st.sampled_from(["forward", "zeros", "random"])),
        precision=precision,
        fixed_prediction=draw(st.booleans()),
    )
    return model, clamp, options, seed


@examples(60)
@given(relaxation_setups())
def test_relaxed_state_does_not_depend_on_the_gradient_method(setup):
    """``method`` says how dE/dz is computed, not what it is: "auto" (with any fast path it
    selects), "manual" and "autograd" relax to the same state (1e-10, float64), for every
    optimiser, initialisation, precision schedule, fixed prediction and clamping."""
    model, clamp, options, seed = setup
    results = {}
    for method in ("auto", "manual", "autograd"):
        inference = Inference(method=method, **options)
        results[method] = relax(model, clamp, inference, generator=torch.Generator().manual_seed(seed))
    reference = results["autograd"]
    for method in ("auto", "manual"):
        relaxed = results[method]
        assert relaxed.steps == reference.steps and relaxed.clamped == reference.clamped
        assert set(relaxed.values) == set(reference.values)
        for n, v in reference.values.items():
            assert relaxed.values[n].shape == v.shape
            assert rel_err(relaxed.values[n], v) < 1e-10, f"{method}: node {n}"
            assert rel_err(relaxed.initial[n], reference.initial[n]) < 1e-12, f"{method}: initial {n}"


@pytest.mark.parametrize(
    "module, method",
    [("dense", "auto"), ("dense", "manual"), ("dense", "autograd"), ("torch_linear", "auto")],
)
def test_relaxation_with_every_node_clamped_changes_nothing(module, method):
    """A one-layer network with input and output clamped has no free node: relaxation (and so PC
    learning on it) is a no-op that still reports its steps, by every gradient method (an
    ``nn.Linear`` edge has no hand-derived VJP, so "auto" means autograd there)."""
    edge = Dense(3, 2) if module == "dense" else nn.Linear(3, 2)
    with seeded(0):
        model = PCN([Node("x", (3,)), Node("y", (2,))], [("x", "y", edge)]).to(F64)
    clamp = {"x": randn(4, 3, seed=1), "y": randn(4, 2, seed=2)}
    relaxed = relax(model, clamp, Inference(steps=3, optimizer=SGD(lr=0.1), method=method))
    assert relaxed.steps == 3
    assert torch.equal(relaxed.values["x"], clamp["x"]) and torch.equal(relaxed.values["y"], clamp["y"])
    rule = PCLearning(model, Inference(steps=3, method=method), torch.optim.SGD(model.parameters(), lr=0.1))
    assert rule.step(clamp)["energy"] > 0


def _module_net(dropout: bool) -> PCN:
    """x -> h -> y with plain torch modules (no hand-derived VJP: the autograd gradient path)."""
    with seeded(5):
        first = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), *([nn.Dropout(0.3)] if dropout else []))
        edges = [("x", "h", first), ("h", "y", nn.Linear(5, 3))]
        return PCN([Node("x", (4,)), Node("h", (5,)), Node("y", (3,))], edges).to(F64)


@pytest.mark.parametrize("differentiable", [False, True])
def test_the_autograd_path_predicts_from_a_clamped_input_once_per_relaxation(differentiable):
    """A clamped input's prediction is computed once (as the hand-derived path does), with the same
    relaxed values and, through the unrolled relaxation, the same parameter gradients as calling
    the module at every step (``on_step`` turns the cache off)."""
    model = _module_net(dropout=False)
    first = model.module("x", "h")
    calls = []
    first.register_forward_hook(lambda *_: calls.append(1))
    clamp = {"x": randn(6, 4, seed=1), "y": randn(6, 3, seed=2)}
    inference = Inference(steps=7, optimizer=SGD(0.1))
    assert not model.fast

    def run(**kwargs):
        calls.clear()
        relaxed = relax(model, clamp, inference, differentiable=differentiable, **kwargs)
        loss = (relaxed.values["h"] ** 2).sum()
        grads = torch.autograd.grad(loss, list(model.parameters())) if differentiable else ()
        return relaxed, grads, len(calls)

    cached, cached_grads, cached_calls = run()
    every, every_grads, every_calls = run(on_step=lambda t, values: None)
    assert (cached_calls, every_calls) == (2, 1 + inference.steps)  # (feed-forward start, then the steps)
    assert torch.equal(cached.values["h"], every.values["h"])
    for a, b in zip(cached_grads, every_grads):
        assert rel_err(a, b) < 1e-12


def test_a_clamped_input_edge_with_dropout_in_training_mode_is_called_at_every_step():
    model = _module_net(dropout=True)
    calls = []
    model.module("x", "h").register_forward_hook(lambda *_: calls.append(1))
    relax(model, {"x": randn(6, 4, seed=1), "y": randn(6, 3, seed=2)}, Inference(steps=4, optimizer=SGD(0.1)))
    assert len(calls) == 1 + 4  # a new mask at every step, as before
    model.eval()
    calls.clear()
    relax(model, {"x": randn(6, 4, seed=1), "y": randn(6, 3, seed=2)}, Inference(steps=4, optimizer=SGD(0.1)))
    assert len(calls) == 2
