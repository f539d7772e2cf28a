"""``Inference(compile=True)`` beyond Dense chains: any PCN's latent gradient as one compiled graph
(:func:`pclab.core.fast.compiled.latent_grads`) gives the eager gradients' numbers.

Compiling takes seconds (tens on a cold Inductor cache), so this file is marked slow.
"""

from __future__ import annotations

import copy
from dataclasses import replace

import pytest
import torch
from torch import nn
from torch._dynamo.utils import counters

from pclab.core import PCN, SGD, Adam, CrossEntropy, IncrementalPC, Inference, Node, PCLearning, relax
from pclab.core.fast import compiled
from pclab.core.precision import Decaying

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")]


def conv_pcn(seed: int = 0, dropout: float = 0.0) -> PCN:
    """x (1x8x8) -conv 3x3, GELU-> h1 (4x6x6) -conv 3x3/2, tanh-> h2 (3x2x2) -linear-> y (5, cross-entropy)."""
    torch.manual_seed(seed)
    nodes = [Node("x", (1, 8, 8)), Node("h1", (4, 6, 6)), Node("h2", (3, 2, 2)), Node("y", (5,), CrossEntropy())]
    edges = [
        ("x", "h1", nn.Sequential(nn.Conv2d(1, 4, 3), nn.GELU())),
        ("h1", "h2", nn.Sequential(nn.Conv2d(4, 3, 3, stride=2), nn.Dropout(dropout) if dropout else nn.Identity(), nn.Tanh())),
        ("h2", "y", nn.Sequential(nn.Flatten(), nn.Linear(12, 5))),
    ]
    return PCN(nodes, edges)


def batch(size: int, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 5, (size,), generator=g)
    return {"x": torch.rand(size, 1, 8, 8, generator=g), "y": nn.functional.one_hot(labels, 5).float()}


def close(a: torch.Tensor, b: torch.Tensor, rel: float = 1e-5) -> bool:
    return float((a - b).norm()) <= rel * float(b.norm()) + 1e-7


def new_entries(before: set) -> list:
    return [e for key, e in compiled.CACHE.entries.items() if key not in before and key[0] == "grads"]


def test_compiled_relaxation_of_a_conv_pcn_equals_the_eager_one_under_a_precision_schedule():
    model = conv_pcn()
    # momentum and a schedule whose multipliers change every step (tensors in the graph: no recompile)
    inference = Inference(steps=6, optimizer=SGD(0.2, momentum=0.5), precision=Decaying(0.7))
    before, graphs = set(compiled.CACHE.entries), counters["stats"]["unique_graphs"]
    for k, size in enumerate([6, 6, 4]):  # batch 4 runs on the eager path
        data = batch(size, seed=k)
        eager = relax(model, data, inference)
        fast = relax(model, data, replace(inference, compile=True))
        for n in ("h1", "h2"):
            assert close(fast.values[n], eager.values[n]), n
        assert not torch.equal(fast.values["h1"], fast.initial["h1"])  # it did relax
    entries = new_entries(before)
    assert len(entries) == 1 and entries[0].batch == 6 and entries[0].compile_seconds is not None
    assert counters["stats"]["unique_graphs"] - graphs == 1  # six different multipliers, one graph


def test_pc_learning_on_a_conv_pcn_with_compile_matches_the_eager_rule():
    model = conv_pcn(seed=1)
    other = copy.deepcopy(model)
    fast = PCLearning(model, Inference(steps=4, optimizer=SGD(0.1), compile=True), torch.optim.Adam(model.parameters(), 1e-2))
    eager = PCLearning(other, Inference(steps=4, optimizer=SGD(0.1)), torch.optim.Adam(other.parameters(), 1e-2))
    before = set(compiled.CACHE.entries)
    for k in range(3):
        data = batch(7, seed=10 + k)
        assert fast.step(data)["energy"] == pytest.approx(eager.step(data)["energy"], rel=1e-4)
    for p, q in zip(model.parameters(), other.parameters()):
        assert close(p.detach(), q.detach(), rel=1e-4)
    assert len(new_entries(before)) == 1  # the rule relaxed through the compiled gradient


def test_incremental_pc_on_a_conv_pcn_with_compile_sees_every_weight_step():
    # iPC steps the weights between inference steps: the compiled gradient must read the new values
    model = conv_pcn(seed=5)
    other = copy.deepcopy(model)
    fast = IncrementalPC(model, Inference(steps=3, optimizer=SGD(0.1), compile=True), torch.optim.SGD(model.parameters(), 0.05))
    eager = IncrementalPC(other, Inference(steps=3, optimizer=SGD(0.1)), torch.optim.SGD(other.parameters(), 0.05))
    before = set(compiled.CACHE.entries)
    for k in range(2):
        data = batch(6, seed=20 + k)
        fast.step(data), eager.step(data)
    for p, q in zip(model.parameters(), other.parameters()):
        assert close(p.detach(), q.detach(), rel=1e-5)
    assert len(new_entries(before)) == 1


@pytest.mark.parametrize("case", ["dropout", "adam", "differentiable"])
def test_the_compiled_gradient_is_not_used_where_it_would_change_the_numbers(case):
    # dropout samples a new mask per call; Adam divides by the gradient's size and would blow the
    # compiled graph's rounding up where a feed-forward start makes it exactly zero; a
    # differentiable relaxation needs autograd's graph
    model = conv_pcn(seed=2, dropout=0.5 if case == "dropout" else 0.0)
    optimizer = Adam(0.05) if case == "adam" else SGD(0.1)
    before = set(compiled.CACHE.entries)
    torch.manual_seed(3)
    relax(model, batch(5, seed=4), Inference(steps=2, optimizer=optimizer, compile=True), differentiable=case == "differentiable")
    assert new_entries(before) == []
