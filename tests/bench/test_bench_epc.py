"""``pclab bench epc``: the steps-to-equilibrium definitions and the suite's record."""

from __future__ import annotations

import pytest
import torch

from pclab.bench import SUITES, summary
from pclab.bench.epc import compare, energy_trace, equilibrium_energy, steps_to_equilibrium
from pclab.bench.epc import summary as epc_summary
from pclab.core import SGD, Inference, relax
from pclab.models import mlp


def test_steps_to_equilibrium_follows_its_definition():
    falling = torch.tensor([10.0, 5.0, 2.0, 1.01, 1.0, 1.0], dtype=torch.float64)
    assert steps_to_equilibrium(falling, target=1.0) == (4, True)  # 1.01 - 1 > 1e-3 * 9
    assert steps_to_equilibrium(falling, target=1.0, tolerance=1e-2) == (3, True)
    rising = torch.tensor([10.0, 1.0, 1.5, 1.0], dtype=torch.float64)
    assert steps_to_equilibrium(rising, target=1.0) == (1, False)
    assert steps_to_equilibrium(torch.tensor([10.0, 9.0, float("nan")], dtype=torch.float64), target=1.0)[1] is False


def test_the_equilibrium_energy_ignores_diverged_step_sizes():
    stable = torch.tensor([10.0, 4.0, 3.0, 3.0], dtype=torch.float64)
    diverged = torch.tensor([10.0, 1.0, 50.0, float("nan")], dtype=torch.float64)
    assert equilibrium_energy(torch.stack([stable, diverged], dim=1)) == 3.0


def test_the_batched_trace_is_relax_s_own_energy_for_each_step_size():
    torch.manual_seed(0)
    model = mlp([6, 5, 5, 3], "tanh").double()
    clamp = {"x": torch.randn(2, 6, dtype=torch.float64), "y": torch.randn(2, 3, dtype=torch.float64)}
    for parametrisation in ("state", "error"):
        trace = energy_trace(model, clamp, [0.05, 0.2], 8, parametrisation)
        for i, lr in enumerate([0.05, 0.2]):
            relaxed = relax(model, clamp, Inference(8, SGD(lr), parametrisation=parametrisation), record=True)
            expected = torch.tensor(relaxed.trajectory.total_energy(), dtype=torch.float64) * 2  # batch means -> sums
            assert torch.allclose(trace[:, i], expected, rtol=1e-12, atol=0)


def test_the_suite_records_both_methods_at_each_depth():
    assert "epc" in SUITES
    result = compare(depths=(3,), cap=40, batch=2, width=8, grid=(0.1, 0.3), timed_steps=2, rounds=1, compiled=False)
    row = result["rows"][0]
    assert "error_compiled" not in row
    assert row["depth"] == 3 and row["energy_equilibrium"] <= row["energy_start"]
    for p in ("state", "error"):
        assert set(row[p]) >= {"steps", "lr", "step_ms", "step_ms_best", "time_to_equilibrium_ms", "stable_lrs"}
        assert row[p]["step_ms"] > 0
    lines = epc_summary(result)
    assert len(lines) == 2 and "depth  3" in lines[1]
    text = summary({"machine": {"cpu": "x", "cores": 1, "torch": "t", "torch_threads": 1}, "matmul_gflops": {}, "epc": result})
    assert "sPC vs ePC to equilibrium" in text


@pytest.mark.slow  # (compiling)
@pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")
def test_the_suite_times_the_compiled_epc_step_beside_the_eager_one():
    result = compare(depths=(3,), cap=40, batch=2, width=8, grid=(0.1, 0.3), timed_steps=2, rounds=1)
    row = result["rows"][0]
    fast, eager = row["error_compiled"], row["error"]
    assert fast["steps"] == eager["steps"] and fast["lr"] == eager["lr"] and fast["compile_seconds"] > 0
    assert fast["step_ms"] > 0 and fast["speedup"] == pytest.approx(eager["step_ms"] / fast["step_ms"])
    assert "ePC compiled" in epc_summary(result)[1]
