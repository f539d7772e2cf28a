"""The PCN graph: construction errors, clamp validation messages, structure."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from nets import F64, chain, hybrid, randn
from pclab.core import PCN, CrossEntropy, Dense, Node


def nodes3():
    return [Node("x", (3,)), Node("h", (4,)), Node("y", (2,))]


def test_edge_naming_an_unknown_node_is_refused():
    with pytest.raises(ValueError, match=r"edge 'h' -> 'q' names unknown node 'q'"):
        PCN(nodes3(), [("x", "h", Dense(3, 4)), ("h", "q", Dense(4, 2))])


def test_cyclic_prediction_edges_are_refused_naming_the_cycle():
    with pytest.raises(ValueError, match=r"acyclic.*\['h', 'x', 'y'\]"):
        PCN(nodes3(), [("x", "h", Dense(3, 4)), ("h", "y", Dense(4, 2)), ("y", "x", Dense(2, 3))])
    with pytest.raises(ValueError, match=r"acyclic.*\['h'\]"):
        PCN(nodes3(), [("h", "h", Dense(4, 4))])


def test_duplicate_nodes_edges_and_amortisers_are_refused():
    with pytest.raises(ValueError, match="duplicate node name 'h'"):
        PCN([*nodes3(), Node("h", (5,))], [])
    with pytest.raises(ValueError, match=r"duplicate edge 'x' -> 'h'"):
        PCN(nodes3(), [("x", "h", Dense(3, 4)), ("x", "h", Dense(3, 4))])
    with pytest.raises(ValueError, match=r"duplicate amortiser 'x' -> 'h'"):
        PCN(nodes3(), [("h", "y", Dense(4, 2))], amortisers=[("x", "h", Dense(3, 4)), ("x", "h", Dense(3, 4))])
    with pytest.raises(ValueError, match="node 'h' has two amortisers"):
        PCN(nodes3(), [("h", "y", Dense(4, 2))], amortisers=[("x", "h", Dense(3, 4)), ("y", "h", Dense(2, 4))])


def test_malformed_nodes_and_edges_are_refused():
    with pytest.raises(ValueError, match="contain no '.'"):
        Node("a.b", (3,))
    with pytest.raises(ValueError, match="positive sizes"):
        Node("a", (3, 0))
    with pytest.raises(TypeError, match="nn.Module"):
        PCN(nodes3(), [("x", "h", lambda z: z)])
    with pytest.raises(ValueError, match=r"\(source, target, module\)"):
        PCN(nodes3(), [("x", "h")])
    with pytest.raises(TypeError, match="pclab Node"):
        PCN(["x"], [])
    with pytest.raises(ValueError, match="unknown activation 'swish'"):
        Dense(3, 4, "swish")


def model_and_clamp():
    return chain([3, 4, 2], "tanh", seed=0), {"x": randn(5, 3, seed=1), "y": randn(5, 2, seed=2)}


def test_wrong_clamp_shape_error_names_the_node_the_expected_and_the_received_shape():
    model, clamp = model_and_clamp()
    with pytest.raises(ValueError) as info:
        model.check_clamp({**clamp, "y": randn(5, 4, seed=3)})
    message = str(info.value)
    assert "'y'" in message and "(5, 4)" in message and "(batch, 2)" in message


def test_wrong_clamp_dtype_error_names_the_node_and_both_dtypes():
    model, clamp = model_and_clamp()
    with pytest.raises(ValueError) as info:
        model.check_clamp({**clamp, "x": clamp["x"].float()})
    message = str(info.value)
    assert "'x'" in message and "torch.float32" in message and "torch.float64" in message


def test_wrong_clamp_device_error_names_the_node_and_both_devices():
    model, clamp = model_and_clamp()
    with pytest.raises(ValueError) as info:
        model.check_clamp({**clamp, "x": torch.empty(5, 3, dtype=F64, device="meta")})
    message = str(info.value)
    assert "'x'" in message and "meta" in message and "cpu" in message


def test_other_clamp_errors_are_clear():
    model, clamp = model_and_clamp()
    with pytest.raises(ValueError, match="at least one node"):
        model.check_clamp({})
    with pytest.raises(ValueError, match="unknown node 'q'"):
        model.check_clamp({"q": clamp["x"]})
    with pytest.raises(TypeError, match=r"node 'x' must be a torch.Tensor, got list"):
        model.check_clamp({"x": [[0.0] * 3]})
    with pytest.raises(ValueError, match="node 'y' has 4, others 5"):
        model.check_clamp({"x": clamp["x"], "y": clamp["y"][:4]})
    assert model.check_clamp(clamp) == 5


def test_layer_indices_follow_the_longest_path_from_the_input_side():
    """A DAG with a skip edge: a node's layer index is its longest-path depth minus one."""
    model = PCN(
        [Node("x", (2,)), Node("a", (2,)), Node("b", (2,)), Node("y", (2,), CrossEntropy())],
        [("x", "a", Dense(2, 2)), ("a", "b", Dense(2, 2)), ("b", "y", Dense(2, 2)), ("x", "y", Dense(2, 2))],
    )
    assert model.order[0] == "x" and model.order.index("b") < model.order.index("y")
    assert model.error_nodes == ["a", "b", "y"]
    assert model.layer_index == {"a": 0, "b": 1, "y": 2}
    assert model.num_layers == 3
    assert model.fast
    assert not PCN(nodes3(), [("x", "h", nn.Linear(3, 4))]).fast


def test_predictions_sum_the_incoming_edges():
    model = PCN(
        [Node("x", (2,)), Node("r", (2,)), Node("y", (3,))],
        [("x", "y", Dense(2, 3, "tanh")), ("r", "y", Dense(2, 3))],
    ).to(F64)
    values = {"x": randn(4, 2, seed=1), "r": randn(4, 2, seed=2), "y": randn(4, 3, seed=3)}
    mu = model.predictions(values)["y"]
    expected = model.module("x", "y")(values["x"]) + model.module("r", "y")(values["r"])
    assert torch.equal(mu, expected)


def test_feed_forward_state_uses_amortisers_and_released_read_outs():
    """``initial_state(..., "forward")``: amortised nodes take the encoder output, predicted nodes
    their released prediction (softmax for a CE read-out); zeros and random have the right shapes."""
    model = hybrid(image=6, latent=3, classes=4, seed=3)
    x = randn(2, 6, seed=4)
    values = model.initial_state({"x": x}, "forward")
    z = model.amortiser_modules["x_to_z"](x)
    assert torch.equal(values["z"], z)
    assert torch.allclose(values["y"], torch.softmax(model.module("z", "y")(z), dim=1))
    zeros = model.initial_state({"x": x}, "zeros")
    assert zeros["z"].shape == (2, 3) and zeros["y"].shape == (2, 4) and not zeros["z"].any()
    assert model.initial_state({"x": x}, "random", torch.Generator().manual_seed(0))["z"].dtype == F64
    with pytest.raises(ValueError, match="unknown init 'ones'"):
        model.initial_state({"x": x}, "ones")
