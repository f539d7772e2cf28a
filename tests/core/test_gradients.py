"""dE/dz and dE/dtheta against central finite differences, and the two latent-gradient paths
(hand-derived VJPs and autograd) against each other.

Conventions checked: ``PCN.latent_grads`` returns the gradient of each sample's own energy
(so, summed over the batch, the gradient of the batch *sum*); ``PCN.energy`` is the batch
*mean*, the objective of the weight updates.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from nets import (
    ALL_ACTIVATIONS,
    F64,
    AutogradVjp,
    central_difference,
    chain,
    one_hot,
    randn,
    rel_err,
    seeded,
    some_indices,
)
from pclab.core import PCN, CrossEntropy, Decaying, Dense, Gaussian, Inference, Node, Spiking, free_nodes

FD_TOL = 1e-6
EXACT_TOL = 1e-10


def perturbed_state(model: PCN, clamp: dict[str, torch.Tensor], seed: int, scale: float = 0.5) -> dict[str, torch.Tensor]:
    """Feed-forward state with the free nodes moved off it (so every error is non-zero)."""
    with torch.no_grad():
        values = model.initial_state(clamp, "forward")
    free = free_nodes(model, frozenset(clamp))
    for i, n in enumerate(free):
        values[n] = values[n] + scale * randn(*values[n].shape, seed=seed + 17 * i)
    return values


def total_energy_sum(model: PCN, values, clamped, multipliers=None) -> torch.Tensor:
    """Sum over the batch of each sample's energy: what ``latent_grads`` differentiates."""
    energies = model.energies(values, clamped, multipliers=multipliers)
    return torch.stack(list(energies.values())).sum()


def assert_latent_grads_match_fd(model: PCN, values, clamped, method: str, multipliers=None) -> None:
    free = free_nodes(model, frozenset(clamped))
    grads, _ = model.latent_grads(values, free, clamped, multipliers=multipliers, method=method)
    for n in free:
        fd = torch.zeros_like(values[n])
        z = values[n]
        for idx in some_indices(z.shape, 40, seed=len(n)):
            fd[idx] = central_difference(lambda: total_energy_sum(model, values, clamped, multipliers), z, idx)
        mask = fd != 0
        assert rel_err(grads[n][mask], fd[mask]) < FD_TOL, f"dE/d{n} ({method})"


def assert_param_grads_match_fd(model: PCN, values, clamped) -> None:
    params = dict(model.named_parameters())
    energy = model.energy(values, clamped)
    grads = dict(zip(params, torch.autograd.grad(energy, list(params.values()))))
    for i, (name, p) in enumerate(params.items()):
        idxs = some_indices(p.shape, 6, seed=i)
        fd = torch.tensor([central_difference(lambda: model.energy(values, clamped), p.data, idx) for idx in idxs], dtype=F64)
        auto = torch.stack([grads[name][idx] for idx in idxs])
        assert rel_err(auto, fd) < FD_TOL, f"dE/d{name}"


# --------------------------------------------------------------------------- dense nodes


@pytest.mark.parametrize("method", ["manual", "autograd"])
@pytest.mark.parametrize("act", ALL_ACTIVATIONS)
def test_dense_latent_grads_match_finite_differences(act, method):
    """dE/dz of Gaussian nodes with precision != 1 on a dense chain, per activation."""
    model = chain([3, 5, 4, 2], act, output=Gaussian(0.5), hidden_precision=[2.5, 0.3], seed=1)
    clamp = {"x": randn(4, 3, seed=2), "y": randn(4, 2, seed=3)}
    values = perturbed_state(model, clamp, seed=4)
    assert_latent_grads_match_fd(model, values, set(clamp), method)


@pytest.mark.parametrize("act", ALL_ACTIVATIONS)
def test_dense_weight_grads_match_finite_differences(act):
    """dE/dtheta (autograd of the batch-mean energy) on a dense chain, per activation."""
    model = chain([3, 5, 4, 2], act, output=Gaussian(0.5), hidden_precision=[2.5, 0.3], seed=5)
    clamp = {"x": randn(4, 3, seed=6), "y": randn(4, 2, seed=7)}
    values = perturbed_state(model, clamp, seed=8)
    assert_param_grads_match_fd(model, values, set(clamp))


@pytest.mark.parametrize("method", ["manual", "autograd"])
@pytest.mark.parametrize("soft", [False, True], ids=["one_hot", "soft_label"])
def test_cross_entropy_label_node_grads_match_finite_differences(method, soft):
    """A clamped CE label node (precision 0.7): latent and weight gradients by finite differences,
    for one-hot and for soft (unnormalised) label values."""
    model = chain([3, 5, 4, 4], "gelu", output=CrossEntropy(0.7), hidden_precision=[1.5, 1.0], seed=9)
    if soft:
        label = torch.rand(5, 4, generator=torch.Generator().manual_seed(10), dtype=F64)
    else:
        label = one_hot(torch.tensor([0, 3, 1, 2, 3]), 4)
    clamp = {"x": randn(5, 3, seed=11), "y": label}
    values = perturbed_state(model, clamp, seed=12)
    assert_latent_grads_match_fd(model, values, set(clamp), method)
    assert_param_grads_match_fd(model, values, set(clamp))


# --------------------------------------------------------------------------- conv nodes


def conv_discriminative(wrap: bool, seed: int = 0) -> PCN:
    """Image ``x (1,6,6)`` -conv+tanh-> ``h (2,4,4)`` -flatten+linear-> label ``y (3,)`` (CE)."""
    w = AutogradVjp if wrap else (lambda m: m)
    with seeded(seed):
        return PCN(
            [Node("x", (1, 6, 6)), Node("h", (2, 4, 4), Gaussian(1.7)), Node("y", (3,), CrossEntropy(0.8))],
            [
                ("x", "h", w(nn.Sequential(nn.Conv2d(1, 2, 3), nn.Tanh()))),
                ("h", "y", w(nn.Sequential(nn.Flatten(), nn.Linear(32, 3)))),
            ],
        ).to(F64)


def conv_generative(wrap: bool, seed: int = 0) -> PCN:
    """Label ``c (3,)`` -linear-> latent ``z (2,3,3)`` -conv-transpose+sigmoid-> image ``x (1,5,5)``."""
    w = AutogradVjp if wrap else (lambda m: m)
    with seeded(seed):
        return PCN(
            [Node("c", (3,)), Node("z", (2, 3, 3), Gaussian(0.6)), Node("x", (1, 5, 5), Gaussian(2.0))],
            [
                ("c", "z", w(nn.Sequential(nn.Linear(3, 18), nn.Unflatten(1, (2, 3, 3))))),
                ("z", "x", w(nn.Sequential(nn.ConvTranspose2d(2, 1, 3), nn.Sigmoid()))),
            ],
        ).to(F64)


def conv_cases():
    disc_clamp = {"x": randn(3, 1, 6, 6, seed=20), "y": one_hot(torch.tensor([2, 0, 1]), 3)}
    gen_clamp = {"c": one_hot(torch.tensor([1, 2, 0]), 3), "x": torch.rand(3, 1, 5, 5, generator=torch.Generator().manual_seed(21), dtype=F64)}
    return {"conv2d": (conv_discriminative, disc_clamp), "conv_transpose2d": (conv_generative, gen_clamp)}


@pytest.mark.parametrize("case", ["conv2d", "conv_transpose2d"])
def test_conv_latent_and_weight_grads_match_finite_differences(case):
    """Conv2d+tanh (discriminative) and ConvTranspose2d+sigmoid (generative) edges: dE/dz by
    autograd and dE/dtheta match finite differences."""
    build, clamp = conv_cases()[case]
    model = build(wrap=False, seed=22)
    assert not model.fast
    values = perturbed_state(model, clamp, seed=23)
    assert_latent_grads_match_fd(model, values, set(clamp), "autograd")
    assert_param_grads_match_fd(model, values, set(clamp))


@pytest.mark.parametrize("case", ["conv2d", "conv_transpose2d"])
def test_manual_latent_grads_on_conv_nodes_match_autograd(case):
    """The manual path (edges supplying ``forward_with_vjp``) on multi-dimensional conv nodes."""
    build, clamp = conv_cases()[case]
    model = build(wrap=True, seed=24)
    assert model.fast
    values = perturbed_state(model, clamp, seed=25)
    free = free_nodes(model, frozenset(clamp))
    manual, e_manual = model.latent_grads(values, free, set(clamp), method="manual")
    auto, e_auto = model.latent_grads(values, free, set(clamp), method="autograd")
    for n in free:
        assert rel_err(manual[n], auto[n]) < EXACT_TOL
    assert set(e_manual) == set(e_auto)
    for n in e_auto:
        assert rel_err(e_manual[n], e_auto[n]) < EXACT_TOL


# --------------------------------------------------------------------------- manual vs autograd


def dag_model(seed: int = 0) -> PCN:
    """A DAG with a skip edge (``y`` has two incoming edges) and a free top latent ``r``."""
    with seeded(seed):
        return PCN(
            [Node("r", (2,)), Node("x", (3,)), Node("h1", (4,), Gaussian(1.3)), Node("h2", (5,)), Node("y", (3,), Gaussian(0.4))],
            [
                ("r", "h1", Dense(2, 4, "sigmoid")),
                ("x", "h1", Dense(3, 4, "tanh")),
                ("h1", "h2", Dense(4, 5, "gelu")),
                ("h2", "y", Dense(5, 3, "silu")),
                ("h1", "y", Dense(4, 3, "leaky_relu")),
            ],
        ).to(F64)


def assert_paths_agree(model, values, free, clamped, multipliers=None, sources=None) -> None:
    manual, e_manual = model.latent_grads(values, free, clamped, multipliers, sources, method="manual")
    auto, e_auto = model.latent_grads(values, free, clamped, multipliers, sources, method="autograd")
    for n in free:
        assert rel_err(manual[n], auto[n]) < EXACT_TOL, f"dE/d{n}: manual vs autograd"
    for n in e_auto:
        assert rel_err(e_manual[n], e_auto[n]) < EXACT_TOL, f"energy of {n}"


@pytest.mark.parametrize(
    "schedule",
    [Spiking(alpha=0.0), Spiking(alpha=0.05), Decaying(k=0.7), "per_node"],
    ids=["spiking0", "spiking0.05", "decaying0.7", "per_node_mapping"],
)
def test_manual_and_autograd_latent_grads_agree_under_precision_schedules(schedule):
    """Hand-derived and autograd dE/dz agree to 1e-10 (float64) with the precision multipliers a
    schedule gives at every step, on a DAG with a skip edge."""
    model = dag_model(seed=30)
    if schedule == "per_node":
        schedule = {"h1": Decaying(k=0.3), "y": Spiking(alpha=0.2)}
    inference = Inference(precision=schedule)
    clamp = {"x": randn(4, 3, seed=31), "y": randn(4, 3, seed=32)}
    values = perturbed_state(model, clamp, seed=33)
    free = free_nodes(model, frozenset(clamp))
    assert set(free) == {"r", "h1", "h2"}
    for t in range(model.num_layers + 2):
        assert_paths_agree(model, values, free, set(clamp), multipliers=inference.multipliers(model, t))


def fixed_prediction_reference(model: PCN, values, sources, free, clamped):
    """dE/dz under the fixed-prediction assumption, from its definition: predictions (and their
    Jacobians) are evaluated at ``sources``, so
    ``dE/dz_n = pi_n (z_n - mu_n(s)) + sum_{n -> m} J_{m,n}(s)^T dE_m/dmu_m``.
    Computed with separate leaves for the values ``z`` and the sources ``s``."""
    with torch.enable_grad():
        z = {n: values[n].detach().requires_grad_(n in free) for n in values}
        s = {n: sources[n].detach().requires_grad_(True) for n in sources}
        mu = model.predictions({**z, **s})
        total = torch.stack(list(model.energies(z, clamped, mu).values())).sum()
        gz = torch.autograd.grad(total, [z[n] for n in free], retain_graph=True, allow_unused=True)
        gs = torch.autograd.grad(total, [s[n] for n in free], allow_unused=True)
    out = {}
    for n, a, b in zip(free, gz, gs):
        out[n] = (torch.zeros_like(values[n]) if a is None else a) + (0 if b is None else b)
    return out


def test_manual_and_autograd_latent_grads_agree_with_a_fixed_prediction_sources_override():
    """With a ``sources`` override (fixed prediction), both gradient paths give the documented
    fixed-prediction gradient: errors at the current values, Jacobians at the sources."""
    model = dag_model(seed=40)
    clamp = {"x": randn(4, 3, seed=41), "y": randn(4, 3, seed=42)}
    initial = model.initial_state(clamp, "forward")
    values = perturbed_state(model, clamp, seed=43)
    free = free_nodes(model, frozenset(clamp))
    sources = {n: initial[n] for n in free}
    reference = fixed_prediction_reference(model, values, sources, free, set(clamp))
    for method in ("manual", "autograd"):
        grads, _ = model.latent_grads(values, free, set(clamp), sources=sources, method=method)
        for n in free:
            assert rel_err(grads[n], reference[n]) < EXACT_TOL, f"dE/d{n} ({method}) under fixed prediction"
    assert_paths_agree(model, values, free, set(clamp), sources=sources)


def test_latent_grads_are_per_sample():
    """Each sample's latent gradient is that of its own energy: it does not change when other
    samples are added to the batch (relaxation step sizes do not depend on the batch size)."""
    model = chain([3, 4, 2], "tanh", seed=50)
    clamp = {"x": randn(6, 3, seed=51), "y": randn(6, 2, seed=52)}
    values = perturbed_state(model, clamp, seed=53)
    full, _ = model.latent_grads(values, ["h1"], set(clamp))
    part, _ = model.latent_grads({n: v[:2] for n, v in values.items()}, ["h1"], set(clamp))
    assert torch.allclose(full["h1"][:2], part["h1"], rtol=0, atol=1e-14)


def test_curvature_table_is_the_second_derivative_of_every_activation():
    from pclab.core.layers import ACTIVATIONS as TABLE
    from pclab.core.layers import CURVATURE, slope_times

    assert set(CURVATURE) == set(TABLE)
    a = torch.linspace(-3, 3, 61, dtype=torch.float64).reshape(1, -1) + 0.013  # off relu's kink
    for name, entry in CURVATURE.items():
        f = TABLE[name][0]
        x = a.clone().requires_grad_()
        (d1,) = torch.autograd.grad(f(x).sum(), x, create_graph=True)
        (d2,) = torch.autograd.grad(d1.sum(), x) if d1.requires_grad else (torch.zeros_like(a),)
        mu = f(a)
        slope = slope_times(name, torch.ones_like(a), a, mu)
        assert torch.allclose(slope, d1.detach(), rtol=1e-12, atol=1e-14), name
        if entry is None:
            assert float(d2.abs().max()) == 0.0, name
            continue
        factor, through_slope, scale = entry
        second = scale * factor(a, mu) * (slope if through_slope else 1.0)
        assert torch.allclose(second, d2, rtol=1e-10, atol=1e-12), name


@pytest.mark.parametrize("act", ALL_ACTIVATIONS)
def test_dense_vjp_without_a_graph_reuses_the_prediction_and_gives_the_same_bits(act):
    """Without a graph a tanh or sigmoid Dense takes its slope from ``mu`` (one evaluation of the
    activation, not two); the vector-Jacobian product is bit for bit the one from ``f'(a)``."""
    from torch.utils._python_dispatch import TorchDispatchMode

    from pclab.core import Dense
    from pclab.core.layers import ACTIVATIONS

    layer = Dense(7, 33, act)
    z, g = torch.randn(5, 7), torch.randn(5, 33)
    calls = []

    class Count(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            calls.append(func._overloadpacket.__name__)
            return func(*args, **(kwargs or {}))

    with torch.no_grad(), Count():
        mu, vjp = layer.forward_with_vjp(z)
    a = layer.linear(z).detach()
    assert torch.equal(vjp(g), (g * ACTIVATIONS[act][1](a)) @ layer.linear.weight.detach())
    if act in ("tanh", "sigmoid"):
        assert calls.count(act) == 1
