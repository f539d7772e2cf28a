"""``Inference(compile=True)``: the compiled Dense-chain path gives the eager fast path's numbers.

Compiling takes seconds (tens on a cold Inductor cache), so this file is marked slow.
"""

from __future__ import annotations

import pytest
import torch
from perf_chains import chain, max_rel, randn, twin

from pclab.core import SGD, Inference, PCLearning, compiled, relax

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")]


def test_compiled_pc_steps_equal_the_eager_fast_path_and_serve_only_their_batch_size():
    model = chain([12, 8, 8, 4], "tanh", dtype=torch.float32)
    other = twin(model)
    eager = PCLearning(other, Inference(steps=2, optimizer=SGD(0.1)), torch.optim.SGD(other.parameters(), 0.05))
    fast = PCLearning(model, Inference(steps=2, optimizer=SGD(0.1), compile=True), torch.optim.SGD(model.parameters(), 0.05))
    before = len(compiled.CACHE.entries)
    for k, batch in enumerate([6, 6, 3, 6]):  # batch 3 runs on the eager path
        data = {"x": randn(batch, 12, seed=k, dtype=torch.float32), "y": randn(batch, 4, seed=50 + k, dtype=torch.float32)}
        a, b = fast.step(data), eager.step(data)
        assert a["energy"] == pytest.approx(b["energy"], rel=1e-5)
        for p, q in zip(model.parameters(), other.parameters()):
            assert float((p - q).detach().norm()) <= 1e-5 * float(q.detach().norm())
    assert len(compiled.CACHE.entries) == before + 1
    entry = list(compiled.CACHE.entries.values())[-1]
    assert entry.batch == 6 and entry.compile_seconds is not None


def test_compiled_relaxation_equals_the_eager_fast_path():
    model = chain([12, 8, 8, 4], "tanh", dtype=torch.float32)
    x = randn(5, 12, seed=1, dtype=torch.float32)
    inference = Inference(steps=3, optimizer=SGD(0.1))
    eager = relax(model, {"x": x}, inference)
    fast = relax(model, {"x": x}, Inference(steps=3, optimizer=SGD(0.1), compile=True))
    assert fast.chain is None and eager.chain is not None
    assert max_rel(fast.values, eager.values) < 1e-5
    assert max_rel(fast.initial, eager.initial) < 1e-6


def test_a_hook_added_after_compiling_sends_the_step_back_to_the_general_path():
    model = chain([12, 8, 8, 4], "tanh", dtype=torch.float32)
    rule = PCLearning(model, Inference(steps=2, optimizer=SGD(0.1), compile=True), torch.optim.SGD(model.parameters(), 0.0))
    data = {"x": randn(6, 12, seed=3, dtype=torch.float32), "y": randn(6, 4, seed=4, dtype=torch.float32)}
    rule.step(data)
    model.module("x", "h1").register_forward_hook(lambda module, inputs, out: 2.0 * out)
    other = twin(model)  # the hook comes along
    expected = PCLearning(other, Inference(steps=2, optimizer=SGD(0.1), method="manual"), torch.optim.SGD(other.parameters(), 0.0))
    assert rule.step(data)["energy"] == pytest.approx(expected.step(data)["energy"], rel=1e-6)


def test_a_run_with_inference_compile_learns_like_the_eager_run_and_reports_compile_time_apart(tmp_path, tiny):
    from pclab.train import train

    eager = train(tiny("epochs=1"), tmp_path / "eager", progress=False)
    fast = train(tiny("epochs=1", "inference.compile=true"), tmp_path / "compiled", progress=False)
    record = fast["history"][0]
    # float32 kernels differ in rounding only: the same energies, at most one of 128 test images flips
    assert record["train_energy"] == pytest.approx(eager["history"][0]["train_energy"], rel=1e-4)
    assert fast["test_accuracy"] == pytest.approx(eager["test_accuracy"], abs=1 / 128 + 1e-9)
    assert record["compile_seconds"] > 0 and record["epoch_seconds"] > 0
    assert "compile_seconds" not in eager["history"][0]
