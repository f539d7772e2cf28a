"""The benchmark suites: the speed target, every algorithm, bp-through-inference / PC, scaling, memory."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch

from . import models as bench_models
from . import peak_memory, timing
from . import steps as algorithm_steps
from .timing import MNIST_TRAIN, ChunkTimer, Step, fit_line

if TYPE_CHECKING:
    from .pcx import PcxWorker


def target(batch: int = 64, steps: int = 20, chunk: int | None = None, rounds: int = 10, compile: bool = True,
           device: torch.device | str = "cpu", pcx: PcxWorker | None = None) -> dict[str, Any]:
    """The speed target: PC epoch / BP epoch on MLP 784-128-128-10 tanh (batch 64, T = 20), model
    and data on ``device``.

    ``chunk``: batches per timed chunk; default an epoch (938 at batch 64), run over an epoch of
    distinct batches (MNIST's 60,000 samples' worth, 188 MB), so that every step reads its batch
    from memory, as in training, not from a cache warmed by the function timed before it.
    ``pcx``: PCX's PC and backprop steps (same problem, its own process) timed in the same rounds,
    in turn with pclab's (rows ``pcx-pc`` and ``pcx-bp``; ``ratio_to_pcx_pc``), so that a
    change of the machine's speed during the run reaches both sides alike.
    """
    device = torch.device(device)
    widths = [784, 128, 128, 10]
    model = bench_models.mlp_pcn(widths, device=device)
    epoch = math.ceil(MNIST_TRAIN / batch)
    chunk = chunk or epoch
    names = ["bp", "pc"] + (["pc-compiled"] if compile else [])
    batches = timing.data(batch, min(epoch, max(40, 2 * chunk * len(names))), device=device)
    steps_fns: dict[str, Step | ChunkTimer] = {n: algorithm_steps.make_algorithm(n, model, steps) for n in names}
    compile_s = timing.compile_time(steps_fns["pc-compiled"], batches) if compile else None
    if pcx is not None:
        steps_fns.update({"pcx-pc": pcx.timer("pc"), "pcx-bp": pcx.timer("bp")})
    timings = timing.interleaved(steps_fns, batches, chunk, rounds, device=device)
    rows = [timing.row(n, timings[n], batch, None) for n in steps_fns]
    bp = timings["bp"]
    ratios = {n: {"median": timings[n].median / bp.median, "best": timings[n].best / bp.best} for n in names if n != "bp"}
    out = {
        "model": "MLP 784-128-128-10 tanh", "widths": widths, "device": str(device), "batch": batch, "steps": steps, "rows": rows,
        "ratio_to_bp": ratios, "compile_seconds": compile_s, "flops": bench_models.mlp_flops(widths, batch, steps),
        "chunk": chunk, "rounds": rounds, "distinct_batches": len(batches),
    }
    if pcx is not None:
        theirs = timings["pcx-pc"]
        # also round by round (each round times one chunk of each): the median of those ratios
        out["ratio_to_pcx_pc"] = {n: {"median": timings[n].median / theirs.median, "best": timings[n].best / theirs.best,
                                      "paired": statistics.median(a / b for a, b in zip(timings[n].chunks, theirs.chunks))}
                                  for n in names if n.startswith("pc")}
    return out


def ratio_floor(target_result: dict[str, Any], rate_gflops: float) -> dict[str, float]:
    """A lower bound on the target's PC/BP epoch ratio from the sequential products alone.

    Each of PC's ``T`` inference steps must take the ``n``-wide hidden error (``n`` the first
    hidden width of ``target_result["widths"]``) through the dense ``n x n`` coupling before the
    next step can start: at least one ``(batch, n) @ (n, n)`` product per step, ``T`` of them one
    after the other. Everything else PC does (feed-forward
    pass, weight gradients, optimiser step) BP does too, except that BP's backward pass has one
    such product of its own. So ``PC >= BP + (T - 1) t_p`` with ``t_p`` the product's time at
    ``rate_gflops`` (measured in the same run for this shape), whatever the implementation; the
    elementwise work of each step (tanh, errors, the narrow output layer) comes on top.
    """
    batch, steps, hidden = target_result["batch"], target_result["steps"], target_result["widths"][1]
    bp = next(r for r in target_result["rows"] if r["algorithm"] == "bp")["batch_ms"] / 1e3
    product = 2 * batch * hidden * hidden / (rate_gflops * 1e9)
    return {"product_us": product * 1e6, "rate_gflops": rate_gflops, "bp_batch_us": bp * 1e6,
            "ratio_floor": 1 + (steps - 1) * product / bp}


def algorithms(
    models: Sequence[str] = ("mlp128", "mlp512", "conv"),
    names: Sequence[str] = ("bp", "pc", "pc-compiled", "pc-reference", "ipc", "ipc-compiled", "bpti", "bpti-compiled", "bpti-ckpt",
                            "bpti-x"),
    batch: int = 64, steps: int = 20, chunk: int = 5, rounds: int = 5, device: torch.device | str = "cpu",
) -> list[dict[str, Any]]:
    """Every algorithm on every model (model and data on ``device``); one interleaved timing per model."""
    device = torch.device(device)
    out = []
    for kind in models:
        model, shape = bench_models.model_of(kind, device=device)
        batches = timing.data(batch, max(2 * chunk, 10), shape, device=device)
        chosen = [n for n in names if not (n == "bpti-compiled" and kind == "conv")]  # (a Dense-chain reverse pass)
        fns = {n: algorithm_steps.make_algorithm(n, model, steps) for n in chosen}
        compile_s: dict[str, float] = {}
        for n in chosen:
            if n.endswith("-compiled"):  # the compiling calls, kept out of the timings
                compile_s[n] = timing.compile_time(fns[n], batches)
        flops = {n: algorithm_steps.counted_flops(algorithm_steps.make_algorithm(n, model, steps), *batches[0])
                 for n in chosen if not n.endswith("-compiled")}
        for n in compile_s:  # the same arithmetic as the eager algorithm
            flops[n] = flops.get(n.removesuffix("-compiled"))
        timings = timing.interleaved(fns, batches, chunk, rounds, device=device)
        bp = timings["bp"].median if "bp" in timings else None
        rows = []
        for n in chosen:
            row = timing.row(n, timings[n], batch, flops.get(n))
            if bp:
                row["ratio_to_bp"] = timings[n].median / bp
            rows.append(row)
        entry = {"model": kind, "device": str(device), "batch": batch, "steps": steps, "rows": rows,
                 "compile_seconds": compile_s or None}
        # bp-through-inference against PC at equal T, eager with eager and compiled with compiled
        pairs = {"eager": ("bpti", "pc"), "compiled": ("bpti-compiled", "pc-compiled")}
        ratios = {mode: timings[a].median / timings[b].median for mode, (a, b) in pairs.items() if a in timings and b in timings}
        if ratios:
            entry["bpti_over_pc"] = ratios
        if kind.startswith("mlp"):
            entry["nominal_flops"] = bench_models.mlp_flops(bench_models.widths_of(kind), batch, steps)
        out.append(entry)
    return out


BPTI_CHUNKS = {"mlp128": 20, "mlp512": 4, "conv": 2}
"""Batches per timed chunk of :func:`bpti_ratio`: a tenth of a second or so of bp-through-inference here."""


def bpti_ratio(models: Sequence[str] = ("mlp128", "mlp512", "conv"), batch: int = 64, steps: int = 20, rounds: int = 10,
               compile: bool = True, device: torch.device | str = "cpu", chunks: dict[str, int] | None = None) -> list[dict[str, Any]]:
    """The bp-through-inference target (at most 2x PC at equal T), timed for itself: per model and mode (``eager``:
    ``bpti`` against ``pc``; ``compiled``: ``bpti-compiled`` against ``pc-compiled``, Dense chains
    only), the two alone, in adjacent chunks whose order alternates round by round, so that each
    round's ratio compares chunks run a fraction of a second apart. (In :func:`algorithms` ten
    algorithms take turns, and a change of the machine's speed between a pair's chunks goes
    straight into its ratio.)

    Returns one entry per model: ``{mode: {"paired_median", "quartiles", "range", "bpti_ms",
    "pc_ms", "ratios"}}`` plus ``model``, ``chunk``, ``rounds`` and ``flops_ratio`` (the matrix
    products' FLOPs of one bp-through-inference step over one PC step, :func:`counted_flops`: the
    time ratio at equal product rates); ``ratios`` are the rounds' own bp-through-inference / PC
    ratios, ``*_ms`` the medians of the chunks' per-batch times.
    """
    device = torch.device(device)
    chunks = {**BPTI_CHUNKS, **(chunks or {})}
    out = []
    for kind in models:
        model, shape = bench_models.model_of(kind, device=device)
        chunk = chunks[kind]
        batches = timing.data(batch, max(2 * chunk, 10), shape, device=device)
        modes = {"eager": ("bpti", "pc")}
        if compile and kind != "conv":
            modes["compiled"] = ("bpti-compiled", "pc-compiled")
        entry: dict[str, Any] = {"model": kind, "device": str(device), "batch": batch, "steps": steps, "chunk": chunk, "rounds": rounds}
        # the arithmetic's own ratio (compiled paths run the same products as the eager ones)
        entry["flops_ratio"] = (algorithm_steps.counted_flops(algorithm_steps.make_algorithm("bpti", model, steps), *batches[0])
                                / algorithm_steps.counted_flops(algorithm_steps.make_algorithm("pc", model, steps), *batches[0]))
        for mode, (a, b) in modes.items():
            fns = {n: algorithm_steps.make_algorithm(n, model, steps) for n in (b, a)}
            for n, fn in fns.items():
                if n.endswith("-compiled"):
                    timing.compile_time(fn, batches)
            timings = timing.interleaved(fns, batches, chunk, rounds, device=device)
            ratios = [x / y for x, y in zip(timings[a].chunks, timings[b].chunks)]
            quartiles = statistics.quantiles(ratios, n=4)[::2] if len(ratios) > 1 else [ratios[0], ratios[0]]
            entry[mode] = {"paired_median": statistics.median(ratios), "quartiles": quartiles, "range": [min(ratios), max(ratios)],
                           "bpti_ms": 1e3 * timings[a].median, "pc_ms": 1e3 * timings[b].median, "ratios": ratios}
        out.append(entry)
    return out


def scaling(
    ts: Sequence[int] = (5, 10, 20, 50), depths: Sequence[int] = (3, 5, 7, 10, 15), widths: Sequence[int] = (128, 512),
    batch: int = 64, steps: int = 20, chunk: int = 5, rounds: int = 3, device: torch.device | str = "cpu",
) -> dict[str, Any]:
    """PC (fast path) and BP per-batch time against ``T`` (MLP 784-128-128-10) and against depth
    (``T`` fixed), with least-squares lines (ms per step, ms per layer); models and data on ``device``."""
    device = torch.device(device)
    batches = timing.data(batch, 2 * chunk, device=device)
    by_t = []
    model = bench_models.mlp_pcn([784, 128, 128, 10], device=device)
    fns = {f"pc-T{t}": algorithm_steps.make_algorithm("pc", model, t) for t in ts}
    timings = timing.interleaved(fns, batches, chunk, rounds, device=device)
    for t in ts:
        by_t.append({"T": t, "pc_batch_ms": 1e3 * timings[f"pc-T{t}"].median})
    out: dict[str, Any] = {"device": str(device), "vs_T": by_t,
                           "fit_vs_T_ms": fit_line(list(ts), [r["pc_batch_ms"] for r in by_t])}
    for width in widths:
        rows = []
        fns = {}
        for depth in depths:
            m = bench_models.mlp_pcn([784, *([width] * (depth - 1)), 10], device=device)
            fns[f"pc-L{depth}"] = algorithm_steps.make_algorithm("pc", m, steps)
            fns[f"bp-L{depth}"] = algorithm_steps.make_algorithm("bp", m, steps)
        timings = timing.interleaved(fns, batches, chunk, rounds, device=device)
        for depth in depths:
            rows.append({"depth": depth, "pc_batch_ms": 1e3 * timings[f"pc-L{depth}"].median,
                         "bp_batch_ms": 1e3 * timings[f"bp-L{depth}"].median})
        out[f"vs_depth_w{width}"] = rows
        out[f"fit_vs_depth_w{width}_ms"] = {
            "pc": fit_line(list(depths), [r["pc_batch_ms"] for r in rows]),
            "bp": fit_line(list(depths), [r["bp_batch_ms"] for r in rows]),
        }
    return out


def memory(ts: Sequence[int] = (10, 20, 50, 100, 200), algorithms_: Sequence[str] = ("bpti", "bpti-ckpt", "bpti-flat", "pc"),
           device: torch.device | str = "cpu") -> dict[str, Any]:
    """Peak memory of one training step against ``T`` (MiB; see :func:`peak_memory_mib`), with a
    least-squares line of the heap peak per algorithm (MiB per inference step)."""
    device = torch.device(device)
    rows = []
    for t in ts:
        row: dict[str, Any] = {"T": t}
        for a in algorithms_:
            m = peak_memory.peak_memory_mib(a, t, device=device)
            row[a], row[f"{a}_rss"] = m["heap"], m["rss"]
        rows.append(row)
    fits = {a: fit_line(list(ts), [r[a] for r in rows]) for a in algorithms_}
    where = "one thread" if device.type == "cpu" else f"{device}, CUDA allocator: heap = allocated, rss = reserved"
    return {"model": f"MLP 784-128-128-10 tanh, batch 64, {where}", "device": str(device), "rows": rows,
            "fit_heap_MiB_vs_T": fits}
