"""Error-based relaxation (ePC): its fixed points are state-based PC's, it starts at the feed-forward
pass, descends the energy, reaches equilibrium in far fewer steps than sPC on a deep chain, and
bp-through-inference through it is exact."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from nets import F64, SMOOTH, central_difference, chain, examples, hybrid, one_hot, randn, rel_err, seeded, some_indices
from pclab.bench.epc import energy_trace, equilibrium_energy, steps_to_equilibrium
from pclab.core import (
    PCN,
    SGD,
    Adam,
    BPThroughInference,
    Constant,
    CrossEntropy,
    Decaying,
    Dense,
    Gaussian,
    IncrementalPC,
    Inference,
    Node,
    PCLearning,
    Spiking,
    TaskLoss,
    relax,
)
from pclab.core.batchnorm import PhasedBatchNorm
from pclab.core.epc import ErrorProblem
from pclab.core.fast import ACCELERATORS, path
from pclab.core.relax import free_nodes
from pclab.models.deep import orthogonal_init, residual_mlp


def error_inference(steps: int, lr: float = 0.1, **kwargs) -> Inference:
    return Inference(steps=steps, optimizer=SGD(lr), parametrisation="error", **kwargs)


# ---------------------------------------------------------------------------------------------- models
def generative(widths: list[int], act: str, seed: int, prior: bool = False) -> PCN:
    """``z -> h1 -> ... -> x``: the top latent ``z`` predicts, through free hidden nodes, the clamped
    image. ``z`` is a free root; with ``prior`` it is predicted (a learned Gaussian prior) from a
    constant node ``p`` that is clamped to ones, so the energy has a minimum in every direction."""
    names = ["z", *[f"h{i}" for i in range(1, len(widths) - 1)], "x"]
    nodes = [Node(n, (w,)) for n, w in zip(names, widths)]
    with seeded(seed):
        edges = [(names[i], names[i + 1], Dense(widths[i], widths[i + 1], act)) for i in range(len(widths) - 1)]
        if prior:
            nodes.append(Node("p", (1,)))
            edges.append(("p", "z", Dense(1, widths[0])))
        return orthogonal_init(PCN(nodes, edges), 1.0).to(F64)


def layered_hybrid(image: int, latent: int, hidden: int, classes: int, act: str, seed: int) -> PCN:
    """Hybrid x/z/y with an amortiser ``x -> z``, a decoder ``z -> d1 -> x``, a head ``z -> y`` (CE)
    and a Gaussian prior on ``z`` from the constant node ``p`` (clamped to ones): without it a
    clamped label's cross-entropy keeps falling as ``z`` runs off to infinity."""
    nodes = [Node("x", (image,)), Node("p", (1,)), Node("z", (latent,)), Node("d1", (hidden,)), Node("y", (classes,), CrossEntropy())]
    with seeded(seed):
        edges = [("p", "z", Dense(1, latent)), ("z", "d1", Dense(latent, hidden, act)), ("d1", "x", Dense(hidden, image, act)),
                 ("z", "y", Dense(latent, classes))]
        model = PCN(nodes, edges, amortisers=[("x", "z", Dense(image, latent, "tanh"))])
        return orthogonal_init(model, 1.0).to(F64)


def conv_chain(channels: int, layers: int, act: str, seed: int, classes: int = 3) -> PCN:
    """``x (1, 5, 5) -> h1 .. -> y``: 3x3 convolutions (padding 1) then a linear read-out; plain
    ``nn.Sequential`` edges, so ePC's gradient is autograd's."""
    acts = {"identity": nn.Identity, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid, "gelu": nn.GELU, "silu": nn.SiLU}
    nodes, edges, c = [Node("x", (1, 5, 5))], [], 1
    with seeded(seed):
        for i in range(1, layers):
            nodes.append(Node(f"h{i}", (channels, 5, 5)))
            edges.append(("x" if i == 1 else f"h{i - 1}", f"h{i}", nn.Sequential(nn.Conv2d(c, channels, 3, padding=1), acts[act]())))
            c = channels
        nodes.append(Node("y", (classes,)))
        edges.append((f"h{layers - 1}" if layers > 1 else "x", "y", nn.Sequential(nn.Flatten(), nn.Linear(c * 25, classes))))
        return PCN(nodes, edges).to(F64)


@st.composite
def problems(draw):
    """A float64 PCN and its clamp: discriminative (dense or conv), generative or hybrid."""
    kind = draw(st.sampled_from(["dense", "dense-ce", "conv", "generative", "hybrid"]))
    depth = draw(st.integers(1, 6))
    width = draw(st.integers(2, 5))
    act = draw(st.sampled_from(SMOOTH))
    seed = draw(st.integers(0, 2**16))
    batch = 3
    if kind in ("dense", "dense-ce"):
        widths = [width + 1, *[width] * (depth - 1), 3]
        model = chain(widths, act, output=CrossEntropy() if kind == "dense-ce" else Gaussian(), seed=seed)
        target = one_hot(torch.arange(batch) % 3, 3) if kind == "dense-ce" else randn(batch, 3, seed=seed + 2)
        return model, {"x": randn(batch, widths[0], seed=seed + 1), "y": target}
    if kind == "conv":
        model = conv_chain(2, min(depth, 3), act, seed)
        return model, {"x": randn(batch, 1, 5, 5, seed=seed + 1), "y": randn(batch, 3, seed=seed + 2)}
    ones = torch.ones(batch, 1, dtype=F64)
    if kind == "generative":
        widths = [2, *[width] * (depth - 1), 6]
        return generative(widths, act, seed, prior=True), {"x": randn(batch, 6, seed=seed + 1), "p": ones}
    model = layered_hybrid(6, 2, width, 3, act, seed)
    return model, {"x": randn(batch, 6, seed=seed + 1), "p": ones, "y": one_hot(torch.arange(batch) % 3, 3)}


def state_grad_norm(model: PCN, values: dict, clamped: frozenset) -> float:
    """Norm of the state-based latent gradient ``dE/ds`` over the free nodes."""
    free = free_nodes(model, clamped)
    grads, _ = model.latent_grads(values, free, clamped, method="autograd")
    return math.sqrt(sum(float(g.pow(2).sum()) for g in grads.values()))


def edge_grads(model: PCN, energy: torch.Tensor) -> list[torch.Tensor]:
    params = list(model.edge_modules.parameters())
    found = torch.autograd.grad(energy, params, allow_unused=True)
    return [g if g is not None else torch.zeros_like(p) for g, p in zip(found, params)]


# ---------------------------------------------------------------------------------------------- fixed points
def converged(model: PCN, clamp: dict) -> tuple:
    """ePC relaxed in rounds of 200 Nesterov steps (the fixed point does not depend on the
    optimiser), each round from the last one's states, until sPC's latent gradient there is below
    1e-9 of the start's or 15 rounds have run; returns ``(relaxed, inference)``."""
    clamped = frozenset(clamp)
    inference = Inference(steps=200, optimizer=SGD(0.1, momentum=0.9, nesterov=True), parametrisation="error")
    relaxed = relax(model, clamp, inference)
    first, start = relaxed.initial, state_grad_norm(model, relaxed.initial, clamped)
    for _ in range(14):
        if state_grad_norm(model, relaxed.values, clamped) <= 1e-9 * max(start, 1.0):
            break
        relaxed = relax(model, clamp, inference, initial=relaxed.values)
    relaxed.initial = first
    return relaxed, inference


@examples(12)
@given(problems())
def test_epc_fixed_points_are_spc_fixed_points_with_the_same_weight_gradients(case):
    """Relaxed over the errors to convergence, the states have a state-based latent gradient of
    about zero (relative to the feed-forward start's), sPC started there does not move, and the
    local PC weight gradient there equals (a) the sPC rule's after that sPC relaxation and (b) the
    derivative of the minimised error energy in the parameters at fixed errors (the envelope
    theorem: at a minimum both parametrisations' energies have the same parameter gradient)."""
    model, clamp = case
    clamped = frozenset(clamp)
    relaxed, inference = converged(model, clamp)
    start = state_grad_norm(model, relaxed.initial, clamped)
    assert state_grad_norm(model, relaxed.values, clamped) <= 1e-7 * max(start, 1.0)

    # sPC from the ePC fixed point stays there, and the PC rule's gradients agree
    spc = relax(model, clamp, Inference(steps=20, optimizer=SGD(0.1)), initial=relaxed.values)
    for n in free_nodes(model, clamped):
        assert rel_err(spc.values[n], relaxed.values[n]) <= 1e-8 or float((spc.values[n] - relaxed.values[n]).abs().max()) <= 1e-10
    rule = PCLearning(model, inference, torch.optim.SGD(model.parameters(), lr=0.0))
    local = edge_grads(model, model.energy({n: v.detach() for n, v in relaxed.values.items()}, clamped))
    from_spc = edge_grads(model, rule.weight_energy(spc))  # (an amortiser's loss does not reach the edges)
    free = free_nodes(model, clamped)
    problem = ErrorProblem(model, clamp, free, {n: model.nodes[n].energy.precision for n in model.error_nodes}, {}, "autograd")
    mu = model.predictions(relaxed.values)
    fixed_errors = {n: (relaxed.values[n] - mu[n] if n in problem.errors else relaxed.values[n]).detach() for n in problem.variables}
    envelope = problem.energies(fixed_errors, problem.states(fixed_errors)[1])
    total = torch.stack(list(envelope.values())).sum(0).mean()
    global_ = edge_grads(model, total)
    scale = max(1e-12, max(float(g.abs().max()) for g in local))
    for a, b, c in zip(local, from_spc, global_):
        assert float((a - b).abs().max()) <= 1e-7 * scale
        assert float((a - c).abs().max()) <= 1e-6 * scale


def test_residual_batchnorm_transposed_conv_and_free_root_models_relax_to_spc_fixed_points():
    """The other prediction modules: residual blocks with auxiliary skip nodes (a DAG), weight-phase
    BatchNorm, a transposed-conv generator; and a free root (a linear generative model without
    prior): ePC converges to states where sPC's gradient vanishes."""
    with seeded(3):
        residual = residual_mlp(5, 4, 4, 3, activation="tanh", parameterisation="standard", skip_delay=1).to(F64)
        norm = PCN(
            [Node("x", (4,)), Node("h1", (4,)), Node("y", (2,))],
            [("x", "h1", nn.Sequential(nn.Linear(4, 4), PhasedBatchNorm(4), nn.Tanh())), ("h1", "y", nn.Linear(4, 2))],
        ).to(F64)
        deconv = PCN(  # with a prior on z (from the constant p)
            [Node("p", (1,)), Node("z", (3,)), Node("h1", (2, 2, 2)), Node("x", (1, 4, 4))],
            [("p", "z", nn.Linear(1, 3)), ("z", "h1", nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Unflatten(1, (2, 2, 2)))),
             ("h1", "x", nn.Sequential(nn.ConvTranspose2d(2, 1, 4, stride=2, padding=1), nn.Sigmoid()))],
        ).to(F64)
    cases = [
        (residual, {"x": randn(4, 5, seed=1), "y": randn(4, 3, seed=2)}),
        (norm, {"x": randn(6, 4, seed=3), "y": randn(6, 2, seed=4)}),
        (deconv, {"x": torch.rand(3, 1, 4, 4, dtype=F64, generator=torch.Generator().manual_seed(5)), "p": torch.ones(3, 1, dtype=F64)}),
    ]
    linear = generative([2, 3, 5], "identity", seed=6)  # a free root: a linear-Gaussian model has a unique minimum
    cases.append((linear, {"x": randn(3, 5, seed=7)}))
    for model, clamp in cases:
        clamped = frozenset(clamp)
        relaxed, _ = converged(model, clamp)
        assert state_grad_norm(model, relaxed.values, clamped) <= 1e-7 * max(1.0, state_grad_norm(model, relaxed.initial, clamped))


@examples(15)
@given(problems())
def test_hand_derived_error_gradient_equals_autograd(case):
    """The reverse sweep over ``forward_with_vjp`` (method "manual") gives autograd's trajectory."""
    model, clamp = case
    if not model.fast:
        return
    runs = [relax(model, clamp, error_inference(7, 0.2, method=m)).values for m in ("manual", "autograd")]
    for n in runs[0]:
        assert rel_err(runs[0][n], runs[1][n]) <= 1e-12 or float((runs[0][n] - runs[1][n]).abs().max()) <= 1e-14


# ---------------------------------------------------------------------------------------------- start and descent
def test_zero_steps_is_the_feed_forward_pass():
    model = chain([5, 4, 4, 3], "tanh", seed=1)
    x, y = randn(4, 5, seed=2), randn(4, 3, seed=3)
    forward = model.initial_state({"x": x}, "forward")
    for clamp in ({"x": x}, {"x": x, "y": y}):
        relaxed = relax(model, clamp, error_inference(0))
        assert relaxed.steps == 0
        for n in ("h1", "h2"):
            assert torch.equal(relaxed.values[n], forward[n])
    released = relax(model, {"x": x}, error_inference(30))  # nothing clamped above: errors stay zero
    assert torch.allclose(released.values["y"], forward["y"], atol=0, rtol=1e-15)


def test_zeros_and_random_start_from_that_state():
    model = generative([2, 4, 5], "tanh", seed=4)
    clamp = {"x": randn(3, 5, seed=5)}
    for init in ("zeros", "random"):
        g = torch.Generator().manual_seed(6)
        relaxed = relax(model, clamp, Inference(steps=0, parametrisation="error", init=init), generator=g)
        expected = model.initial_state(clamp, init, torch.Generator().manual_seed(6))
        for n in ("z", "h1"):
            assert torch.allclose(relaxed.values[n], expected[n], rtol=0, atol=1e-14)


@examples(30)
@given(problems(), st.sampled_from(["forward", "zeros", "random"]))
def test_small_steps_never_increase_the_energy(case, init):
    model, clamp = case
    relaxed = relax(model, clamp, error_inference(25, 0.02, init=init), record=True, generator=torch.Generator().manual_seed(0))
    energy = relaxed.trajectory.total_energy()
    assert len(energy) == 26
    for before, after in zip(energy, energy[1:]):
        assert after <= before + 1e-12 * max(1.0, abs(before))


def test_trajectory_energy_is_the_state_energy_of_the_recorded_states():
    """The recorded per-node energies (of the errors) equal the state-based energies at the final states."""
    model, clamp = hybrid(seed=2), {"x": randn(4, 6, seed=1), "y": one_hot(torch.arange(4) % 4, 4)}
    relaxed = relax(model, clamp, error_inference(10), record=True)
    with torch.no_grad():
        energies = model.energies(relaxed.values, relaxed.clamped)
    last = dict(zip(relaxed.trajectory.nodes, relaxed.trajectory.energy[-1]))
    for n, e in energies.items():
        assert abs(float(e.mean()) - last[n]) <= 1e-12 * max(1.0, abs(last[n]))


# ---------------------------------------------------------------------------------------------- steps to equilibrium
@pytest.mark.slow
def test_epc_reaches_equilibrium_in_at_least_ten_times_fewer_steps_than_spc_on_a_20_layer_chain():
    """float64, 20 layers (width 8, tanh, PyTorch's init, cross-entropy label), input and label
    clamped; each method on a fixed step-size grid, a step size stable if the energy never rises
    over 5000 steps; E* the lowest energy of a long ePC run; converged at the first t with
    E_t - E* <= 1e-3 (E_0 - E*). ePC needs at least 10x fewer steps, each at its best stable step."""
    cap = 5000
    model = chain([8] * 20 + [4], "tanh", output=CrossEntropy(), seed=0)
    clamp = {"x": randn(2, 8, seed=1), "y": one_hot(torch.tensor([1, 3]), 4)}
    grid = [0.05, 0.1, 0.2, 0.4, 0.6, 0.8, 1.0]
    traces = {error: energy_trace(model, clamp, grid, cap, "error" if error else "state") for error in (True, False)}
    target = equilibrium_energy(traces[True])
    best = {}
    for error, trace in traces.items():
        found = [steps_to_equilibrium(trace[:, i], target) for i in range(len(grid))]
        stable = [t for t, ok in found if ok and t is not None]
        assert stable, f"no stable step size converged ({'ePC' if error else 'sPC'})"
        best[error] = min(stable)
    assert best[True] * 10 <= best[False], best
    # the batched measurement is relax()'s own trajectory
    lr = grid[1]
    relaxed = relax(model, clamp, error_inference(30, lr), record=True)
    recorded = torch.tensor(relaxed.trajectory.total_energy(), dtype=F64) * 2  # batch means -> batch sums
    assert torch.allclose(recorded, traces[True][:31, 1], rtol=1e-10, atol=0)


# ---------------------------------------------------------------------------------------------- learning
def test_bp_through_an_error_relaxation_matches_finite_differences():
    """Input and label clamped (the label's energy moves the errors), the loss on the relaxed
    label prediction: the gradient through the unrolled error relaxation is the true one."""
    model = chain([4, 3, 3, 2], "tanh", output=CrossEntropy(), seed=7)
    batch = {"x": randn(3, 4, seed=8), "y": one_hot(torch.tensor([0, 1, 1]), 2)}
    inference = Inference(steps=6, optimizer=SGD(0.3, momentum=0.5), parametrisation="error")
    loss = TaskLoss(classify={"y": 1.0})
    rule = BPThroughInference(model, inference, torch.optim.SGD(model.parameters(), lr=0.0), loss, ("x", "y"))

    def objective() -> torch.Tensor:
        return rule.objective(batch)[0]

    model.zero_grad()
    objective().backward()
    for p in model.parameters():
        for idx in some_indices(p.shape, 3, seed=9):
            assert abs(p.grad[idx].item() - central_difference(objective, p, idx)) <= 1e-7 * max(1.0, abs(p.grad[idx].item()))


@pytest.mark.parametrize("checkpoint", [True, 2])
def test_checkpointed_bp_through_an_error_relaxation_matches_the_unrolled_one(checkpoint):
    model = generative([2, 4, 5], "tanh", seed=10)
    batch = {"x": randn(3, 5, seed=11)}
    inference = Inference(steps=7, optimizer=Adam(0.05), parametrisation="error", init="zeros")
    loss = TaskLoss(reconstruct={"x": 1.0})
    grads = []
    for ck in (False, checkpoint):
        rule = BPThroughInference(model, inference, torch.optim.SGD(model.parameters(), lr=0.0), loss, ("x",), checkpoint=ck)
        model.zero_grad()
        rule.objective(batch)[0].backward()
        grads.append([p.grad.clone() for p in model.parameters()])
    for a, b in zip(*grads):
        assert rel_err(a, b) <= 1e-10


def test_pc_learning_after_epc_is_the_local_gradient_and_forward_update_uses_the_feed_forward_values():
    model = chain([5, 4, 4, 3], "tanh", seed=12)
    batch = {"x": randn(4, 5, seed=13), "y": randn(4, 3, seed=14)}
    inference = error_inference(15, 0.2)
    for forward_update in (False, True):
        rule = PCLearning(model, inference, torch.optim.SGD(model.parameters(), lr=0.0), forward_update=forward_update)
        model.zero_grad()
        rule.step(batch)
        got = [p.grad.clone() for p in model.parameters()]
        relaxed = relax(model, batch, inference)
        values = {n: v.detach() for n, v in relaxed.values.items()}
        sources = {n: relaxed.initial[n] for n in ("h1", "h2", )} if forward_update else None
        expected = torch.autograd.grad(model.energy(values, relaxed.clamped, sources), list(model.parameters()))
        for a, b in zip(got, expected):
            assert rel_err(a, b) <= 1e-12


# ---------------------------------------------------------------------------------------------- refusals
@pytest.mark.parametrize(
    "kwargs, needle",
    [
        ({"parametrisation": "errors"}, "parametrisation must be 'state' or 'error'"),
        ({"parametrisation": "error", "precision": Spiking()}, "static precisions only"),
        ({"parametrisation": "error", "precision": {"h1": Decaying()}}, "static precisions only"),
        ({"parametrisation": "error", "fixed_prediction": True}, "fixed_prediction"),
    ],
)
def test_inference_refuses_what_epc_does_not_define(kwargs, needle):
    with pytest.raises(ValueError, match=needle):
        Inference(**kwargs)


def test_only_the_compiled_epc_accelerator_takes_an_error_relaxation():
    """State-based PC's accelerators never relax over the errors; the compiled ePC step of a Dense
    chain does, with ``compile`` only (the rules' reference steps then relax through it)."""
    model = chain([3, 3, 2], "tanh", seed=18)
    batch = {"x": randn(2, 3, seed=1), "y": randn(2, 2, seed=2)}
    rule = lambda inference: PCLearning(model, inference, torch.optim.SGD(model.parameters(), lr=0.1))  # noqa: E731
    for accelerators in (None, ACCELERATORS, ("chain", "compiled-chain")):
        inference = error_inference(3, accelerators=accelerators)
        assert inference.accelerators == accelerators
        assert path(model, inference, batch=batch) == "reference"
        assert path(model, inference, rule(inference), batch) == "reference"
    compiled = error_inference(3, compile=True)
    assert path(model, compiled, batch=batch) == "compiled-epc"
    assert path(model, compiled, rule(compiled), batch) == "reference+compiled-epc"
    assert path(model, error_inference(3, compile=True, accelerators=("chain", "compiled-chain")), batch=batch) == "reference"


def test_static_precisions_are_allowed_and_weight_the_error_energy():
    model = chain([3, 3, 2], "tanh", hidden_precision=[2.0], seed=15)
    clamp = {"x": randn(2, 3, seed=16), "y": randn(2, 2, seed=17)}
    for precision in (Constant(0.5), {"h1": Constant(3.0)}):
        inference = Inference(steps=2000, optimizer=SGD(0.1), parametrisation="error", precision=precision)
        relaxed = relax(model, clamp, inference)
        scaled = Inference(steps=5, optimizer=SGD(0.01), precision=precision)
        grads, _ = model.latent_grads(relaxed.values, ["h1"], relaxed.clamped, scaled.multipliers(model, 0), method="autograd")
        assert float(grads["h1"].abs().max()) <= 1e-9


def test_incremental_pc_and_step_hooks_are_refused():
    model = chain([3, 3, 2], "tanh", seed=18)
    with pytest.raises(ValueError, match="IncrementalPC"):
        IncrementalPC(model, error_inference(3), torch.optim.SGD(model.parameters(), lr=0.1))
    with pytest.raises(ValueError, match="on_step"):
        relax(model, {"x": randn(2, 3, seed=1)}, error_inference(3), on_step=lambda t, v: None)
    with pytest.raises(ValueError, match="manual"):
        relax(conv_chain(2, 2, "tanh", 0), {"x": randn(2, 1, 5, 5, seed=1)}, error_inference(3, method="manual"))
