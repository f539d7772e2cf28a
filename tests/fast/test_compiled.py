"""``Inference(compile=True)``: the compiled Dense-chain path gives the eager fast path's numbers.

Compiling takes seconds (tens on a cold Inductor cache), so this file is marked slow.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch._dynamo.utils import counters

from nets import max_rel, mlp, randn, twin
from pclab.core import SGD, IncrementalPC, Inference, PCLearning, relax
from pclab.core.fast import compiled, path

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")]


def test_compiled_pc_steps_equal_the_eager_fast_path_and_serve_only_their_batch_size():
    model = mlp([12, 8, 8, 4], "tanh", dtype=torch.float32)
    other = twin(model)
    eager = PCLearning(other, Inference(steps=2, optimizer=SGD(0.1)), torch.optim.SGD(other.parameters(), 0.05))
    fast = PCLearning(model, Inference(steps=2, optimizer=SGD(0.1), compile=True), torch.optim.SGD(model.parameters(), 0.05))
    before = set(compiled.CACHE.entries)  # (other tests' entries: the cache keeps the newest 8)
    for k, batch in enumerate([6, 6, 3, 6]):  # batch 3 runs on the eager path
        data = {"x": randn(batch, 12, seed=k, dtype=torch.float32), "y": randn(batch, 4, seed=50 + k, dtype=torch.float32)}
        a, b = fast.step(data), eager.step(data)
        assert a["energy"] == pytest.approx(b["energy"], rel=1e-5)
        for p, q in zip(model.parameters(), other.parameters()):
            assert float((p - q).detach().norm()) <= 1e-5 * float(q.detach().norm())
    new = [e for key, e in compiled.CACHE.entries.items() if key not in before]
    assert len(new) == 1  # one compiled step, serving batch 6 only
    assert new[0].batch == 6 and new[0].compile_seconds is not None


def test_compiled_relaxation_equals_the_eager_fast_path():
    model = mlp([12, 8, 8, 4], "tanh", dtype=torch.float32)
    x = randn(5, 12, seed=1, dtype=torch.float32)
    inference = Inference(steps=3, optimizer=SGD(0.1))
    eager = relax(model, {"x": x}, inference)
    fast_inference = Inference(steps=3, optimizer=SGD(0.1), compile=True)
    fast = relax(model, {"x": x}, fast_inference)
    assert path(model, fast_inference, batch={"x": x}) == "compiled-chain" and path(model, inference, batch={"x": x}) == "chain"
    assert max_rel(fast.values, eager.values) < 1e-5
    assert max_rel(fast.initial, eager.initial) < 1e-6


def test_a_hook_added_after_compiling_sends_the_step_back_to_the_general_path():
    model = mlp([12, 8, 8, 4], "tanh", dtype=torch.float32)
    rule = PCLearning(model, Inference(steps=2, optimizer=SGD(0.1), compile=True), torch.optim.SGD(model.parameters(), 0.0))
    data = {"x": randn(6, 12, seed=3, dtype=torch.float32), "y": randn(6, 4, seed=4, dtype=torch.float32)}
    rule.step(data)
    model.module("x", "h1").register_forward_hook(lambda module, inputs, out: 2.0 * out)
    other = twin(model)  # the hook comes along
    expected = PCLearning(other, Inference(steps=2, optimizer=SGD(0.1), method="manual"), torch.optim.SGD(other.parameters(), 0.0))
    assert rule.step(data)["energy"] == pytest.approx(expected.step(data)["energy"], rel=1e-6)


@pytest.mark.parametrize("schedule,rule", [("constant", "pc"), ("cosine", "pc"), ("cosine", "ipc"), ("cosine", "bp-through-inference")])
def test_a_run_with_inference_compile_learns_like_the_eager_run_and_reports_compile_time_apart(tmp_path, tiny, schedule, rule):
    from pclab.train import train

    settings = ("epochs=1", f"learning.schedule={schedule}", f"learning.rule={rule}")
    eager = train(tiny(*settings), tmp_path / "eager", progress=False)
    fast = train(tiny(*settings, "inference.compile=true"), tmp_path / "compiled", progress=False)
    record = fast["history"][0]
    # float32 kernels differ in rounding only: the same energies (losses), at most one of 128 test images flips
    key = "train_loss" if rule == "bp-through-inference" else "train_energy"
    assert record[key] == pytest.approx(eager["history"][0][key], rel=1e-4)
    assert fast["test_accuracy"] == pytest.approx(eager["test_accuracy"], abs=1 / 128 + 1e-9)
    assert record["compile_seconds"] > 0 and record["epoch_seconds"] > 0
    assert "compile_seconds" not in eager["history"][0]


def _twins(optimizer, scheduler: bool = False):
    """An eager and a compiled PC rule on twin chains, each with its own ``optimizer(params)``."""
    model = mlp([12, 8, 8, 4], "tanh", dtype=torch.float32)
    other = twin(model)
    rules = []
    for m, compile in ((other, False), (model, True)):
        opt = optimizer(m.parameters())
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda k: 0.5**k) if scheduler else None
        rules.append(PCLearning(m, Inference(steps=3, optimizer=SGD(0.1), compile=compile), opt, sched))
    return rules


def _batch(k: int) -> dict[str, torch.Tensor]:
    return {"x": randn(6, 12, seed=k, dtype=torch.float32), "y": randn(6, 4, seed=50 + k, dtype=torch.float32)}


def _assert_same(eager: PCLearning, fast: PCLearning, rel: float = 1e-5) -> None:
    for p, q in zip(fast.model.parameters(), eager.model.parameters()):
        assert float((p - q).detach().norm()) <= rel * float(q.detach().norm())
        assert float((p.grad - q.grad).norm()) <= rel * float(q.grad.norm())  # left in .grad, as backward would


def _kinds(before: set) -> list[str]:
    """The kinds of compiled functions made since the cache held ``before`` (it evicts the oldest)."""
    return [key[0] for key in compiled.CACHE.entries if key not in before]


@pytest.mark.parametrize("optimizer", [
    lambda ps: torch.optim.Adam(ps, 0.01),
    lambda ps: torch.optim.AdamW(ps, 0.01, weight_decay=0.1, fused=True),
    lambda ps: torch.optim.Adam(ps, 0.01, weight_decay=0.01, amsgrad=True, maximize=True),
    lambda ps: torch.optim.SGD(ps, 0.05, momentum=0.9, nesterov=True),
    lambda ps: torch.optim.SGD(ps, 0.05, momentum=0.5, dampening=0.2, weight_decay=0.01),
    lambda ps: torch.optim.SGD(ps, 0.05),
], ids=["adam", "adamw-fused", "adam-amsgrad", "sgd-nesterov", "sgd-dampening", "sgd"])
def test_the_optimiser_step_joins_the_compiled_frame_and_steps_eagerly_once_its_rate_changes(optimizer):
    eager, fast = _twins(optimizer)
    since = set(compiled.CACHE.entries)
    for k in range(3):
        assert fast.step(_batch(k))["energy"] == pytest.approx(eager.step(_batch(k))["energy"], rel=1e-5)
        _assert_same(eager, fast)
    assert _kinds(since) == ["train"]  # relaxation, gradients and optimiser step from one compiled frame
    for rule in (eager, fast):
        rule.optimizer.param_groups[0]["lr"] /= 4
    for k in range(3, 5):
        fast.step(_batch(k)), eager.step(_batch(k))
        _assert_same(eager, fast)
    assert _kinds(since) == ["train", "learn"]  # compiled gradients, eager step at the new rate


@pytest.mark.parametrize("optimizer", [
    lambda ps: torch.optim.Adam(ps, 0.01),
    lambda ps: torch.optim.SGD(ps, 0.05, momentum=0.9),
    lambda ps: torch.optim.SGD(ps, 0.05),
], ids=["adam", "sgd-momentum", "sgd"])
def test_the_update_of_torch_optims_adam_and_sgd_is_traced_into_the_relaxations_graph(optimizer):
    eager, fast = _twins(optimizer)
    stateless = fast.optimizer.defaults.get("momentum") == 0  # plain SGD keeps no state
    graphs = counters["stats"]["unique_graphs"]
    for k in range(4):
        fast.step(_batch(k)), eager.step(_batch(k))
        _assert_same(eager, fast)
        if k == 0:  # stateful optimisers step eagerly first: torch.optim creates their state
            assert counters["stats"]["unique_graphs"] == graphs + (1 if stateless else 0)
    assert counters["stats"]["unique_graphs"] == graphs + 1  # one graph: no second one for the optimiser
    entry = next(e for key, e in compiled.CACHE.entries.items() if key[0] == "train" and key[3] is fast.optimizer)
    assert entry.groups is not None and entry.groups[0].index == (0, 1, 2, 3, 4, 5)


def test_an_optimiser_with_step_hooks_or_of_another_class_steps_from_the_frame_by_its_own_step():
    class Halved(torch.optim.SGD):  # a subclass may change step: torch.optim's own step runs
        pass

    for make in (lambda ps: Halved(ps, 0.05), lambda ps: torch.optim.RMSprop(ps, 0.01), lambda ps: torch.optim.SGD(ps, 0.05)):
        eager, fast = _twins(make)
        calls: list[int] = []
        fast.optimizer.register_step_post_hook(lambda opt, args, kwargs, calls=calls: calls.append(1))
        for k in range(3):
            fast.step(_batch(k)), eager.step(_batch(k))
            _assert_same(eager, fast)
        assert len(calls) == 3
        entry = next(e for key, e in compiled.CACHE.entries.items() if key[0] == "train" and key[3] is fast.optimizer)
        assert entry.groups is None and entry.compile_seconds is not None


@pytest.mark.parametrize("rate", ["float", "tensor"])
def test_with_a_scheduler_a_tensor_rate_keeps_the_optimiser_step_compiled_and_a_float_rate_steps_eagerly(rate):
    lr = 0.01 if rate == "float" else torch.tensor(0.01, dtype=torch.float64)
    eager, fast = _twins(lambda ps: torch.optim.Adam(ps, lr if rate == "float" else lr.clone()), scheduler=True)
    since = set(compiled.CACHE.entries)
    graphs = None
    for k in range(4):
        fast.step(_batch(k)), eager.step(_batch(k))
        _assert_same(eager, fast)
        if k == 1:  # step 0 ran eagerly (torch.optim creates Adam's state), step 1 compiled
            graphs = counters["stats"]["unique_graphs"]
    # a float rate would recompile at every new value: compiled gradients, eager step; a tensor
    # rate is an input of the compiled step, updated in place by the scheduler: nothing recompiles
    assert _kinds(since) == (["learn"] if rate == "float" else ["train"])
    assert counters["stats"]["unique_graphs"] == graphs
    assert float(fast.optimizer.param_groups[0]["lr"]) == pytest.approx(0.01 * 0.5**4)


def test_a_compiled_rule_resumed_from_its_state_dict_makes_the_next_update_of_the_uninterrupted_one():
    _, first = _twins(lambda ps: torch.optim.Adam(ps, 0.01))
    for k in range(2):
        first.step(_batch(k))
    model, state = twin(first.model), copy.deepcopy(first.state_dict())  # as a checkpoint file holds it
    resumed = PCLearning(model, Inference(steps=3, optimizer=SGD(0.1), compile=True), torch.optim.Adam(model.parameters(), 0.01))
    resumed.load_state_dict(state)
    first.step(_batch(2)), resumed.step(_batch(2))
    for p, q in zip(resumed.model.parameters(), first.model.parameters()):
        assert torch.equal(p, q)


def _frozen_twins(**second_group: float) -> tuple[PCLearning, PCLearning, torch.Tensor]:
    """Eager and compiled forward-update PC rules on twin chains whose h1 -> h2 weight is frozen,
    with two Adam parameter groups (the first at lr 0.02, the second with ``second_group``'s
    settings); and the frozen weight's value."""
    model = mlp([12, 8, 8, 4], "tanh", dtype=torch.float32)
    other = twin(model)
    rules = []
    for m, compile in ((other, False), (model, True)):
        m.module("h1", "h2").linear.weight.requires_grad_(False)
        params = list(m.parameters())
        opt = torch.optim.Adam([{"params": params[:2], "lr": 0.02}, {"params": params[2:], **second_group}], 0.01)
        rules.append(PCLearning(m, Inference(steps=3, optimizer=SGD(0.1), compile=compile), opt, forward_update=True))
    return rules[0], rules[1], model.module("h1", "h2").linear.weight.detach().clone()


def test_the_compiled_optimiser_step_keeps_frozen_layers_parameter_groups_forward_update_and_later_hooks():
    eager, fast, frozen = _frozen_twins()
    model, other = fast.model, eager.model
    fast.step(_batch(0)), eager.step(_batch(0))
    calls = []
    fast.optimizer.register_step_pre_hook(lambda opt, args, kwargs: calls.append(1))  # after compiling
    for k in range(1, 4):
        fast.step(_batch(k)), eager.step(_batch(k))
    assert len(calls) == 3
    assert torch.equal(model.module("h1", "h2").linear.weight, frozen) and model.module("h1", "h2").linear.weight.grad is None
    for p, q in zip(model.parameters(), other.parameters()):
        assert float((p - q).detach().norm()) <= 1e-5 * float(q.detach().norm())


def test_the_ninth_compiled_model_of_a_process_is_compiled_too():
    """TorchDynamo keeps at most 8 compiled versions per code object and then runs it eagerly;
    every compiled function here has a code object of its own, so model after model compiles."""
    for seed in range(9):
        model = mlp([12, 8, 8, 4], "tanh", dtype=torch.float32, seed=seed)
        other = twin(model)
        fast = PCLearning(model, Inference(steps=2, optimizer=SGD(0.1), compile=True), torch.optim.SGD(model.parameters(), 0.05))
        eager = PCLearning(other, Inference(steps=2, optimizer=SGD(0.1)), torch.optim.SGD(other.parameters(), 0.05))
        graphs = counters["stats"]["unique_graphs"]
        fast.step(_batch(seed)), eager.step(_batch(seed))
        assert counters["stats"]["unique_graphs"] > graphs  # compiled, not run eagerly
        _assert_same(eager, fast)


@pytest.mark.parametrize("optimizer", [
    lambda ps: torch.optim.Adam(ps, 0.01),
    lambda ps: torch.optim.SGD(ps, 0.05, momentum=0.9),
    lambda ps: torch.optim.RMSprop(ps, 0.01),  # not traceable here: every step eager
], ids=["adam", "sgd-momentum", "rmsprop"])
def test_compiled_incremental_pc_takes_every_weight_step_in_one_graph_as_the_eager_rule_does(optimizer):
    model = mlp([12, 8, 8, 4], "tanh", dtype=torch.float32)
    other = twin(model)
    eager = IncrementalPC(other, Inference(steps=3, optimizer=SGD(0.1)), optimizer(other.parameters()))
    fast = IncrementalPC(model, Inference(steps=3, optimizer=SGD(0.1), compile=True), optimizer(model.parameters()))
    traceable = not isinstance(fast.optimizer, torch.optim.RMSprop)
    since = set(compiled.CACHE.entries)
    for k in range(3):  # the first step runs eagerly: torch.optim creates the optimiser's state
        assert fast.step(_batch(k))["energy"] == pytest.approx(eager.step(_batch(k))["energy"], rel=1e-5)
        # weights after 3 weight steps a batch, and the last step's gradients (float32: Adam's
        # normalised steps carry rounding differences on, hence 1e-4)
        _assert_same(eager, fast, rel=1e-4)
    assert _kinds(since) == (["incremental"] if traceable else [])
    state = fast.optimizer.state[model.module("x", "h1").linear.weight]
    if "step" in state:  # Adam: one weight step per inference step
        assert float(state["step"]) == 9


def test_the_compiled_adam_update_late_in_training_equals_torch_optims():
    """At step t ~ 5000, 0.9^t is far below float32's range: the compiled update takes its bias
    corrections from a float64 count, as eager torch.optim does from a Python float."""
    eager, fast = _twins(lambda ps: torch.optim.Adam(ps, 0.01))
    for k in range(2):
        fast.step(_batch(k)), eager.step(_batch(k))
    for rule in (eager, fast):
        for state in rule.optimizer.state.values():
            state["step"].fill_(5000.0)
    for k in range(2, 4):
        fast.step(_batch(k)), eager.step(_batch(k))
        _assert_same(eager, fast)
    assert all(float(s["step"]) == 5002 and s["step"].dtype == torch.float32 for s in fast.optimizer.state.values())


def test_adams_bias_corrections_are_computed_once_per_step_outside_the_graph():
    """Traced, ``1 - beta^t`` from the state's step count would be evaluated inside the update's
    element loop; the compiled step takes them as an input, computed as eager torch.optim does."""
    eager, fast = _twins(lambda ps: torch.optim.Adam(ps, 0.01, betas=(0.8, 0.99)))
    for k in range(2):  # the first step eager (torch.optim creates the state), the second compiled
        fast.step(_batch(k)), eager.step(_batch(k))
    entry = next(e for key, e in compiled.CACHE.entries.items() if key[0] == "train" and key[3] is fast.optimizer)
    group = entry.groups[0]
    state = [[fast.optimizer.state[p][key] for p in fast.optimizer.param_groups[0]["params"]] for key in group.state_keys]
    corrections = group.corrections(state, updates=3)  # the next three steps, t = 3, 4, 5
    assert corrections.shape == (3, 6, 2) and corrections.dtype == torch.float64
    assert corrections[:, 0, 0].tolist() == [1 - 0.8**t for t in (3, 4, 5)]
    assert corrections[:, 5, 1].tolist() == [(1 - 0.99**t) ** 0.5 for t in (3, 4, 5)]
    for k in range(2, 4):
        fast.step(_batch(k)), eager.step(_batch(k))
        _assert_same(eager, fast)


def test_adam_with_tensor_betas_steps_from_the_frame_by_its_own_step():
    betas = lambda: (torch.tensor(0.9), torch.tensor(0.999))  # noqa: E731
    eager, fast = _twins(lambda ps: torch.optim.Adam(ps, 0.01, betas=betas()))
    for k in range(3):
        fast.step(_batch(k)), eager.step(_batch(k))
        _assert_same(eager, fast)
    entry = next(e for key, e in compiled.CACHE.entries.items() if key[0] == "train" and key[3] is fast.optimizer)
    assert entry.groups is None


def test_the_traced_update_keeps_frozen_layers_and_parameter_groups():
    eager, fast, frozen = _frozen_twins(weight_decay=0.1)
    model, other = fast.model, eager.model
    for k in range(4):
        fast.step(_batch(k)), eager.step(_batch(k))
    entry = next(e for key, e in compiled.CACHE.entries.items() if key[0] == "train" and key[3] is fast.optimizer)
    assert entry.groups is not None and [g.index for g in entry.groups] == [(0, 1), (3, 4, 5)]  # no frozen weight (2)
    assert torch.equal(model.module("h1", "h2").linear.weight, frozen) and model.module("h1", "h2").linear.weight.grad is None
    for p, q in zip(model.parameters(), other.parameters()):
        assert float((p - q).detach().norm()) <= 1e-5 * float(q.detach().norm())


def test_only_guards_that_a_module_reached_under_two_names_is_one_object_are_dropped():
    from torch._dynamo.types import GuardFilterEntry

    def entry(guard_type: str, value: object) -> GuardFilterEntry:
        return GuardFilterEntry(name="x", has_value=True, value=value, guard_type=guard_type, derived_guard_types=(),
                                is_global=True, orig_guard=None)

    tensor = torch.zeros(2)
    entries = [entry("DUPLICATE_INPUT", compiled.chain_adjoint), entry("DUPLICATE_INPUT", tensor), entry("TENSOR_MATCH", tensor),
               entry("ID_MATCH", compiled.chain_adjoint)]
    assert compiled.guard_filter(entries) == [False, True, True, True]
