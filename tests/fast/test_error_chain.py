"""The ePC step of a Dense chain (:mod:`pclab.core.fast.error_chain`) gives the reference ePC
relaxation's numbers, and the dispatch runs it exactly where it applies.

Nothing here compiles: the step's eager twin (what runs for a batch size no compiled graph serves)
is the function the compiled graph traces; ``test_compiled_epc.py`` holds the compiled graph to
the same reference.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator

import pytest
import torch
from hypothesis import assume, given
from hypothesis import strategies as st
from torch._dynamo.utils import counters

from nets import ALL_ACTIVATIONS, chain, examples, max_rel, one_hot, randn
from pclab.core import SGD, Adam, CrossEntropy, Gaussian, Inference, PCLearning, relax
from pclab.core.fast import compiled, error_chain, path
from pclab.core.relax import free_nodes

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")  # (compiling)


@contextlib.contextmanager
def eager_twin() -> Iterator[list[int]]:
    """Every compiled ePC step runs its eager twin instead (as for a batch size no graph serves);
    yields the list of batch sizes the fast step was asked to run (one entry per step)."""
    calls: list[int] = []

    def run(entry, batch, *args):
        calls.append(batch)
        return None

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(compiled, "run", run)
        yield calls


OPTIMIZERS = {
    "sgd": lambda lr: SGD(lr),
    "momentum": lambda lr: SGD(lr, momentum=0.5),
    "nesterov": lambda lr: SGD(lr, momentum=0.6, nesterov=True),
    "adam": lambda lr: Adam(lr / 4),
}


@st.composite
def cases(draw, dtype: torch.dtype = torch.float64):
    """A Dense chain, its clamp (input and label; input only; a free root below a clamped output;
    or a clamped middle node too), and an error-parametrised inference."""
    depth = draw(st.integers(1, 4))
    width = draw(st.integers(2, 5))
    act = draw(st.sampled_from(ALL_ACTIVATIONS))
    batch = draw(st.integers(1, 4))
    kind = draw(st.sampled_from(["xy", "xy-ce", "x", "x-ce", "root", "middle"]))
    if kind == "middle" and depth < 2:
        kind = "xy"
    seed = draw(st.integers(0, 2**16))
    precisions = draw(st.lists(st.sampled_from([0.5, 1.0, 2.0]), min_size=depth, max_size=depth))
    output = CrossEntropy(precisions[-1]) if kind.endswith("-ce") else Gaussian(precisions[-1])
    widths = [width + 1, *[width] * (depth - 1), 3]
    model = chain(widths, act, output, precisions[:-1], seed=seed, dtype=dtype)
    target = one_hot(torch.arange(batch) % 3, 3).to(dtype) if kind.endswith("-ce") else randn(batch, 3, seed=seed + 2, dtype=dtype)
    x = randn(batch, widths[0], seed=seed + 1, dtype=dtype)
    clamp = {"root": {"y": target}, "x": {"x": x}, "x-ce": {"x": x}}.get(kind, {"x": x, "y": target})
    if kind == "middle":
        clamp["h1"] = randn(batch, width, seed=seed + 3, dtype=dtype)
    steps = draw(st.integers(0, 6))
    lr = draw(st.sampled_from([0.05, 0.1, 0.3]))
    optimizer = OPTIMIZERS[draw(st.sampled_from(sorted(OPTIMIZERS)))](lr)
    init = draw(st.sampled_from(["forward", "zeros", "random"]))
    tolerance = draw(st.sampled_from([None, 1e-3]))
    inference = Inference(steps, optimizer, init, tolerance=tolerance, parametrisation="error", compile=True)
    initial = None
    if draw(st.booleans()):  # relax(initial=...): a given state
        initial = model.initial_state(clamp, "random", torch.Generator().manual_seed(seed + 4))
    return model, clamp, inference, initial


def relax_both(model, clamp, inference, initial=None):
    """``(fast, reference)`` relaxations with a trajectory, from the same (random or given) start."""
    reference = Inference(**{**inference.__dict__, "compile": False})
    out = []
    for chosen in (inference, reference):
        out.append(relax(model, clamp, chosen, record=True, initial=initial, generator=torch.Generator().manual_seed(0)))
    return out


def assert_same(fast, slow, rel: float) -> None:
    """The same values, start, steps taken and trajectory (per-step energies, error norms, drift)."""
    assert fast.steps == slow.steps and fast.clamped == slow.clamped
    assert max_rel(fast.values, slow.values) <= rel and max_rel(fast.initial, slow.initial) == 0.0
    for name in ("energy", "error_norm", "drift"):
        a, b = torch.tensor(getattr(fast.trajectory, name), dtype=torch.float64), torch.tensor(getattr(slow.trajectory, name), dtype=torch.float64)
        assert a.shape == b.shape
        if b.numel():
            assert float((a - b).abs().max()) <= rel * max(1.0, float(b.abs().max()))


@examples(60)
@given(cases())
def test_the_chain_step_equals_the_reference_step_in_float64(case):
    model, clamp, inference, initial = case
    with eager_twin() as calls:
        fast, slow = relax_both(model, clamp, inference, initial)
    moves = bool(free_nodes(model, frozenset(clamp)))  # (nothing free: nothing to step, the reference loop)
    assert path(model, inference, batch=clamp) == ("compiled-epc" if moves else "reference")
    assert len(calls) == (fast.steps if moves else 0)  # the chain step ran every step
    assert_same(fast, slow, 1e-12)


@examples(20)
@given(cases(torch.float32))
def test_the_chain_step_equals_the_reference_step_in_float32(case):
    model, clamp, inference, initial = case
    with eager_twin():
        fast, slow = relax_both(model, clamp, inference, initial)
    assert_same(fast, slow, 1e-5)


def test_a_relaxation_takes_the_chain_step_only_where_the_dispatch_says_so():
    model = chain([5, 4, 4, 3], "tanh", seed=1)
    batch = {"x": randn(3, 5, seed=2), "y": randn(3, 3, seed=3)}
    runs = {
        "compiled-epc": Inference(4, SGD(0.1), parametrisation="error", compile=True),
        "reference": Inference(4, SGD(0.1), parametrisation="error"),
    }
    for expected, inference in runs.items():
        with eager_twin() as calls:
            relax(model, batch, inference)
        assert len(calls) == (4 if expected == "compiled-epc" else 0)
    with eager_twin() as calls:  # bp-through-inference: the reference loop
        relax(model, batch, runs["compiled-epc"], differentiable=True)
    assert calls == []


def test_the_plan_marks_each_node_by_its_role():
    model = chain([3, 4, 4, 2], "tanh", CrossEntropy(), [2.0, 0.5], seed=4)
    batch = {"x": randn(2, 3, seed=5)}
    from pclab.core.epc import ErrorProblem
    from pclab.core.fast.chain import dense_chain

    structure = dense_chain(model)
    for clamp, free in (({"x": batch["x"]}, (False, True, True, False)), ({"y": one_hot(torch.tensor([0, 1]), 2)}, (True, True, True, False))):
        weights = {n: model.nodes[n].energy.precision for n in model.error_nodes}
        problem = ErrorProblem(model, clamp, [n for n, f in zip(structure.nodes, free) if f], weights, {}, "manual")
        plan = error_chain.plan(structure, problem, SGD(0.1))
        assert plan.free == free and plan.clamped == tuple(n in clamp for n in structure.nodes)
        assert plan.weights == (0.0, 2.0, 0.5, 1.0) and plan.buffers == 0
    assert error_chain.ErrorPlan(structure, (), (), (), Adam()).buffers == 2
    assert error_chain.ErrorPlan(structure, (), (), (), SGD(0.1, momentum=0.5)).buffers == 1


# ---------------------------------------------------------------------------------------------- compiled (slow: each graph compiles for seconds)
def _compiled_entries(batch: int) -> int:
    """Compiled ePC steps serving ``batch`` (the cache keeps the newest 8)."""
    return sum(1 for key, entry in compiled.CACHE.entries.items() if key[0] == "epc-step" and entry.batch == batch)


@pytest.mark.slow
@pytest.mark.parametrize("dtype, rel", [(torch.float64, 1e-10), (torch.float32, 1e-4)])
def test_the_compiled_step_equals_the_reference_relaxation(dtype, rel):
    @examples(3)
    @given(cases(dtype))
    def check(case):
        model, clamp, inference, initial = case
        assume(free_nodes(model, frozenset(clamp)) and inference.steps > 0)
        batch = next(iter(clamp.values())).shape[0]
        before = _compiled_entries(batch)
        fast, slow = relax_both(model, clamp, inference, initial)
        assert _compiled_entries(batch) == before + 1  # a graph compiled for this chain, and served the relaxation
        assert_same(fast, slow, rel)

    check()


@pytest.mark.slow
def test_one_graph_serves_every_step_and_relaxation_of_its_batch_size_and_others_run_the_eager_twin():
    model = chain([6, 5, 5, 3], "gelu", CrossEntropy(), seed=7)
    inference = Inference(12, Adam(0.05), parametrisation="error", compile=True)  # (Adam's step count: an input, not a constant)
    graphs = counters["stats"]["unique_graphs"]
    for size in (4, 4, 3):
        clamp = {"x": randn(size, 6, seed=size), "y": one_hot(torch.arange(size) % 3, 3)}
        fast, slow = relax_both(model, clamp, inference)
        assert_same(fast, slow, 1e-10)
    assert counters["stats"]["unique_graphs"] == graphs + 1


@pytest.mark.slow
@pytest.mark.parametrize("dtype, rel, forward", [(torch.float64, 1e-10, False), (torch.float32, 1e-5, True)])
def test_pc_weight_gradients_after_the_compiled_relaxation_equal_those_after_the_reference_one(dtype, rel, forward):
    model = chain([8, 6, 6, 6, 4], "tanh", CrossEntropy(), seed=8, dtype=dtype)
    other = copy.deepcopy(model)
    rules = [PCLearning(net, Inference(10, SGD(0.2, momentum=0.5), parametrisation="error", compile=compile),
                        torch.optim.Adam(net.parameters(), 1e-2), forward_update=forward)
             for net, compile in ((model, True), (other, False))]
    for k in range(3):
        data = {"x": randn(5, 8, seed=k, dtype=dtype), "y": one_hot(torch.arange(5) % 4, 4).to(dtype)}
        a, b = (rule.step(data) for rule in rules)
        assert a["energy"] == pytest.approx(b["energy"], rel=rel)
        for p, q in zip(model.parameters(), other.parameters()):
            assert float((p.grad - q.grad).norm()) <= rel * float(q.grad.norm())
            assert float((p - q).detach().norm()) <= rel * float(q.detach().norm())
