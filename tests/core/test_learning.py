"""Learning rules and read-outs: what each rule does per batch, and the shapes readouts give."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from nets import F64, chain, examples, hybrid, one_hot, randn, rel_err, seeded
from pclab.core import (
    PCN,
    SGD,
    Adam,
    Backprop,
    BPThroughInference,
    CrossEntropy,
    Gaussian,
    IncrementalPC,
    Inference,
    Node,
    PCLearning,
    TaskLoss,
    classify,
    generate,
    reconstruct,
    relax,
)


def counted(optimizer: torch.optim.Optimizer) -> list[int]:
    calls = [0]
    optimizer.register_step_post_hook(lambda opt, args, kwargs: calls.__setitem__(0, calls[0] + 1))
    return calls


@pytest.mark.parametrize("steps", [1, 4, 7])
def test_incremental_pc_takes_one_weight_step_per_inference_step(steps):
    """iPC makes ``T`` parameter-optimiser steps per batch (PC learning makes one)."""
    model = chain([3, 4, 2], "tanh", seed=0)
    batch = {"x": randn(4, 3, seed=1), "y": randn(4, 2, seed=2)}
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    calls = counted(optimizer)
    IncrementalPC(model, Inference(steps=steps, optimizer=SGD(lr=0.1)), optimizer).step(batch)
    assert calls[0] == steps
    pc_optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    pc_calls = counted(pc_optimizer)
    PCLearning(model, Inference(steps=steps, optimizer=SGD(lr=0.1)), pc_optimizer).step(batch)
    assert pc_calls[0] == 1


def test_incremental_pc_weight_steps_use_the_current_latents():
    """iPC's step t descends dE/dtheta at the state before latent update t: with T = 1 it is PC
    learning at the initial state (T = 0), and with T = 2 the second step sees moved latents."""
    batch = {"x": randn(4, 3, seed=3), "y": randn(4, 2, seed=4)}

    def train(rule_cls, steps):
        model = chain([3, 4, 2], "tanh", seed=5)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        rule_cls(model, Inference(steps=steps, optimizer=SGD(lr=0.2)), optimizer).step(batch)
        return [p.detach().clone() for p in model.parameters()]

    for a, b in zip(train(IncrementalPC, 1), train(PCLearning, 0)):
        assert torch.equal(a, b)

    model = chain([3, 4, 2], "tanh", seed=5)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    states = []
    original = model.energy

    def spy(values, clamped, sources=None):
        states.append({n: v.clone() for n, v in values.items()})
        return original(values, clamped, sources)

    model.energy = spy  # the general loop calls it (the Dense-chain path has its own, tested below)
    IncrementalPC(model, Inference(steps=2, optimizer=SGD(lr=0.2), method="manual"), optimizer).step(batch)
    assert len(states) == 2
    assert not torch.equal(states[0]["h1"], states[1]["h1"])


@pytest.mark.parametrize("case", ["sgd", "momentum-spiking", "adam-ce-decaying"])
def test_incremental_pc_on_the_chain_path_equals_the_general_loop(case):
    """:func:`pclab.core.fast.chain.incremental` (hand-derived, no autograd) against the general loop
    (``relax(..., on_step=...)``, autograd weight gradients) over three batches: latent SGD,
    heavy-ball SGD with the spiking schedule, latent Adam with a cross-entropy label and the
    decaying schedule; parameter Adam throughout."""
    from pclab.core import Decaying, Spiking
    from pclab.core.fast import path

    runs = []
    latent, precision, output = {
        "sgd": (SGD(lr=0.1), None, None),
        "momentum-spiking": (SGD(lr=0.1, momentum=0.5), Spiking(0.05), None),
        "adam-ce-decaying": (Adam(lr=0.05), Decaying(0.3), CrossEntropy()),
    }[case]
    rules = []
    for method in ("auto", "manual"):
        model = chain([5, 6, 4, 3], ["tanh", "gelu", "identity"], output=output, seed=21)
        extra = {} if precision is None else {"precision": precision}
        inference = Inference(steps=4, optimizer=latent, method=method, **extra)
        rules.append(IncrementalPC(model, inference, torch.optim.Adam(model.parameters(), lr=0.01)))
    fast, general = rules
    for k in range(3):
        y = one_hot(torch.tensor([0, 2, 1, 1]), 3) if output is not None else randn(4, 3, seed=30 + k)
        batch = {"x": randn(4, 5, seed=20 + k), "y": y}
        runs.append(path(fast.model, fast.inference, fast, batch))
        assert path(general.model, general.inference, general, batch) == "reference"
        assert fast.step(batch)["energy"] == pytest.approx(general.step(batch)["energy"], rel=1e-10)
        for p, q in zip(fast.model.parameters(), general.model.parameters()):
            assert rel_err(p.detach(), q.detach()) < 1e-10
    assert runs == ["chain"] * 3  # every batch of the "auto" rule took the chain path


@pytest.mark.parametrize("forward_update", [False, True], ids=["relaxed_presynaptic", "forward_update"])
@pytest.mark.parametrize("fixed_prediction", [False, True], ids=["relaxed_predictions", "fixed_prediction"])
def test_pc_learning_is_the_gradient_of_the_relaxed_energy(fixed_prediction, forward_update):
    """One PC step with parameter SGD (lr) moves theta by ``-lr * dE/dtheta`` at the relaxed state
    (``PCN.energy`` at the relaxed values); with ``forward_update`` the presynaptic values are the
    feed-forward ones. How the latents were relaxed (fixed prediction or not) does not change
    which energy the weights descend."""
    batch = {"x": randn(4, 3, seed=6), "y": randn(4, 2, seed=7)}
    inference = Inference(steps=10, optimizer=SGD(lr=0.2), fixed_prediction=fixed_prediction)
    model = chain([3, 5, 4, 2], "gelu", seed=8)
    relaxed = relax(model, batch, inference)
    sources = {n: relaxed.initial[n] for n in ("h1", "h2")} if forward_update else None
    expected = torch.autograd.grad(model.energy(relaxed.values, relaxed.clamped, sources), list(model.parameters()))
    before = [p.detach().clone() for p in model.parameters()]
    PCLearning(model, inference, torch.optim.SGD(model.parameters(), lr=0.5), forward_update=forward_update).step(batch)
    for b, p, g in zip(before, model.parameters(), expected):
        assert rel_err((b - p.detach()) / 0.5, g) < 1e-12


@st.composite
def pc_learning_setups(draw):
    layers = draw(st.integers(1, 4))
    widths = draw(st.lists(st.integers(1, 6), min_size=layers + 1, max_size=layers + 1))
    acts = draw(st.lists(st.sampled_from(["identity", "tanh", "sigmoid", "gelu", "leaky_relu"]), min_size=layers, max_size=layers))
    seed = draw(st.integers(0, 2**16))
    cross_entropy = draw(st.booleans())
    if cross_entropy:
        widths[-1] = max(2, widths[-1])
    output = CrossEntropy() if cross_entropy else Gaussian(draw(st.sampled_from([1.0, 0.5])))
    model = chain(widths, acts, output=output, hidden_precision=[draw(st.sampled_from([1.0, 2.0]))] * (layers - 1), seed=seed)
    batch = {"x": randn(4, widths[0], seed=seed + 1)}
    if draw(st.booleans()):
        y = randn(4, widths[-1], seed=seed + 2)
        batch["y"] = torch.softmax(y, dim=1) if cross_entropy else y
    inference = Inference(
        steps=draw(st.integers(0, 6)),
        optimizer=draw(st.sampled_from([SGD(lr=0.1), SGD(lr=0.05, momentum=0.5, nesterov=True), Adam(lr=0.05)])),
        fixed_prediction=draw(st.booleans()),
    )
    return model, batch, inference, draw(st.booleans())


@examples(40)
@given(pc_learning_setups())
def test_pc_learning_step_descends_the_gradient_of_its_weight_energy(setup):
    """``PCLearning.step`` (with any fast path it takes) moves the parameters by
    ``-lr * d weight_energy / d theta`` at the relaxed state of the reference (autograd) path."""
    model, batch, inference, forward_update = setup
    if "y" not in batch:  # from the feed-forward start nothing has an error: refused, not a silent no-op
        with pytest.raises(ValueError, match="expected the batch to clamp a node that has a prediction"):
            PCLearning(model, inference, torch.optim.SGD(model.parameters(), lr=0.5), forward_update=forward_update).step(batch)
        return
    reference_inference = Inference(
        steps=inference.steps, optimizer=inference.optimizer, fixed_prediction=inference.fixed_prediction, method="autograd",
    )
    lr = 0.5
    reference_rule = PCLearning(model, reference_inference, torch.optim.SGD(model.parameters(), lr=lr), forward_update=forward_update)
    params = list(model.parameters())
    energy = reference_rule.weight_energy(relax(model, batch, reference_inference))
    found = torch.autograd.grad(energy, params, allow_unused=True) if energy.requires_grad else [None] * len(params)
    expected = [torch.zeros_like(p) if g is None else g for p, g in zip(params, found)]
    before = [p.detach().clone() for p in params]
    metrics = PCLearning(model, inference, torch.optim.SGD(params, lr=lr), forward_update=forward_update).step(batch)
    assert metrics["energy"] == pytest.approx(float(energy.detach()), rel=1e-10, abs=1e-14)
    for b, p, g in zip(before, params, expected):
        assert float(((b - p.detach()) / lr - g).norm()) <= 1e-10 * float(g.norm()) + 1e-14


@pytest.mark.parametrize("rule_cls", [PCLearning, IncrementalPC])
@pytest.mark.parametrize("method", ["auto", "autograd"])
def test_pc_rules_on_a_batch_without_energy_refuse_it_and_leave_the_parameters_unchanged(rule_cls, method):
    """Only the input of a one-layer classifier clamped: the released label is a read-out, no
    node has energy, a step would learn nothing: refused, naming the missing label (whichever path)."""
    model = chain([3, 4], "identity", output=CrossEntropy(), seed=20)
    before = [p.detach().clone() for p in model.parameters()]
    rule = rule_cls(model, Inference(steps=2, method=method), torch.optim.SGD(model.parameters(), lr=0.1))
    with pytest.raises(ValueError, match=rf"{rule_cls.__name__}.step: expected the batch to clamp a node that has a prediction, e.g. \['y'\]"):
        rule.step({"x": randn(5, 3, seed=21)})
    for b, p in zip(before, model.parameters()):
        assert torch.equal(b, p.detach())


def test_backprop_rule_is_the_task_loss_of_the_feed_forward_pass():
    model = chain([3, 5, 4], "tanh", output=CrossEntropy(), seed=9)
    batch = {"x": randn(6, 3, seed=10), "y": torch.tensor([0, 1, 3, 2, 1, 0])}
    rule = Backprop(model, torch.optim.SGD(model.parameters(), lr=0.1), TaskLoss(classify={"y": 1.0}), clamp=("x",))
    loss, parts = rule.objective(batch)
    h = model.module("x", "h1")(batch["x"])
    expected = torch.nn.functional.cross_entropy(model.module("h1", "y")(h), batch["y"])
    assert torch.equal(loss, expected)
    assert parts == {"ce_y": pytest.approx(float(expected.detach()))}


def test_task_loss_mix_weights_reconstruction_and_classification():
    """``TaskLoss.mix(lam) = (1 - lam) MSE(image) + lam CE(label)``; it validates its weights."""
    model = hybrid(image=6, latent=3, classes=4, seed=11)
    batch = {"x": randn(5, 6, seed=12), "y": torch.tensor([0, 3, 1, 2, 1])}
    values = model.initial_state({"x": batch["x"]})
    mse = torch.nn.functional.mse_loss(model.predictions(values)["x"], batch["x"])
    ce = torch.nn.functional.cross_entropy(model.predictions(values)["y"], batch["y"])
    loss, parts = TaskLoss.mix(0.25)(model, values, batch)
    assert float(loss.detach()) == pytest.approx(float((0.75 * mse + 0.25 * ce).detach()), rel=1e-14)
    assert set(parts) == {"mse_x", "ce_y"}
    with pytest.raises(ValueError, match="lam"):
        TaskLoss.mix(1.5)
    with pytest.raises(ValueError, match="at least one"):
        TaskLoss()


def test_backprop_rules_refuse_bad_clamps_and_targets():
    model = hybrid(seed=13)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(TypeError, match="sequence of node names"):
        Backprop(model, opt, TaskLoss.mix(0.5), clamp="x")
    with pytest.raises(ValueError, match="unknown node 'q'"):
        Backprop(model, opt, TaskLoss(classify={"q": 1.0}), clamp=("x",))
    with pytest.raises(ValueError, match="has no prediction"):
        Backprop(
            PCN([Node("x", (2,)), Node("y", (2,))], [("x", "y", nn.Linear(2, 2))]),
            opt, TaskLoss(reconstruct={"x": 1.0}), clamp=("x",),
        )
    rule = BPThroughInference(model, Inference(steps=2), opt, TaskLoss.mix(0.5), clamp=("x",))
    with pytest.raises(ValueError, match=r"batch lacks entries \['y'\]"):
        rule.objective({"x": randn(2, 6, seed=14)})


# --------------------------------------------------------------------------- read-outs


def image_model(seed: int = 0) -> PCN:
    """Hybrid model on 1x4x4 images: encoder (amortiser) x -> z, decoder z -> x, head z -> y."""
    with seeded(seed):
        return PCN(
            [Node("x", (1, 4, 4)), Node("z", (3,)), Node("y", (5,), CrossEntropy())],
            edges=[
                ("z", "x", nn.Sequential(nn.Linear(3, 16), nn.Tanh(), nn.Unflatten(1, (1, 4, 4)))),
                ("z", "y", nn.Linear(3, 5)),
            ],
            amortisers=[("x", "z", nn.Sequential(nn.Flatten(), nn.Linear(16, 3)))],
        ).to(F64)


def test_readouts_classify_reconstruct_and_generate_have_the_documented_shapes():
    model = image_model(seed=15)
    x = randn(7, 1, 4, 4, seed=16)
    inference = Inference(steps=5, optimizer=SGD(lr=0.1))
    logits = classify(model, x)
    assert logits.shape == (7, 5)
    expected = model.module("z", "y")(model.amortiser_modules["x_to_z"](x))
    assert torch.allclose(logits, expected, rtol=0, atol=1e-15)
    relaxed_logits = classify(model, x, inference)
    assert relaxed_logits.shape == (7, 5) and not torch.equal(relaxed_logits, logits)
    assert reconstruct(model, x, inference).shape == (7, 1, 4, 4)
    images = generate(model, {"y": one_hot(torch.arange(7) % 5, 5)}, inference)
    assert images.shape == (7, 1, 4, 4)
    assert not any(t.requires_grad for t in (logits, relaxed_logits, images))
    with pytest.raises(ValueError, match="do not clamp it"):
        generate(model, {"x": x}, inference)


def test_generation_moves_the_latent_towards_the_clamped_label():
    """With only the label clamped, relaxation lowers the label's cross-entropy energy."""
    model = image_model(seed=17)
    label = one_hot(torch.tensor([0, 4, 2]), 5)
    relaxed = relax(model, {"y": label}, Inference(steps=30, optimizer=SGD(lr=0.2)), record=True)
    energy = relaxed.trajectory.energy
    y = relaxed.trajectory.nodes.index("y")
    assert energy[-1][y] < energy[0][y]
