"""``pclab bench --device``: the device reaches every suite's models, data and clock; the CUDA
paths that can be checked without a GPU are checked with CUDA's entry points monkeypatched (no
timing or memory assertions); tests that need a real GPU are skipped without one."""

from __future__ import annotations

import subprocess
import types

import pytest
import torch

from pclab import bench

CUDA = torch.device("cuda")
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without CUDA")


@pytest.fixture
def fake_cuda(monkeypatch):
    """Run the suites with ``device=cuda`` on the CPU: model and data builders record the device
    they were asked for and build on the CPU; the synchronise helper records its calls."""
    seen: dict[str, list] = {"models": [], "data": [], "sync": []}
    real_mlp, real_conv, real_data = bench.mlp_pcn, bench.conv_pcn, bench.data

    def mlp_pcn(widths, activation="tanh", seed=0, device="cpu"):
        seen["models"].append(torch.device(device))
        return real_mlp(widths, activation, seed)

    def conv_pcn(seed=0, device="cpu"):
        seen["models"].append(torch.device(device))
        return real_conv(seed)

    def data(batch, batches, shape=(784,), classes=10, seed=0, device="cpu"):
        seen["data"].append(torch.device(device))
        return real_data(batch, batches, shape, classes, seed)

    monkeypatch.setattr(bench.models, "mlp_pcn", mlp_pcn)
    monkeypatch.setattr(bench.models, "conv_pcn", conv_pcn)
    monkeypatch.setattr(bench.timing, "data", data)
    monkeypatch.setattr(bench.hardware, "synchronize", lambda device: seen["sync"].append(torch.device(device)))
    return seen


def test_every_timing_suite_builds_on_the_device_and_synchronises_it(fake_cuda):
    target = bench.target(batch=2, steps=2, chunk=1, rounds=1, compile=False, device=CUDA)
    entries = bench.algorithms(("mlp128", "conv"), ("bp", "pc"), batch=2, steps=2, chunk=1, rounds=1, device=CUDA)
    scaling = bench.scaling(ts=(2, 3), depths=(3, 4), widths=(8,), batch=2, chunk=1, rounds=1, device=CUDA)
    assert target["device"] == scaling["device"] == "cuda"
    assert [e["device"] for e in entries] == ["cuda", "cuda"]
    assert len(fake_cuda["models"]) == 1 + 2 + 1 + 2  # target, algorithms, scaling vs T, scaling vs depth
    assert set(fake_cuda["models"]) == set(fake_cuda["data"]) == set(fake_cuda["sync"]) == {CUDA}


def test_cpu_run_records_the_device_and_keeps_everything_on_the_cpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    rated = []
    monkeypatch.setattr(bench.hardware, "matmul_rate", lambda repeats=30, device=None, batch=64: rated.append(device) or {f"{batch}x128x128": 1.0})
    made = []
    real_make = bench.make_algorithm

    def make_algorithm(name, model, steps, *args, **kwargs):
        made.append({p.device for p in model.parameters()})
        return real_make(name, model, steps, *args, **kwargs)

    monkeypatch.setattr(bench.steps, "make_algorithm", make_algorithm)
    result = bench.run_speed_benchmark(suites=("target",), quick=True, compile=False, threads=1, device="auto")
    assert result["config"]["device"] == "auto"
    assert result["machine"]["device"] == result["target"]["device"] == "cpu"
    assert "gpu" not in result["machine"]
    assert rated == [torch.device("cpu")]
    assert made and all(devices == {torch.device("cpu")} for devices in made)
    assert "device:" not in bench.summary(result)  # the CPU summary is unchanged


def test_synchronise_is_a_no_op_on_the_cpu_and_waits_for_cuda(monkeypatch):
    calls = []
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: calls.append(device))
    bench.synchronize(torch.device("cpu"))
    bench.clock(torch.device("cpu"))
    assert calls == []
    bench.synchronize(CUDA)
    bench.clock(CUDA)
    assert calls == [CUDA, CUDA]


def test_interleaved_synchronises_at_every_chunk_boundary(monkeypatch):
    calls = []
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: calls.append(device))
    steps = {"a": lambda x, y: None, "b": lambda x, y: None}
    batches = [(torch.zeros(1), torch.zeros(1))] * 2
    timings = bench.interleaved(steps, batches, chunk=3, rounds=2, device=CUDA)
    assert calls == [CUDA] * (2 * 2 * 2)  # before and after each of 2 algorithms x 2 rounds
    assert all(len(t.chunks) == 2 for t in timings.values())
    calls.clear()
    bench.interleaved(steps, batches, chunk=3, rounds=2)  # the batches' device: the CPU
    assert calls == []


def test_memory_probe_is_chosen_by_device(monkeypatch):
    runs, cuda_calls = [], []

    def run(cmd, **kwargs):
        runs.append(cmd)
        return subprocess.CompletedProcess(cmd, 0, stdout='{"heap": 1.0, "rss": 2.0}\n', stderr="")

    def cuda_probe(algorithm, steps, batch, widths, device):
        cuda_calls.append((algorithm, steps, torch.device(device)))
        return {"heap": 3.0, "rss": 4.0}

    monkeypatch.setattr(subprocess, "run", run)
    monkeypatch.setattr(bench.peak_memory, "cuda_peak_memory_mib", cuda_probe)
    assert bench.peak_memory_mib("pc", 10) == {"heap": 1.0, "rss": 2.0}
    assert len(runs) == 1 and "pclab.bench.heap_probe" in runs[0] and cuda_calls == []
    result = bench.memory(ts=(10, 20), algorithms_=("pc",), device=CUDA)
    assert len(runs) == 1 and cuda_calls == [("pc", 10, CUDA), ("pc", 20, CUDA)]
    assert result["device"] == "cuda" and result["rows"][0] == {"T": 10, "pc": 3.0, "pc_rss": 4.0}
    assert "allocated" in result["model"]


def test_cuda_memory_probe_reads_the_allocator_peaks_after_a_warm_up(monkeypatch, fake_cuda):
    counters = {"allocated": 10 * 2**20, "reserved": 20 * 2**20, "peak_allocated": 13 * 2**20, "peak_reserved": 24 * 2**20}
    events = []
    real_make = bench.make_algorithm

    def make_algorithm(name, model, steps):
        step = real_make(name, model, steps)
        return lambda x, y: (events.append("step"), step(x, y))

    monkeypatch.setattr(bench.steps, "make_algorithm", make_algorithm)
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device=None: counters["allocated"])
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda device=None: counters["reserved"])
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda device=None: counters["peak_allocated"])
    monkeypatch.setattr(torch.cuda, "max_memory_reserved", lambda device=None: counters["peak_reserved"])
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", lambda device=None: events.append("reset"))
    out = bench.cuda_peak_memory_mib("pc", 2, batch=2, widths=(12, 6, 3), device=CUDA)
    assert out == {"heap": 3.0, "rss": 4.0}
    assert events == ["step", "reset", "step"]  # the warm-up step's allocations are not counted
    assert fake_cuda["models"] == fake_cuda["data"] == [CUDA]


def test_machine_names_the_gpu(monkeypatch):
    props = types.SimpleNamespace(name="Test GPU", total_memory=8 * 2**30, major=8, minor=6, multi_processor_count=40)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda index: props)
    monkeypatch.setattr(torch.version, "cuda", "12.4")
    monkeypatch.setattr(bench.hardware, "gpu_driver", lambda index: "550.54")
    record = bench.machine(CUDA)
    assert record["device"] == "cuda" and record["gpu"] == "Test GPU" and record["gpu_memory_gib"] == 8.0
    assert record["cuda"] == "12.4" and record["driver"] == "550.54" and record["gpu_capability"] == "8.6"
    text = bench.summary({"machine": record, "matmul_gflops": {}})
    assert "device: cuda, Test GPU, 8.0 GiB, CUDA 12.4, driver 550.54" in text
    assert "gpu" not in bench.machine(torch.device("cpu"))


def test_device_names_resolve_or_fail_in_one_line(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert bench.resolve_device("auto") == CUDA
    assert bench.resolve_device("cuda:0") == torch.device("cuda:0")
    with pytest.raises(bench.BenchError, match=r"cuda:0 \.\. cuda:0"):
        bench.resolve_device("cuda:1")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert bench.resolve_device("auto") == bench.resolve_device("CPU") == torch.device("cpu")
    for bad in ("tpu", "mps", "cuda:x"):
        with pytest.raises(bench.BenchError, match="expected cpu, cuda, cuda:N or auto"):
            bench.resolve_device(bad)


@no_cuda
def test_cuda_without_cuda_is_a_one_line_error_with_exit_code_2(capsys):
    with pytest.raises(bench.BenchError, match="--device cuda: CUDA is not available"):
        bench.run_speed_benchmark(suites=("target",), device="cuda")
    with pytest.raises(SystemExit) as exit_:
        bench.script_main(["target", "--device", "cuda"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: --device cuda: CUDA is not available")


@needs_cuda
def test_suites_run_on_a_real_gpu():
    result = bench.run_speed_benchmark(suites=("target", "memory"), quick=True, compile=False, threads=1, device="cuda")
    assert result["machine"]["gpu"] and result["target"]["device"] == "cuda"
    assert set(result["matmul_gflops"]) == {"1024x1024x1024", "64x784x128", "64x128x128"}
    assert all(row["pc"] > 0 and row["bpti"] > 0 for row in result["memory"]["rows"])
    assert "device: cuda" in bench.summary(result)
