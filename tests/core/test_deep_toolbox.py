"""The deep-PCN toolbox: precision schedules, forward update, residual modules, auxiliary skip
nodes, weight-phase BatchNorm, muPC scalings."""

from __future__ import annotations

import math

import pytest
import torch

from pclab.core import PCN, SGD, Constant, Decaying, Dense, Gaussian, Inference, Node, PCLearning, Spiking, relax
from pclab.core.batchnorm import PhasedBatchNorm, WeightPhasePCLearning, weight_phase
from pclab.core.residual import Identity, ResidualDense, ScaledDense
from pclab.models.deep import deep_mlp, mupc_scalings, residual_mlp, vgg_bn


@pytest.fixture(autouse=True)
def _float64():
    """Exact comparisons in double precision, restored afterwards (other test files use float32)."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


def _chain(depth: int = 4, width: int = 6) -> PCN:
    return deep_mlp(5, width, depth, 3, "tanh", "gaussian")


def _batch(n: int = 7, inputs: int = 5, classes: int = 3, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"x": torch.randn(n, inputs, generator=g), "y": torch.nn.functional.one_hot(torch.arange(n) % classes, classes).double()}


# ------------------------------------------------------------------ precision schedules
def test_spiking_precision_is_one_on_the_error_front_and_alpha_elsewhere():
    s, n = Spiking(alpha=1e-3), 5
    table = [[s(t, l, n) for l in range(n)] for t in range(n + 2)]
    for t, row in enumerate(table):
        for l, value in enumerate(row):
            assert value == (1.0 if t == n - l - 1 else 1e-3)
    assert table[0][n - 1] == 1.0 and table[n - 1][0] == 1.0  # output first, input side last


def test_decaying_precision_is_zero_before_arrival_then_decays_exponentially():
    s, n, k = Decaying(k=0.5), 4, 0.5
    for l in range(n):
        arrival = n - l - 1
        for t in range(8):
            expected = 0.0 if t < arrival else math.exp(-k * (t - arrival))
            assert s(t, l, n) == pytest.approx(expected, abs=0)


def test_constant_precision_is_the_same_everywhere():
    assert {Constant(0.3)(t, l, 6) for t in range(6) for l in range(6)} == {0.3}


def test_inference_applies_the_schedule_by_the_layer_index_of_each_node():
    model = _chain(depth=4)
    assert [model.layer_index[n] for n in model.error_nodes] == [0, 1, 2, 3]
    inference = Inference(steps=4, precision=Spiking(0.01))
    for t in range(4):
        m = inference.multipliers(model, t)
        assert m == {n: (1.0 if t == 4 - model.layer_index[n] - 1 else 0.01) for n in model.error_nodes}


def test_spiking_schedule_changes_the_relaxation_energies_step_by_step():
    model = _chain(depth=4)
    relaxed = relax(model, _batch(), Inference(steps=4, optimizer=SGD(0.1), precision=Spiking(0.0)), record=True)
    energy = torch.tensor(relaxed.trajectory.energy)  # (T+1, nodes), precision-weighted
    for t in range(4):  # at step t only layer N - t - 1 carries energy (alpha = 0)
        carrying = [i for i in range(4) if energy[t, i] != 0]
        assert carrying in ([4 - t - 1], [])


# ------------------------------------------------------------------ forward update
def _weight_grads(model: PCN, energy: torch.Tensor) -> list[torch.Tensor]:
    return [g.clone() for g in torch.autograd.grad(energy, list(model.parameters()))]


def _hand_weight_grads(model: PCN, targets: dict, presynaptic: dict) -> list[torch.Tensor]:
    """Gradient of sum_l 1/2 ||z_l - f_l(p_{l-1})||^2 (batch mean) with ``z = targets``, ``p = presynaptic``."""
    chain = ["x", "h1", "h2", "h3", "y"]
    energy = sum(0.5 * ((targets[b] - model.module(a, b)(presynaptic[a])) ** 2).sum(1).mean() for a, b in zip(chain[:-1], chain[1:]))
    return _weight_grads(model, energy)


@pytest.mark.parametrize("path", ["weight_energy", "step"])
def test_forward_update_uses_the_feed_forward_presynaptic_values(path):
    torch.manual_seed(0)
    model, batch = _chain(depth=4), _batch()
    inference = Inference(steps=6, optimizer=SGD(0.2))
    rule = PCLearning(model, inference, torch.optim.SGD(model.parameters(), lr=0.0), forward_update=True)
    relaxed = relax(model, batch, inference)
    if path == "weight_energy":
        got = _weight_grads(model, rule.weight_energy(relaxed))
    else:  # the rule's own step (it may take a fast path); lr 0 leaves the weights, .grad holds the update
        rule.step(batch)
        got = [p.grad.clone() for p in model.parameters()]
    with torch.no_grad():
        h0 = model.initial_state(batch, "forward")
    z = {n: v.detach() for n, v in relaxed.values.items()}
    # E_W = sum_l 1/2 ||z_l - f_l(h0_{l-1})||^2, z relaxed, h0 the feed-forward pass
    for g, e in zip(got, _hand_weight_grads(model, z, h0)):
        torch.testing.assert_close(g, e)
    # a rule that used the relaxed presynaptic values would differ
    other = _hand_weight_grads(model, z, z)
    assert any(not torch.allclose(g, o) for g, o in zip(got, other))


# ------------------------------------------------------------------ residual modules
@pytest.mark.parametrize("module", [
    Identity(), ScaledDense(5, 4, 0.3, "relu"), ScaledDense(5, 4, 2.0, "identity", bias=True),
    ScaledDense(5, 4, 0.7, "tanh", init="normal"), ResidualDense(5, 0.2, "gelu", bias=True), ResidualDense(5, 1.0, "relu"),
])
def test_forward_with_vjp_matches_autograd(module):
    module = module.double()  # built at collection time, in float32
    torch.manual_seed(1)
    z = torch.randn(6, 5, requires_grad=True)
    mu, vjp = module.forward_with_vjp(z)
    torch.testing.assert_close(mu, module(z))
    g = torch.randn_like(mu)
    (expected,) = torch.autograd.grad(module(z), z, g)
    torch.testing.assert_close(vjp(g), expected)


def test_mupc_scalings_follow_jpc():
    s = mupc_scalings(784, 128, 30)
    assert s.input == pytest.approx(1 / math.sqrt(784))
    assert s.hidden == pytest.approx(1 / math.sqrt(128 * 30))
    assert s.output == pytest.approx(1 / 128)
    net = residual_mlp(784, 128, 30, 10)
    assert net.num_layers == 30
    assert net.module("h1", "h2").scale == pytest.approx(s.hidden)
    assert net.module("x", "h1").linear.weight.std().item() == pytest.approx(1.0, abs=0.05)


def test_auxiliary_skip_nodes_leave_the_feed_forward_function_unchanged():
    torch.manual_seed(0)
    plain = residual_mlp(5, 6, 5, 3, parameterisation="standard")
    delayed = residual_mlp(5, 6, 5, 3, parameterisation="standard", skip_delay=2)
    for name, module in plain.edge_modules.items():
        target = delayed.edge_modules[name]
        target.load_state_dict(module.state_dict())
    x = _batch()["x"]
    torch.testing.assert_close(plain({"x": x})["y"], delayed({"x": x})["y"])


def _first_move(model: PCN, node: str, steps: int = 12) -> int:
    """Steps of relaxation until ``node`` first leaves its feed-forward value."""
    relaxed = relax(model, _batch(inputs=5), Inference(steps=steps, optimizer=SGD(0.5)), record=True)
    column = relaxed.trajectory.free.index(node)
    return next(t for t, row in enumerate(relaxed.trajectory.drift) if row[column] > 0)


@pytest.mark.parametrize("delay", [1, 2, 3])
def test_auxiliary_skip_nodes_delay_the_skip_signal_by_the_intended_steps(delay):
    torch.manual_seed(0)
    nets = {k: residual_mlp(5, 6, 5, 3, parameterisation="standard", skip_delay=k) for k in (0, delay)}
    for net in nets.values():  # silence the branches: only the skips carry error downwards
        for i in range(1, 4):
            module = net.module(f"h{i}", f"h{i + 1}")
            module.linear.weight.data.zero_()
    # y's error moves h4 after 1 step; through the skips h3 then h2 follow, each ``delay`` steps later
    base = {n: _first_move(nets[0], n) for n in ("h4", "h3", "h2")}
    assert base == {"h4": 1, "h3": 2, "h2": 3}
    late = {n: _first_move(nets[delay], n) for n in ("h4", "h3", "h2")}
    assert late == {"h4": 1, "h3": 2 + delay, "h2": 3 + 2 * delay}


# ------------------------------------------------------------------ weight-phase BatchNorm
def _bn_net() -> PCN:
    torch.manual_seed(0)
    return PCN(
        [Node("x", (5,)), Node("h", (4,)), Node("y", (3,), Gaussian())],
        [("x", "h", torch.nn.Sequential(torch.nn.Linear(5, 4), PhasedBatchNorm(4), torch.nn.Tanh())), ("h", "y", Dense(4, 3))],
    )


def test_batchnorm_statistics_do_not_move_during_relaxation():
    net = _bn_net()
    bn = net.module("x", "h")[1]
    relax(net, _batch(), Inference(steps=5, optimizer=SGD(0.1)))
    assert int(bn.num_batches_tracked) == 0
    torch.testing.assert_close(bn.running_mean, torch.zeros(4))
    torch.testing.assert_close(bn.running_var, torch.ones(4))


def test_batchnorm_statistics_update_once_per_batch_in_the_weight_phase():
    net = _bn_net()
    bn = net.module("x", "h")[1]
    rule = WeightPhasePCLearning(net, Inference(steps=5, optimizer=SGD(0.1)), torch.optim.SGD(net.parameters(), lr=0.01))
    batch = _batch()
    pre = net.module("x", "h")[0](batch["x"]).detach()  # the weight phase sees the weights before the step
    rule.step(batch)
    assert int(bn.num_batches_tracked) == 1
    torch.testing.assert_close(bn.running_mean, 0.1 * pre.mean(0), atol=1e-6, rtol=0)
    assert bn.phase == "relax"


def test_batchnorm_uses_batch_statistics_in_training_and_running_ones_in_eval():
    bn = PhasedBatchNorm(3)
    x = torch.randn(20, 3) * 3 + 1
    y = bn(x)
    torch.testing.assert_close(y.mean(0), torch.zeros(3), atol=1e-6, rtol=0)
    with weight_phase(bn):
        bn(x)
    bn.eval()
    torch.testing.assert_close(bn(x), (x - bn.running_mean) / torch.sqrt(bn.running_var + bn.eps))


def test_vgg_bn_builds_and_relaxes():
    net = vgg_bn(depth=3, image_shape=(1, 8, 8), classes=3, width=4)
    x = torch.rand(4, 1, 8, 8)
    y = torch.nn.functional.one_hot(torch.arange(4) % 3, 3).double()
    out = relax(net.double(), {"x": x, "y": y}, Inference(steps=3, optimizer=SGD(0.1)))
    assert set(out.values) == {"x", "h1", "h2", "y"}
