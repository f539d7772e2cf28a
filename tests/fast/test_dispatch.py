"""The one door to the accelerators: :func:`pclab.core.fast.path` names what relax and each learning
rule run, ``Inference.accelerators`` selects among them, and what runs is what the path says.

Nothing here compiles: ``path`` only decides (the compiled paths' numbers are in test_compiled*.py).
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from nets import max_rel, mlp, randn, twin
from pclab.core import (
    PCN,
    SGD,
    Adam,
    Backprop,
    BPThroughInference,
    Dense,
    IncrementalPC,
    Inference,
    Node,
    PCLearning,
    TaskLoss,
    TorchOptimizer,
    ZeroDivergenceIL,
    relax,
)
from pclab.core.fast import ACCELERATORS, path


def conv_net() -> PCN:
    torch.manual_seed(0)
    nodes = [Node("x", (1, 6, 6)), Node("h", (2, 4, 4)), Node("y", (3,))]
    edges = [("x", "h", nn.Sequential(nn.Conv2d(1, 2, 3), nn.Tanh())), ("h", "y", nn.Sequential(nn.Flatten(), nn.Linear(32, 3)))]
    return PCN(nodes, edges).double()


@pytest.fixture
def chain_batch():
    return mlp([5, 4, 3], "tanh"), {"x": randn(4, 5, seed=1), "y": randn(4, 3, seed=2)}


def test_relax_paths_on_a_dense_chain(chain_batch):
    model, batch = chain_batch
    assert path(model, Inference(steps=3), batch=batch) == "chain"
    assert path(model, Inference(steps=3, compile=True), batch=batch) == "compiled-chain"
    assert path(model, Inference(steps=3, compile=True), batch=batch, initial=model.initial_state(batch)) == "chain"
    assert path(model, Inference(steps=3), batch=batch, differentiable=True) == "chain-adjoint"
    assert path(model, Inference(steps=3, compile=True), batch=batch, differentiable=True) == "compiled-adjoint"
    assert path(model, Inference(steps=3, optimizer=Adam(0.1)), batch=batch, differentiable=True) == "chain"  # (no reverse pass for Adam)
    assert path(model, Inference(steps=3), batch=batch, differentiable=True, checkpoint_slots=2) == "reference"
    assert path(model, Inference(steps=3, accelerators=()), batch=batch) == "reference"
    assert path(model, Inference(steps=3, accelerators=("chain-adjoint",)), batch=batch, differentiable=True) == "reference"


def test_relax_paths_on_any_other_pcn():
    model = conv_net()
    batch = {"x": randn(2, 1, 6, 6, seed=3)}
    assert path(model, Inference(steps=3), batch=batch) == "reference"
    assert path(model, Inference(steps=3, compile=True), batch=batch) == "compiled-grads"
    assert path(model, Inference(steps=3, compile=True, optimizer=Adam(0.1)), batch=batch) == "reference"
    assert path(model, Inference(steps=3, compile=True), batch=batch, differentiable=True) == "reference"
    assert path(model, Inference(steps=3, compile=True, accelerators=("chain",)), batch=batch) == "reference"


def test_learning_rule_paths(chain_batch):
    model, batch = chain_batch
    adam = torch.optim.Adam(model.parameters(), 1e-3)
    loss = TaskLoss(reconstruct={"y": 1.0})

    class Doubled(PCLearning):
        def weight_energy(self, relaxed):
            return 2.0 * super().weight_energy(relaxed)

    def named(rule) -> str:
        return path(rule.model, getattr(rule, "inference", None), rule, batch)

    assert named(PCLearning(model, Inference(steps=3), adam)) == "chain"
    assert named(PCLearning(model, Inference(steps=3, compile=True), adam)) == "compiled-chain"
    assert named(PCLearning(model, Inference(steps=3, tolerance=1e-3), adam)) == "reference"
    assert named(Doubled(model, Inference(steps=3), adam)) == "reference+chain"  # its own maths, the fast relaxation
    assert named(IncrementalPC(model, Inference(steps=3), adam)) == "chain"
    assert named(IncrementalPC(model, Inference(steps=3, fixed_prediction=True), adam)) == "reference"
    assert named(BPThroughInference(model, Inference(steps=3), adam, loss, ("x", "y"))) == "chain-adjoint"
    assert named(BPThroughInference(model, Inference(steps=3, compile=True), adam, loss, ("x", "y"))) == "compiled-adjoint"
    assert named(BPThroughInference(model, Inference(steps=3), adam, loss, ("x", "y"), truncate=1)) == "reference"
    assert named(BPThroughInference(model, Inference(steps=3), adam, loss, ("x", "y"), checkpoint=True)) == "reference"
    assert named(BPThroughInference(model, Inference(steps=3), adam, loss, ("x", "y"), checkpoint=2)) == "reference"
    assert named(Backprop(model, adam, loss, ("x",))) == "reference"
    assert named(ZeroDivergenceIL(model, adam)) == "reference"
    other = conv_net()
    conv_rule = BPThroughInference(other, Inference(steps=2, compile=True), torch.optim.Adam(other.parameters()),
                                   TaskLoss(reconstruct={"y": 1.0}), ("x",))
    conv_batch = {"x": randn(2, 1, 6, 6, seed=3), "y": randn(2, 3, seed=4)}
    assert path(other, conv_rule.inference, conv_rule, conv_batch) == "compiled-update"


@pytest.mark.parametrize("rule", ["pc", "ipc", "bpti"])
def test_the_reference_only_selection_learns_the_same(chain_batch, rule):
    """``Inference(accelerators=())`` runs the reference code: the same parameters after two steps
    as the Dense-chain accelerators (the equality every accelerator is held to)."""
    model, batch = chain_batch
    other = twin(model)

    def make(net, accelerators):
        inference = Inference(steps=4, optimizer=SGD(0.1), accelerators=accelerators)
        adam = torch.optim.Adam(net.parameters(), 1e-2)
        if rule == "pc":
            return PCLearning(net, inference, adam)
        if rule == "ipc":
            return IncrementalPC(net, inference, adam)
        return BPThroughInference(net, inference, adam, TaskLoss(reconstruct={"y": 1.0}), ("x", "y"))

    fast, slow = make(model, None), make(other, ())
    assert path(model, fast.inference, fast, batch) != "reference"
    assert path(other, slow.inference, slow, batch) == "reference"
    for _ in range(2):
        a, b = fast.step(batch), slow.step(batch)
        assert a.keys() == b.keys() and all(a[k] == pytest.approx(b[k], rel=1e-10) for k in a)
    params = lambda net: {n: p.detach() for n, p in net.named_parameters()}  # noqa: E731
    assert max_rel(params(model), params(other)) < 1e-10


def test_a_relaxation_on_the_reference_path_equals_the_chain_path(chain_batch):
    model, batch = chain_batch
    fast = relax(model, batch, Inference(steps=5))
    slow = relax(model, batch, Inference(steps=5, accelerators=()))
    assert max_rel(fast.values, slow.values) < 1e-12 and max_rel(fast.initial, slow.initial) < 1e-12


@pytest.mark.parametrize("bad", [["chain"], ("chain", "warp-drive"), "chain"])
def test_accelerators_must_be_a_tuple_of_known_names(bad):
    with pytest.raises(ValueError, match="accelerators"):
        Inference(accelerators=bad)
    assert Inference(accelerators=ACCELERATORS).accelerators == ACCELERATORS


def test_path_needs_the_batch_and_the_rules_own_model(chain_batch):
    model, batch = chain_batch
    rule = PCLearning(model, Inference(steps=2), torch.optim.SGD(model.parameters(), 0.1))
    with pytest.raises(ValueError, match="needs the batch"):
        path(model, rule.inference)
    with pytest.raises(ValueError, match="another model"):
        path(twin(model), rule.inference, rule, batch)


def test_error_relaxation_paths(chain_batch):
    """ePC takes ``compiled-epc`` on a Dense chain with ``compile`` (any latent optimiser the chain
    path reproduces, any start, a trajectory or a tolerance); the reference loop everywhere else."""
    model, batch = chain_batch
    error = lambda **kw: Inference(**{"steps": 3, "parametrisation": "error", "compile": True, **kw})  # noqa: E731
    assert path(model, error(), batch=batch) == "compiled-epc"
    assert path(model, error(optimizer=SGD(0.1, momentum=0.9, nesterov=True)), batch=batch) == "compiled-epc"
    assert path(model, error(optimizer=Adam(0.1), init="zeros", tolerance=1e-4), batch=batch, record=True) == "compiled-epc"
    assert path(model, error(), batch={"x": batch["x"]}, initial=model.initial_state(batch)) == "compiled-epc"
    assert path(model, error(accelerators=("compiled-epc",)), batch=batch) == "compiled-epc"
    assert path(model, error(compile=False), batch=batch) == "reference"
    assert path(model, error(accelerators=()), batch=batch) == "reference"
    assert path(model, error(method="manual"), batch=batch) == "reference"
    assert path(model, error(optimizer=TorchOptimizer(torch.optim.SGD, lr=0.1)), batch=batch) == "reference"
    assert path(model, error(), batch=batch, differentiable=True) == "reference"  # bp-through-inference: the reference loop
    assert path(model, error(), batch=batch, differentiable=True, checkpoint_slots=2) == "reference"
    assert path(conv_net(), error(), batch={"x": randn(2, 1, 6, 6, seed=3)}) == "reference"  # not a Dense chain
    two_roots = PCN([Node("a", (2,)), Node("b", (2,)), Node("c", (3,))], [("a", "c", Dense(2, 3)), ("b", "c", Dense(2, 3))]).double()
    assert path(two_roots, error(), batch={"c": randn(2, 3, seed=4)}) == "reference"
    assert path(model, Inference(steps=3, compile=True), batch=batch) == "compiled-chain"  # (state-based: its own)
    adam = torch.optim.Adam(model.parameters(), 1e-3)
    assert path(model, error(), PCLearning(model, error(), adam), batch) == "reference+compiled-epc"
    bpti = BPThroughInference(model, error(), adam, TaskLoss(reconstruct={"y": 1.0}), ("x", "y"))
    assert path(model, error(), bpti, batch) == "compiled-update"
