"""The speed benchmark harness runs and counts arithmetic correctly (no timing assertions)."""

from __future__ import annotations

import pytest

from pclab import bench


def test_fit_line_recovers_a_line():
    fit = bench.fit_line([1, 2, 3, 4], [3.0, 5.0, 7.0, 9.0])
    assert fit["slope"] == pytest.approx(2.0) and fit["intercept"] == pytest.approx(1.0) and fit["r2"] == pytest.approx(1.0)


def test_backprop_flop_count_matches_the_formula():
    widths = [20, 8, 8, 3]
    model = bench.mlp_pcn(widths)
    (x, y), = bench.data(4, 1, (20,), classes=3)
    counted = bench.counted_flops(bench.make_algorithm("bp", model, 2), x, y)
    assert counted == bench.mlp_flops(widths, 4, 2)["bp"]["flops"]


def test_fast_pc_does_no_more_arithmetic_than_the_nominal_algorithm():
    widths = [20, 8, 8, 3]
    model = bench.mlp_pcn(widths)
    (x, y), = bench.data(4, 1, (20,), classes=3)
    counted = bench.counted_flops(bench.make_algorithm("pc", model, 5), x, y)
    assert 0 < counted <= bench.mlp_flops(widths, 4, 5)["pc"]["flops"]


def test_in_place_products_are_counted_like_their_out_of_place_forms():
    import torch

    a, b, c = torch.randn(3, 4), torch.randn(4, 5), torch.zeros(3, 5)

    def step(x, y):
        torch.addmm(c, a, b)
        c.addmm_(a, b)

    assert bench.counted_flops(step, a, b) == 2 * (2 * 3 * 4 * 5)


def test_the_algorithms_suite_reports_bp_through_inference_against_pc_at_equal_T():
    entries = bench.algorithms(("mlp128",), ("bp", "pc", "bpti"), batch=2, steps=2, chunk=1, rounds=1)
    ratio = entries[0]["bpti_over_pc"]
    assert set(ratio) == {"eager"} and ratio["eager"] > 0
    result = {"machine": bench.machine(), "matmul_gflops": {}, "algorithms": entries}
    assert f"bp-through-inference / PC at equal T: eager {ratio['eager']:.2f} (target <= 2)" in bench.summary(result)


class _FakeTimer(bench.ChunkTimer):
    def __init__(self, per_batch: float):
        self.per_batch, self.calls = per_batch, []

    def time(self, start: int, count: int) -> float:
        self.calls.append((start, count))
        return self.per_batch * count


def test_a_chunk_timer_is_timed_in_its_turn_with_the_step_functions():
    seen = []
    timer = _FakeTimer(0.25)
    import torch

    batches = [(torch.tensor(i), torch.tensor(i)) for i in range(8)]
    timings = bench.interleaved({"f": lambda x, y: seen.append(x), "ext": timer}, batches, chunk=2, rounds=3, warmup=1)
    assert timings["ext"].chunks == [0.25, 0.25, 0.25]
    assert len(seen) == 1 + 3 * 2  # its warm-up, then a chunk a round; the timer gets no warm-up calls
    starts = [start for start, _ in timer.calls]
    assert len(set(starts)) == 3 and all(count == 2 for _, count in timer.calls)  # a fresh chunk each round


STAND_IN = """
import json, sys
print(json.dumps({"ready": True, "pcx_version": "stand-in", "jax_version": "none", "pc_compile_s": 0.5, "bp_compile_s": 0.1}), flush=True)
for line in sys.stdin:
    r = json.loads(line)
    print(json.dumps({"seconds": (0.002 if r["what"] == "pc" else 0.0005) * r["count"]}), flush=True)
"""


def test_pcx_timed_in_the_target_rounds_through_the_worker_protocol(tmp_path):
    """The worker protocol of ``pcx_script.py --serve`` with a stand-in process (no JAX here):
    PCX's chunks join the target's rounds, and the pclab/PCX ratios come from them."""
    import sys

    script = tmp_path / "stand_in.py"
    script.write_text(STAND_IN)
    with bench.PcxWorker([sys.executable, str(script)]) as worker:
        result = bench.target(batch=4, steps=2, chunk=2, rounds=2, compile=False, pcx=worker)
        pcx = bench.pcx_from_target(worker, result)
    assert worker.process.returncode == 0
    rows = {r["algorithm"]: r for r in result["rows"]}
    assert rows["pcx-pc"]["batch_ms"] == pytest.approx(2.0) and rows["pcx-bp"]["batch_ms"] == pytest.approx(0.5)
    pc = rows["pc"]["batch_ms"]
    assert result["ratio_to_pcx_pc"]["pc"]["median"] == pytest.approx(pc / 2.0)
    assert pcx["pclab_pc_over_pcx_pc"] == pytest.approx(pc / 2.0) and pcx["pc_over_bp"] == pytest.approx(4.0)
    assert pcx["pcx_version"] == "stand-in" and pcx["interleaved_with_target"]
    text = bench.summary({"machine": bench.machine(), "matmul_gflops": {}, "target": result, "pcx": pcx})
    assert "timed in the target's rounds" in text and "median of the rounds' own ratios" in text


def test_a_pcx_worker_that_fails_to_start_says_why(tmp_path):
    import sys

    script = tmp_path / "broken.py"
    script.write_text("import sys\nsys.exit('no pcx here')\n")
    with pytest.raises(RuntimeError, match="no pcx here"):
        bench.PcxWorker([sys.executable, str(script)])


def test_every_algorithm_steps_on_mlp_and_conv():
    for kind in ("mlp128", "conv"):
        model, shape = bench.model_of(kind)
        (x, y), = bench.data(2, 1, shape)
        for name in ("bp", "pc", "pc-reference", "ipc", "bpti", "bpti-ckpt", "bpti-x"):
            bench.make_algorithm(name, model, 2)(x, y)


def test_run_speed_benchmark_returns_the_target_ratio(monkeypatch):
    monkeypatch.setattr(bench.hardware, "matmul_rate", lambda repeats=30, device=None, batch=64: {f"{batch}x128x128": 1.0})
    result = bench.run_speed_benchmark(suites=("target",), quick=True, compile=False, threads=1)
    assert set(result["target"]["ratio_to_bp"]) == {"pc"}
    assert result["target"]["ratio_to_bp"]["pc"]["median"] > 0
    assert "target" in bench.summary(result)
    # at 1 GFLOP/s one 64x128x128 product takes 2.1 ms: the sequential products dominate the bound
    assert result["target"]["floor"]["ratio_floor"] > 1 + 2 * 2.0e-3 / (result["target"]["floor"]["bp_batch_us"] * 1e-6)
    assert "pc/bp >=" in bench.summary(result)
    with pytest.raises(ValueError, match="unknown benchmark suites"):
        bench.run_speed_benchmark(suites=("nope",))


def test_ratio_floor_is_one_plus_the_sequential_products_over_bp():
    target = {"batch": 64, "steps": 20, "widths": [784, 128, 128, 10],
              "rows": [{"algorithm": "bp", "batch_ms": 1.0}, {"algorithm": "pc", "batch_ms": 3.0}]}
    rate = 2 * 64 * 128 * 128 / 1e-3 / 1e9  # GFLOP/s at which one 64x128x128 product takes 1 ms
    floor = bench.ratio_floor(target, rate_gflops=rate)
    assert floor["product_us"] == pytest.approx(1000.0)
    assert floor["ratio_floor"] == pytest.approx(1 + 19 * 1.0 / 1.0)  # bp takes 1 ms, 19 extra products


def test_the_bpti_suite_times_each_pair_alone_and_reports_the_rounds_own_ratios():
    entries = bench.bpti_ratio(("mlp128",), batch=2, steps=2, rounds=3, compile=False, chunks={"mlp128": 1})
    (entry,) = entries
    eager = entry["eager"]
    assert set(entry) >= {"model", "chunk", "rounds", "eager"} and "compiled" not in entry
    assert len(eager["ratios"]) == 3 and all(r > 0 for r in eager["ratios"])
    assert eager["paired_median"] == pytest.approx(sorted(eager["ratios"])[1])
    assert eager["range"][0] <= eager["quartiles"][0] <= eager["paired_median"] <= eager["quartiles"][1] <= eager["range"][1]
    text = bench.summary({"machine": bench.machine(), "matmul_gflops": {}, "bpti": entries})
    assert f"mlp128  (chunks of 1, 3 rounds) eager {eager['paired_median']:.2f}" in text and "target <= 2" in text
    # the relaxation moves (input and label clamped): the reverse pass adds products to PC's
    assert entry["flops_ratio"] > 1 and f"FLOPs {entry['flops_ratio']:.2f}x PC's" in text
