"""The machine a benchmark runs on: the device, its clock, what it is and its measured matmul rate."""

from __future__ import annotations

import math
import os
import platform
import subprocess
import sys
import time
from typing import Any

import torch


class BenchError(ValueError):
    """A benchmark argument that cannot be used (the ``pclab`` command reports it in one line,
    exit code 2)."""


def resolve_device(name: str | torch.device) -> torch.device:
    """The device ``--device`` names: ``cpu``, ``cuda``, ``cuda:N``, or ``auto`` (CUDA when
    ``torch.cuda.is_available()``, else the CPU). Raises :class:`BenchError` for anything else and
    for a CUDA device this machine does not have."""
    text = str(name).strip().lower()
    if text == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(text)
    except RuntimeError:
        device = None
    if device is None or device.type not in ("cpu", "cuda"):
        raise BenchError(f"--device: expected cpu, cuda, cuda:N or auto, got {str(name)!r}")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise BenchError(f"--device {text}: CUDA is not available on this machine "
                             f"(torch {torch.__version__} finds no usable GPU); use --device cpu or --device auto")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise BenchError(f"--device {text}: this machine has CUDA devices cuda:0 .. cuda:{torch.cuda.device_count() - 1}")
    return device


def synchronize(device: torch.device) -> None:
    """Wait for the work queued on ``device`` (CUDA kernels run asynchronously, so a clock read
    without this would time the launches, not the work); nothing to wait for on the CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def clock(device: torch.device) -> float:
    """``time.perf_counter()`` once the work queued on ``device`` has finished."""
    synchronize(device)
    return time.perf_counter()


def gpu_driver(index: int) -> str | None:
    """The NVIDIA driver version (``nvidia-smi``; torch does not report it), or None."""
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader", "-i", str(index)],
                             check=False, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    return (out.stdout.strip() or None) if out.returncode == 0 else None


def gpu(device: torch.device) -> dict[str, Any]:
    """Name, memory (GiB), compute capability, CUDA version and driver of a CUDA ``device``."""
    index = device.index if device.index is not None else torch.cuda.current_device()
    props = torch.cuda.get_device_properties(index)
    return {
        "gpu": props.name,
        "gpu_memory_gib": props.total_memory / 2**30,
        "gpu_capability": f"{props.major}.{props.minor}",
        "gpu_multiprocessors": props.multi_processor_count,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version(),
        "driver": gpu_driver(index),
        "float32_matmul_precision": torch.get_float32_matmul_precision(),  # "high" would allow TF32
    }


def machine(device: torch.device | None = None) -> dict[str, Any]:
    """CPU model (``lscpu``), cores, torch version and threads, the device the benchmark runs on,
    and for a CUDA device its GPU (:func:`gpu`)."""
    device = device or torch.device("cpu")
    model = platform.processor() or platform.machine()
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                model = line.split(":", 1)[1].strip()
    except (OSError, subprocess.SubprocessError):
        pass
    record = {
        "cpu": model,
        "cores": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "python": sys.version.split()[0],
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "device": str(device),
    }
    if device.type == "cuda":
        record.update(gpu(device))
    return record


def matmul_rate(repeats: int = 30, device: torch.device | None = None, batch: int = 64) -> dict[str, float]:
    """Measured float32 matmul rate (GFLOP/s) of ``device`` (default the CPU, at the current thread
    count), for a large square product (the practical peak) and the shapes of the target MLP at
    ``batch`` (keys ``"{m}x{k}x{n}"``)."""
    device = device or torch.device("cpu")
    shapes = {"1024x1024x1024": (1024, 1024, 1024), f"{batch}x784x128": (batch, 784, 128), f"{batch}x128x128": (batch, 128, 128)}
    out = {}
    for name, (m, k, n) in shapes.items():
        a, b = torch.randn(m, k, device=device), torch.randn(k, n, device=device)
        c = torch.empty(m, n, device=device)
        # A GPU finishes one small product in microseconds, less than a synchronise costs: time a
        # run of products between two synchronisations there; one product per reading on the CPU.
        inner = 1 if device.type == "cpu" else (20 if m * k * n >= 1e8 else 200)
        for _ in range(3):
            torch.mm(a, b, out=c)
        best = math.inf
        reps = max(3, repeats if m * k * n < 1e8 else 5)
        for _ in range(reps):
            start = clock(device)
            for _ in range(inner):
                torch.mm(a, b, out=c)
            best = min(best, (clock(device) - start) / inner)
        out[name] = 2 * m * k * n / best / 1e9
    return out
