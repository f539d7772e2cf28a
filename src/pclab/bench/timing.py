"""Timing: algorithms in interleaved chunks of batches, per-batch medians, rows of a table, line fits."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..core.fast import compiled
from . import hardware
from .steps import Step

MNIST_TRAIN = 60000
"""Training samples of MNIST: an epoch's batches at batch size ``b`` are ``ceil(MNIST_TRAIN / b)``."""


@dataclass
class Timing:
    """Per-batch seconds of one algorithm over interleaved chunks."""

    chunks: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.chunks)

    @property
    def best(self) -> float:
        return min(self.chunks)


def data(batch: int, batches: int, shape: Sequence[int] = (784,), classes: int = 10, seed: int = 0,
         device: torch.device | str = "cpu"):
    """``batches`` random batches of MNIST-like inputs in [0, 1) and one-hot labels, on ``device``
    (drawn on the CPU: the same values on every device)."""
    g = torch.Generator().manual_seed(seed)
    xs = torch.rand(batches * batch, *shape, generator=g).to(device)
    labels = torch.randint(0, classes, (batches * batch,), generator=g)
    ys = nn.functional.one_hot(labels, classes).float().to(device)
    return [(xs[i * batch:(i + 1) * batch], ys[i * batch:(i + 1) * batch]) for i in range(batches)]


class ChunkTimer:
    """A step timed elsewhere (another process: :class:`PcxWorker`): ``time(start, count)`` runs
    ``count`` steps on the timer's own batches ``start, start + 1, ...`` and returns their seconds.
    :func:`interleaved` takes one in place of a step function, so that it is timed in the same
    rounds, in turn with the others."""

    def time(self, start: int, count: int) -> float:
        raise NotImplementedError


def interleaved(steps: dict[str, Step | ChunkTimer], batches, chunk: int, rounds: int, warmup: int = 2,
                device: torch.device | None = None) -> dict[str, Timing]:
    """Time each step function on ``chunk`` batches per round, alternating between them. The clock
    is read once ``device``'s queued work has finished (default: the device of the batches), so
    on CUDA a chunk's time is its kernels' time, not the launches'. A :class:`ChunkTimer` times its
    own chunk (its warm-up is its own business).

    Every chunk takes the next ``chunk`` of ``batches`` (cyclically), so no function runs on
    batches another one has just brought into the cache, and each round starts with the next
    function in turn: the first steps after a switch are slower (the minimal BP loop's first step
    after a chunk of compiled PC can take twice its usual time), and a fixed order would put that
    cost, and the coldest data, on the same function every round."""
    device = device or batches[0][0].device
    timings = {name: Timing() for name in steps}
    k = 0
    for step in steps.values():
        for i in range(warmup if not isinstance(step, ChunkTimer) else 0):
            step(*batches[i % len(batches)])
    names = list(steps)
    for r in range(rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            step = steps[name]
            start = hardware.clock(device)  # also keeps the previous chunk's kernels out of this one
            if isinstance(step, ChunkTimer):
                seconds = step.time(k, chunk)
            else:
                for i in range(chunk):
                    step(*batches[(k + i) % len(batches)])
                seconds = hardware.clock(device) - start
            timings[name].chunks.append(seconds / chunk)
            k += chunk
    return timings


def row(name: str, timing: Timing, batch: int, flops: int | None) -> dict[str, Any]:
    """A table row: per-batch ms (median, best), epoch seconds, samples/s, chunks and, given FLOPs, GFLOP/s."""
    epoch_batches = math.ceil(MNIST_TRAIN / batch)
    out = {
        "algorithm": name,
        "batch_ms": 1e3 * timing.median,
        "batch_ms_best": 1e3 * timing.best,
        "epoch_s": timing.median * epoch_batches,
        "epoch_s_best": timing.best * epoch_batches,
        "samples_per_s": batch / timing.median,
        "chunks_ms": [1e3 * c for c in timing.chunks],
    }
    if flops is not None:
        out["flops_per_batch"] = flops
        out["gflops"] = flops / timing.median / 1e9
    return out


def compile_time(step: Step, batches) -> float:
    """Seconds ``step`` (a compiled algorithm) spends compiling, from :func:`pclab.core.fast.compiled.total_compile_seconds`:
    its first two calls (a PC rule's first step runs eagerly, creating the optimiser's state; the next compiles)."""
    before = compiled.total_compile_seconds()
    for x, y in batches[:2]:
        step(x, y)
    return compiled.total_compile_seconds() - before


def fit_line(xs: Sequence[float], ys: Sequence[float]) -> dict[str, float]:
    """Least-squares ``y = intercept + slope * x`` and its R^2."""
    n = len(xs)
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx
    intercept = my - slope * mx
    ss_res = sum((y - intercept - slope * x) ** 2 for x, y in zip(xs, ys))
    ss_tot = sum((y - my) ** 2 for y in ys) or 1e-30
    return {"slope": slope, "intercept": intercept, "r2": 1 - ss_res / ss_tot}
