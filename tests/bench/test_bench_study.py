"""``pclab bench study``: phases of a study preset's runs, the products of a step, the command line
(structure and arithmetic only: no timing assertions)."""

from __future__ import annotations

import json
import math

import pytest
import torch

from pclab.bench import BenchError, study
from pclab.bench import main as bench_main


def test_capture_products_sees_each_matrix_product_with_its_operands():
    a, b, c = torch.randn(4, 3), torch.randn(3, 5), torch.randn(5)
    x, y = torch.randn(2, 4, 3), torch.randn(2, 3, 6)
    products = study.capture_products(lambda: (a @ b, torch.addmm(c, a, b), torch.bmm(x, y), torch.nn.functional.linear(a, b.T, c),
                                               (a + 1).relu()))
    assert [(op, shapes) for op, shapes, _, _ in products] == [
        ("mm", [(4, 3), (3, 5)]), ("addmm", [(4, 3), (3, 5)]), ("bmm", [(2, 4, 3), (2, 3, 6)]), ("addmm", [(4, 3), (3, 5)])]
    assert study.products_seconds(products, repeats=2) > 0 and study.products_seconds([]) == 0.0


def test_phase_clock_sums_the_time_of_each_named_phase():
    clock = study.PhaseClock()
    for name in ("a", "b", "a"):
        with clock(name):
            pass
    assert set(clock.seconds) == {"a", "b"} and all(v >= 0 for v in clock.seconds.values())


@pytest.mark.parametrize("stack", [False, True])
def test_profile_of_the_tiny_preset_splits_each_kind_into_phases_and_extrapolates(stack):
    result = study.profile_tradeoff("tiny", {"ways": ["bp"], "seeds": [0, 1]}, batches=2, stack=stack, startup=False)
    (kind,) = result["kinds"]
    assert (kind["way"], kind["complexity"], kind["latent"], kind["runs"]) == ("bp", "small", 2, 6)
    assert kind["members"] == (6 if stack else 1) and kind["units"] == (1 if stack else 6)
    assert kind["timed_batches"] == 2 and kind["batches_per_epoch"] == math.ceil(400 / 32)  # tiny: 400 images, batch 32
    assert {"data", "build", "train", "evaluate", "probes"} <= set(kind["phases"]) and "grid" in kind["phases"]
    assert kind["small_batch"] == 2 and kind["step_ms"] > 0 and kind["step_small_ms"] > 0 and kind["products_ms"] > 0
    assert 0 <= kind["fixed_ms"] <= kind["step_ms"] and kind["fixed_share"] == pytest.approx(kind["fixed_ms"] / kind["step_ms"])
    assert kind["bound"] == ("overhead" if kind["fixed_share"] >= 0.5 else "arithmetic")
    e = kind["extrapolated"]
    assert e["batches"] == pytest.approx(kind["epochs"] * kind["batches_per_epoch"] * kind["per_batch_ms"] / 1e3)
    assert e["fixed"] == pytest.approx(e["batches"] * kind["fixed_share"]) and e["products"] == pytest.approx(e["batches"] * kind["products_share"])
    assert result["work_total"] == pytest.approx(sum(v for k, v in e.items() if k not in ("fixed", "products")) * kind["units"])
    assert result["longest_unit"] == kind["unit_seconds"] and result["wall_estimate"] >= max(result["work_total"] / 2, kind["unit_seconds"])
    assert result["complete"] and "whole preset" in study.summary(result)


def test_a_stacked_steps_products_are_batched_and_a_single_runs_plain():
    from pclab.studies import tradeoff

    trials = [p for p in tradeoff.trials(tradeoff.study_config("tiny")) if p["way"] == "bp"]
    histories = [[{}]] * len(trials)
    plain = study.capture_products(study._steppers(trials[:1], histories)(32))
    batched = study.capture_products(study._steppers(trials, histories)(32))
    # way (a) on Small: encoder, decoder and head forward (3), their weight gradients (3), the latent's gradient from decoder and head (2)
    assert len(batched) == 8 <= len(plain)
    assert {op for op, *_ in plain} <= {"mm", "addmm"}
    assert {op for op, *_ in batched} <= {"bmm", "baddbmm"} and all(shapes[0][0] == len(trials) == 3 for _, shapes, *_ in batched)
    costs = study.step_costs(study._steppers(trials, histories), 32, repeats=2)
    assert costs["small"] == 2 and 0 <= costs["fixed"] <= costs["step"]


def test_the_command_line_writes_json_and_refuses_bad_arguments(tmp_path, capsys):
    out = tmp_path / "profile.json"
    bench_main(["study", "tradeoff", "--preset", "tiny", "--batches", "1", "--no-startup", "--kinds", "1", "--json", str(out)])
    printed = capsys.readouterr().out
    assert "overhead" in printed and "profiled kinds" in printed
    saved = json.loads(out.read_text())
    assert saved["command"].startswith("pclab bench study tradeoff") and len(saved["kinds"]) == 1 and not saved["complete"]
    with pytest.raises(BenchError, match="unknown tradeoff preset"):
        bench_main(["study", "tradeoff", "--preset", "nope", "--no-startup"])
    with pytest.raises(BenchError, match="expected integers >= 1"):
        bench_main(["study", "tradeoff", "--batches", "0"])
    with pytest.raises(BenchError, match="tradeoff study setting"):
        bench_main(["study", "tradeoff", "--set", "epochs=0", "--no-startup"])
