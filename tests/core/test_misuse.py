"""API misuse fails with one clear error naming the node or argument, never silently."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from pclab.core import PCN, SGD, Adam, CrossEntropy, Dense, Inference, Node, PCLearning, relax


def classifier() -> PCN:
    torch.manual_seed(0)
    return PCN([Node("x", (4,)), Node("h", (3,)), Node("y", (2,), CrossEntropy())],
               [("x", "h", Dense(4, 3, "tanh")), ("h", "y", Dense(3, 2))])


class Odd(nn.Module):
    """Not a Dense: its output shape is known only by running it."""

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return z[:, :3]


def test_a_dense_edge_that_does_not_fit_its_nodes_is_refused_at_construction():
    with pytest.raises(ValueError, match=r"module 'h' -> 'y': expected a map from node shape \(3,\) to node shape \(5,\), got a Dense from 3 to 2"):
        PCN([Node("h", (3,)), Node("y", (5,))], [("h", "y", Dense(3, 2))])


def test_a_module_whose_output_does_not_fit_its_node_is_named_at_the_first_prediction():
    net = PCN([Node("x", (4,)), Node("h", (5,))], [("x", "h", Odd())])
    for method in ("manual", "autograd"):
        for init in ("forward", "zeros"):
            with pytest.raises(ValueError, match=r"prediction of node 'h' \(from \['x'\]\): expected shape \(batch, 5\), got \(2, 3\)"):
                relax(net, {"x": torch.zeros(2, 4)}, Inference(steps=2, init=init, method=method))


def test_a_batch_without_the_label_is_refused_instead_of_learning_nothing():
    net = classifier()
    rule = PCLearning(net, Inference(steps=3), torch.optim.SGD(net.parameters(), 0.1))
    with pytest.raises(ValueError, match=r"PCLearning.step: expected the batch to clamp a node that has a prediction, e.g. \['y'\]; got only"):
        rule.step({"x": torch.zeros(2, 4)})
    before = [p.detach().clone() for p in net.parameters()]
    rule.step({"x": torch.randn(2, 4), "y": torch.eye(2)})  # with the label it learns
    assert any(not torch.equal(a, b) for a, b in zip(before, net.parameters()))


@pytest.mark.parametrize("make, needle", [
    (lambda: Inference(steps=True), "inference steps must be an integer >= 0, got True"),
    (lambda: Inference(steps=2.0), "inference steps must be an integer >= 0, got 2.0"),
    (lambda: SGD(lr=float("inf")), "latent SGD lr: expected a finite number > 0, got inf"),
    (lambda: SGD(lr=float("nan")), "latent SGD lr: expected a finite number > 0, got nan"),
    (lambda: SGD(lr=-0.1), "latent SGD lr: expected a finite number > 0, got -0.1"),
    (lambda: SGD(lr=True), "latent SGD lr: expected a finite number > 0, got True"),
    (lambda: Adam(lr=float("inf")), "latent Adam lr: expected a finite number > 0, got inf"),
])
def test_nonsense_arguments_are_refused(make, needle):
    with pytest.raises(ValueError) as err:
        make()
    assert str(err.value) == needle


@pytest.mark.parametrize("fast", [True, False])
def test_a_relaxation_that_blows_up_names_the_node(fast):
    net = classifier()
    x, y = torch.randn(3, 4) * 5, torch.eye(2)[[0, 1, 0]]
    inference = Inference(steps=400, optimizer=SGD(lr=50.0), tolerance=None if fast else 1e-30)  # a tolerance takes the general loop
    with pytest.raises(FloatingPointError, match=r"relax: node 'h' holds NaN or Inf after \d+ inference steps \(expected finite values\)"):
        relax(net, {"x": x, "y": y}, inference)
    unchecked = relax(net, {"x": x, "y": y}, Inference(steps=400, optimizer=SGD(lr=50.0), check_finite=False))
    assert not torch.isfinite(unchecked.values["h"]).all()
    assert torch.isfinite(relax(net, {"x": x, "y": y}, Inference(steps=20)).values["h"]).all()


@pytest.mark.parametrize("initial, needle", [
    ({"h": torch.zeros(2, 3)}, r"relax initial: expected a value for every node that is not clamped, missing \['y'\]"),
    ({"h": torch.zeros(2, 3), "y": torch.zeros(2, 2), "q": torch.zeros(2, 1)}, r"relax initial: unknown node\(s\) \['q'\]"),
    ({"h": torch.zeros(2, 4), "y": torch.zeros(2, 2)}, r"relax initial: value of node 'h' has shape \(2, 4\); expected \(2, 3\)"),
    ({"h": torch.zeros(5, 3), "y": torch.zeros(5, 2)}, r"relax initial: value of node 'h' has shape \(5, 3\); expected \(2, 3\)"),
    ({"h": [0.0], "y": torch.zeros(2, 2)}, r"relax initial: value of node 'h' must be a torch.Tensor, got list"),
])
def test_a_bad_initial_state_names_the_node(initial, needle):
    with pytest.raises((ValueError, TypeError), match=needle):
        relax(classifier(), {"x": torch.zeros(2, 4)}, Inference(steps=2), initial=initial)
    good = {"h": torch.zeros(2, 3), "y": torch.zeros(2, 2)}
    assert relax(classifier(), {"x": torch.zeros(2, 4)}, Inference(steps=2), initial=good).values["h"].shape == (2, 3)


def test_the_final_check_tells_large_finite_values_from_non_finite_ones():
    from pclab.core.relax import Relaxed, _finite

    net, inference = classifier(), Inference(steps=1)
    large = Relaxed({"x": torch.full((2, 4), 1e30), "h": torch.zeros(2, 3), "y": torch.zeros(2, 2)}, {}, frozenset({"x"}), 1)
    assert _finite(net, large, inference) is large  # the L2 norm overflows float32; every entry is finite
    large.values["y"][1, 0] = float("-inf")
    with pytest.raises(FloatingPointError, match="node 'y' holds NaN or Inf"):
        _finite(net, large, inference)
