"""Precision schedules (Qi et al. 2025): their values by hand, and which latents a unit spike
moves at each inference step."""

from __future__ import annotations

import math

import pytest
import torch

from nets import chain, randn
from pclab.core import SGD, Constant, Decaying, Inference, Spiking, relax, schedule

# rows: step t = 0..4; columns: layer l = 0..3 of N = 4 error-bearing layers
SPIKING_0_1 = [
    [0.1, 0.1, 0.1, 1.0],
    [0.1, 0.1, 1.0, 0.1],
    [0.1, 1.0, 0.1, 0.1],
    [1.0, 0.1, 0.1, 0.1],
    [0.1, 0.1, 0.1, 0.1],
]
DECAYING_LN2 = [
    [0.0, 0.0, 0.0, 1.0],
    [0.0, 0.0, 1.0, 0.5],
    [0.0, 1.0, 0.5, 0.25],
    [1.0, 0.5, 0.25, 0.125],
    [0.5, 0.25, 0.125, 0.0625],
]


def test_spiking_precision_values_by_hand():
    """``pi_l(t) = 1`` if ``t == N - l - 1`` else ``alpha`` (N = 4, alpha = 0.1)."""
    spiking = Spiking(alpha=0.1)
    table = [[spiking(t, l, 4) for l in range(4)] for t in range(5)]
    assert table == SPIKING_0_1
    assert not spiking.is_constant


def test_decaying_precision_values_by_hand():
    """0 before the front arrives at ``t = N - l - 1``, 1 on arrival, ``exp(-k i)`` i steps later
    (N = 4, k = ln 2: halves each step)."""
    decaying = Decaying(k=math.log(2.0))
    table = [[decaying(t, l, 4) for l in range(4)] for t in range(5)]
    for row, expected in zip(table, DECAYING_LN2):
        assert row == pytest.approx(expected, rel=1e-15, abs=0.0)
    assert not decaying.is_constant


def test_inference_maps_schedules_onto_error_nodes_by_layer_index():
    """Layer indices count error-bearing layers from the input side; ``Inference.multipliers``
    gives each node the schedule's value for its layer (None for plain PC)."""
    model = chain([3, 4, 4, 4, 2], "tanh", seed=0)
    assert model.layer_index == {"h1": 0, "h2": 1, "h3": 2, "y": 3}
    assert model.num_layers == 4
    spiking = Inference(precision=Spiking(alpha=0.1))
    decaying = Inference(precision=Decaying(k=math.log(2.0)))
    for t in range(5):
        assert spiking.multipliers(model, t) == dict(zip(["h1", "h2", "h3", "y"], SPIKING_0_1[t]))
        got = decaying.multipliers(model, t)
        assert [got[n] for n in ["h1", "h2", "h3", "y"]] == pytest.approx(DECAYING_LN2[t], rel=1e-15)
    assert Inference(precision=Constant()).multipliers(model, 3) is None
    mixed = Inference(precision={"h2": Spiking(alpha=0.0)}).multipliers(model, 2)
    assert mixed == {"h1": 1.0, "h2": 1.0, "h3": 1.0, "y": 1.0}
    assert Inference(precision={"h2": Spiking(alpha=0.0)}).multipliers(model, 0)["h2"] == 0.0


def test_schedule_factory_and_validation():
    assert schedule("spiking", alpha=0.2) == Spiking(alpha=0.2)
    assert schedule("decaying", k=0.5) == Decaying(k=0.5)
    assert schedule("constant", value=2.0) == Constant(2.0)
    with pytest.raises(ValueError, match="unknown precision schedule 'spiky'"):
        schedule("spiky")
    with pytest.raises(ValueError, match="alpha"):
        Spiking(alpha=1.5)
    with pytest.raises(ValueError, match="k"):
        Decaying(k=-1.0)


# Chain x -> h1 -> h2 -> h3 -> h4 -> y: error nodes h1..h4, y have layer indices 0..4 (N = 5).
# At step t the spike sits on the error node with index N-1-t; its error moves that node (if
# free) and its presynaptic node (if free). x and y are clamped.
MOVED_BY_SPIKE = [
    {"h4"},         # t=0: error of y (index 4): y clamped, presynaptic h4
    {"h4", "h3"},   # t=1: error of h4 (index 3)
    {"h3", "h2"},   # t=2: error of h3 (index 2)
    {"h2", "h1"},   # t=3: error of h2 (index 1)
    {"h1"},         # t=4: error of h1 (index 0): presynaptic x clamped
]


def states_after(model, clamp, precision, steps: int, method: str):
    """The relaxed state after ``steps`` updates (a schedule depends on the step only, so these
    are the successive states of one relaxation)."""
    inference = Inference(steps=steps, optimizer=SGD(lr=0.1), precision=precision, method=method)
    return relax(model, clamp, inference).values


@pytest.mark.parametrize("method", ["auto", "manual", "autograd"])
def test_spiking_schedule_moves_only_the_latents_its_spike_touches(method):
    """Spiking(alpha=0), feed-forward init, x and y clamped: at step t exactly the latents
    adjacent to the error node of layer N-1-t change, and nothing else."""
    model = chain([3, 4, 4, 4, 4, 2], "tanh", seed=1)
    assert model.layer_index == {"h1": 0, "h2": 1, "h3": 2, "h4": 3, "y": 4}
    clamp = {"x": randn(3, 3, seed=2), "y": randn(3, 2, seed=3)}
    seen = [states_after(model, clamp, Spiking(alpha=0.0), steps, method) for steps in range(6)]
    for t in range(5):
        moved = {n for n in ["h1", "h2", "h3", "h4"] if not torch.equal(seen[t][n], seen[t + 1][n])}
        assert moved == MOVED_BY_SPIKE[t], f"step {t}"


def test_decaying_schedule_leaves_layers_untouched_until_the_front_arrives():
    """Decaying: precision 0 before arrival, so at step 0 only the output error acts (h4 moves),
    and at step t the latents strictly below the front stay at their feed-forward values."""
    model = chain([3, 4, 4, 4, 4, 2], "tanh", seed=4)
    clamp = {"x": randn(3, 3, seed=5), "y": randn(3, 2, seed=6)}
    seen = [states_after(model, clamp, Decaying(k=1.0), steps, "auto") for steps in range(6)]
    hidden = ["h1", "h2", "h3", "h4"]
    for t in range(5):
        moved = {n for n in hidden if not torch.equal(seen[t][n], seen[t + 1][n])}
        front = 4 - t  # layer index of the arriving error node; it moves its presynaptic node
        expected = {n for i, n in enumerate(hidden) if i >= front - 1}
        assert moved == expected, f"step {t}"
