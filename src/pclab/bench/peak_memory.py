"""Peak memory of one training step: the heap of a fresh CPU process (:mod:`pclab.bench.heap_probe`)
or the CUDA caching allocator's counters."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Sequence

import torch

from . import hardware, models, timing
from . import steps as algorithm_steps


def peak_memory_mib(algorithm: str, steps: int, batch: int = 64, widths: Sequence[int] = (784, 128, 128, 10),
                    device: torch.device | str = "cpu") -> dict[str, float]:
    """Peak memory one training step adds (MiB), in a fresh single-threaded process (Linux, glibc):
    ``heap``, the peak of live heap bytes (``mallinfo2``, sampled after every tensor operation)
    over their level before the step, and ``rss``, the peak resident size (``VmHWM``, reset before
    the step) over the size before it (includes allocator slack). On a CUDA ``device``: device
    memory, in this process (:func:`cuda_peak_memory_mib`)."""
    if torch.device(device).type == "cuda":
        return cuda_peak_memory_mib(algorithm, steps, batch, widths, device)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [_src_dir(), os.environ.get("PYTHONPATH")]))}
    arg = json.dumps([algorithm, steps, batch, list(widths)])
    out = subprocess.run([sys.executable, "-m", "pclab.bench.heap_probe", arg], capture_output=True, text=True, env=env, timeout=600)
    if out.returncode != 0:
        raise RuntimeError(f"memory probe failed: {out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def cuda_peak_memory_mib(algorithm: str, steps: int, batch: int = 64, widths: Sequence[int] = (784, 128, 128, 10),
                         device: torch.device | str = "cuda") -> dict[str, float]:
    """Peak CUDA memory one training step adds (MiB), from the caching allocator's own counters
    (exact, so no fresh process is needed): ``heap``, the peak of bytes held by tensors
    (``max_memory_allocated``, reset before the step) over their level before it, and ``rss``, the
    peak the allocator reserved from the driver (``max_memory_reserved``) over its level before it
    (includes allocator slack)."""
    device = torch.device(device)
    model = models.mlp_pcn(widths, device=device)
    (x, y), = timing.data(batch, 1, (widths[0],), classes=widths[-1], device=device)
    step = algorithm_steps.make_algorithm(algorithm, model, steps)
    step(x, y)  # warm up: optimiser state, lazy initialisation, cuBLAS workspace
    hardware.synchronize(device)
    allocated, reserved = torch.cuda.memory_allocated(device), torch.cuda.memory_reserved(device)
    torch.cuda.reset_peak_memory_stats(device)
    step(x, y)
    hardware.synchronize(device)
    return {"heap": (torch.cuda.max_memory_allocated(device) - allocated) / 2**20,
            "rss": (torch.cuda.max_memory_reserved(device) - reserved) / 2**20}


def _src_dir() -> str:
    """The directory holding the ``pclab`` package (the probe process imports this copy of it)."""
    return os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
