"""Speed benchmarks: PC, incremental PC, backprop through inference and backprop, side by side.

:func:`run_speed_benchmark` measures, in one process and one run (so ratios compare like with
like on a shared or noisy machine):

* ``target``  -- issue 2's speed target: one epoch of PC (MLP 784-128-128-10 tanh, batch 64,
  ``T = 20``, latent SGD 0.1, Adam 1e-3) against a minimal PyTorch backprop loop on the same MLP;
* ``algorithms`` -- samples/s, epoch time and achieved GFLOP/s of PC (fast path, compiled,
  reference graph code), incremental PC, bp-through-inference (with and without checkpointing) and
  backprop on MLPs of width 128 and 512 and a small conv net;
* ``bpti`` -- issue 8's bp-through-inference / PC target on the same three models, each pair
  (eager; compiled) timed alone in adjacent chunks, with the rounds' own ratios (:func:`bpti_ratio`);
* ``scaling`` -- PC cost against ``T`` and against depth, with least-squares lines;
* ``memory`` -- peak memory of one training step against ``T`` (10 .. 200) for
  bp-through-inference without checkpointing, with per-step checkpointing and with binomial
  checkpointing (``bpti-flat``), and PC (each point in a fresh process);
* ``pcx`` -- PCX 0.6 (JAX) on the target's problem, in its own virtual environment. With ``target``
  (on the CPU) PCX's PC and backprop steps run in a worker process (:class:`PcxWorker`) and are
  timed in the target's rounds, in turn with pclab's, so both sides see the same machine speed (this
  VM has phases of minutes in which everything runs 25-45 % slower); alone, one PCX run after pclab's.

Timing: algorithms run in interleaved chunks of batches; the per-batch time of an algorithm is
the median over its chunks (``min`` is reported too: the least disturbed chunk). Epoch time is the
per-batch time times ``ceil(60000 / batch)``. Data are random tensors of MNIST's shape (speed does
not depend on the values). FLOPs are counted by ``torch.utils.flop_counter`` over one step (matrix
products and convolutions only, 2 per multiply-add), so they are what the implementation really
computes (the fast path skips exactly-zero work); for MLPs the nominal formula is given as well.

Device (``--device``, default ``cpu``): ``target``, ``algorithms``, ``bpti``, ``scaling`` and ``memory``
build their models and data on it, and the matmul rate is measured on it. On CUDA the clock is read
after ``torch.cuda.synchronize`` (kernels run asynchronously), the compiled path is Inductor's
Triton code, compile time is reported apart as on the CPU, and ``memory`` reads the caching
allocator's peak counters in this process instead of the glibc heap probe. PCX runs on the CPU
only. There is no CUDA-graph path: a PC step reads values back to the host (the finiteness check
of clamped values, the energy it returns), which a graph capture does not allow.
"""

from __future__ import annotations

import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .core import (
    PCN,
    SGD,
    BPThroughInference,
    Dense,
    IncrementalPC,
    Inference,
    Node,
    PCLearning,
    TaskLoss,
)
from .core.fast import compiled
from .io import write_json

MNIST_TRAIN = 60000


# ---------------------------------------------------------------------------- device
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


def _gpu_driver(index: int) -> str | None:
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
        "driver": _gpu_driver(index),
        "float32_matmul_precision": torch.get_float32_matmul_precision(),  # "high" would allow TF32
    }


# ---------------------------------------------------------------------------- machine
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


# ---------------------------------------------------------------------------- models
def mlp_pcn(widths: Sequence[int], activation: str = "tanh", seed: int = 0, device: torch.device | str = "cpu") -> PCN:
    """Chain ``x -> h1 -> ... -> y`` of Dense layers, the last linear, Gaussian energies, on
    ``device`` (initialised on the CPU: the same weights on every device)."""
    names = ["x", *[f"h{i}" for i in range(1, len(widths) - 1)], "y"]
    torch.manual_seed(seed)
    edges = [
        (names[i], names[i + 1], Dense(widths[i], widths[i + 1], activation if i < len(widths) - 2 else "identity"))
        for i in range(len(widths) - 1)
    ]
    return PCN([Node(n, (w,)) for n, w in zip(names, widths)], edges).to(device)


def conv_pcn(seed: int = 0, device: torch.device | str = "cpu") -> PCN:
    """A small conv PCN on 1x28x28 images: conv 5x5/2 (8 ch) -> conv 5x5/2 (16 ch) -> linear 10,
    on ``device`` (initialised on the CPU)."""
    torch.manual_seed(seed)
    nodes = [Node("x", (1, 28, 28)), Node("h1", (8, 12, 12)), Node("h2", (16, 4, 4)), Node("y", (10,))]
    edges = [
        ("x", "h1", nn.Sequential(nn.Conv2d(1, 8, 5, stride=2), nn.Tanh())),
        ("h1", "h2", nn.Sequential(nn.Conv2d(8, 16, 5, stride=2), nn.Tanh())),
        ("h2", "y", nn.Sequential(nn.Flatten(), nn.Linear(256, 10))),
    ]
    return PCN(nodes, edges).to(device)


def as_sequential(model: PCN) -> nn.Sequential:
    """A copy of a chain PCN's edge modules as one feed-forward ``nn.Sequential`` (backprop's model)."""
    import copy

    layers: list[nn.Module] = []
    for edge in model.edges:
        module = copy.deepcopy(model.edge_modules[edge.key])
        if isinstance(module, Dense):  # plain torch layers, as a minimal backprop loop would use
            layers.append(module.linear)
            if module.activation != "identity":
                layers.append({"tanh": nn.Tanh(), "relu": nn.ReLU(), "gelu": nn.GELU(), "sigmoid": nn.Sigmoid()}[module.activation])
        else:
            layers.append(module)
    return nn.Sequential(*layers)


def mlp_flops(widths: Sequence[int], batch: int, steps: int) -> dict[str, Any]:
    """Nominal matmul FLOPs of one training step on an MLP (2 per multiply-add).

    ``F = 2 B sum_l n_{l-1} n_l`` (one forward pass), ``F1 = 2 B n_0 n_1`` (the input layer, whose
    prediction is constant while the input is clamped).
    """
    f = 2 * batch * sum(a * b for a, b in zip(widths[:-1], widths[1:]))
    f1 = 2 * batch * widths[0] * widths[1]
    t = steps
    return {
        "F": f,
        "F1": f1,
        "bp": {"formula": "3F - F1", "flops": 3 * f - f1},
        "pc": {"formula": "F + 2T(F - F1) + (F - F1) + F", "flops": f + 2 * t * (f - f1) + (f - f1) + f},
        "ipc": {"formula": "F + T(2(F - F1) + F)", "flops": f + t * (2 * (f - f1) + f)},
        "bpti": {"formula": "3(F + 2T(F - F1) + (F - F1))", "flops": 3 * (f + 2 * t * (f - f1) + (f - f1))},
    }


# ---------------------------------------------------------------------------- algorithms
Step = Callable[[torch.Tensor, torch.Tensor], None]


def _bp_step(net: nn.Module, lr: float) -> Step:
    optimizer = torch.optim.Adam(net.parameters(), lr)

    def step(x: torch.Tensor, y: torch.Tensor) -> None:
        optimizer.zero_grad()
        loss = nn.functional.mse_loss(net(x), y)
        loss.backward()
        optimizer.step()

    return step


BPTI_FLAT_SLOTS = 8
"""Stored states of ``bpti-flat`` (binomial checkpointing)."""


def make_algorithm(name: str, model: PCN, steps: int, latent_lr: float = 0.1, weight_lr: float = 1e-3) -> Step:
    """One training step of algorithm ``name`` on ``model`` (a fresh copy of the weights):

    ``bp`` minimal PyTorch backprop loop (``nn.Sequential``, Adam, MSE); ``pc`` PC rule (fast path
    when the model is a Dense chain); ``pc-compiled`` / ``ipc-compiled`` the same under ``torch.compile``;
    ``pc-reference`` PC on the general graph code (``method="manual"`` for Dense chains, autograd
    otherwise); ``ipc`` incremental PC; ``bpti`` / ``bpti-ckpt`` backprop through the ``T``
    inference steps of PC's relaxation (input and label clamped) of an MSE loss on the output
    prediction, without / with checkpointing; ``bpti-x`` the same with only the input clamped (from a
    feed-forward start no latent moves then: the fast path has no relaxation work left);
    ``bpti-autograd`` ``bpti`` with autograd through the fast relaxation instead of the
    hand-derived reverse pass of :mod:`pclab.core.fast.chain_adjoint` (Dense chains); ``bpti-compiled``
    ``bpti`` with that reverse pass and the relaxation under ``torch.compile``
    (:mod:`pclab.core.fast.compiled_adjoint`); ``bpti-flat``
    ``bpti`` with binomial checkpointing in :data:`BPTI_FLAT_SLOTS` slots (:mod:`pclab.core.binomial`).
    """
    import copy

    model = copy.deepcopy(model)
    if name == "bp":
        return _bp_step(as_sequential(model), weight_lr)
    adam = torch.optim.Adam(model.parameters(), weight_lr)
    fast = all(isinstance(m, Dense) for m in model.edge_modules.values())
    # bpti-autograd: the Dense-chain relaxation, differentiated by autograd instead of the hand-derived pass
    accelerators = ("chain",) if name == "bpti-autograd" else None
    inference = Inference(steps=steps, optimizer=SGD(latent_lr), compile=name.endswith("-compiled"), accelerators=accelerators)
    if name in ("pc", "pc-compiled"):
        rule: Any = PCLearning(model, inference, adam)
    elif name == "pc-reference":
        rule = PCLearning(model, Inference(steps=steps, optimizer=SGD(latent_lr), method="manual" if fast else "autograd"), adam)
    elif name in ("ipc", "ipc-compiled"):
        rule = IncrementalPC(model, inference, adam)
    elif name in ("bpti", "bpti-compiled", "bpti-ckpt", "bpti-flat", "bpti-x", "bpti-autograd"):
        clamp = ("x",) if name == "bpti-x" else ("x", "y")
        checkpoint = {"bpti-ckpt": True, "bpti-flat": BPTI_FLAT_SLOTS}.get(name, False)
        rule = BPThroughInference(model, inference, adam, TaskLoss(reconstruct={"y": 1.0}), clamp=clamp, checkpoint=checkpoint)
    else:
        raise ValueError(f"unknown algorithm {name!r}")

    def step(x: torch.Tensor, y: torch.Tensor) -> None:
        rule.step({"x": x, "y": y})

    return step


def counted_flops(step: Step, x: torch.Tensor, y: torch.Tensor) -> int:
    """Matmul/conv FLOPs one call of ``step`` executes, counted at the ATen dispatch level with
    ``torch.utils.flop_counter``'s formulas (its ``FlopCounterMode`` cannot watch
    ``autograd.grad`` inside a step, which the general relaxation uses). In-place products
    (``addmm_``, ``baddbmm_``), which that registry leaves out, count as their out-of-place forms."""
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils.flop_counter import flop_registry

    def formula_of(packet: Any) -> Any:
        formula = flop_registry.get(packet)
        name = packet.__name__
        if formula is None and name.endswith("_") and hasattr(torch.ops.aten, name[:-1]):
            formula = flop_registry.get(getattr(torch.ops.aten, name[:-1]))
        return formula

    class Count(TorchDispatchMode):
        total = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            out = func(*args, **kwargs)
            formula = formula_of(func._overloadpacket)
            if formula is not None:
                Count.total += int(formula(*args, **kwargs, out_val=out))
            return out

    with Count():
        step(x, y)
    return Count.total


# ---------------------------------------------------------------------------- timing
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
    function in turn: the first steps after a switch are slower (measured here: the minimal BP
    loop's first step after a chunk of compiled PC took 0.86-1.02 ms against 0.50 ms), and a
    fixed order would put that cost, and the coldest data, on the same function every round."""
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
            start = clock(device)  # also keeps the previous chunk's kernels out of this one
            if isinstance(step, ChunkTimer):
                seconds = step.time(k, chunk)
            else:
                for i in range(chunk):
                    step(*batches[(k + i) % len(batches)])
                seconds = clock(device) - start
            timings[name].chunks.append(seconds / chunk)
            k += chunk
    return timings


def _row(name: str, timing: Timing, batch: int, flops: int | None) -> dict[str, Any]:
    epoch_batches = math.ceil(MNIST_TRAIN / batch)
    row = {
        "algorithm": name,
        "batch_ms": 1e3 * timing.median,
        "batch_ms_best": 1e3 * timing.best,
        "epoch_s": timing.median * epoch_batches,
        "epoch_s_best": timing.best * epoch_batches,
        "samples_per_s": batch / timing.median,
        "chunks_ms": [1e3 * c for c in timing.chunks],
    }
    if flops is not None:
        row["flops_per_batch"] = flops
        row["gflops"] = flops / timing.median / 1e9
    return row


def _compile(step: Step, batches) -> float:
    """Seconds ``step`` (a compiled algorithm) spends compiling, from :func:`pclab.core.fast.compiled.total_compile_seconds`:
    its first two calls (a PC rule's first step runs eagerly, creating the optimiser's state; the next compiles)."""
    before = compiled.total_compile_seconds()
    for x, y in batches[:2]:
        step(x, y)
    return compiled.total_compile_seconds() - before


# ---------------------------------------------------------------------------- suites
def target(batch: int = 64, steps: int = 20, chunk: int | None = None, rounds: int = 10, compile: bool = True,
           device: torch.device | str = "cpu", pcx: PcxWorker | None = None) -> dict[str, Any]:
    """Issue 2's target: PC epoch / BP epoch on MLP 784-128-128-10 tanh (batch 64, T = 20), model
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
    model = mlp_pcn(widths, device=device)
    epoch = math.ceil(MNIST_TRAIN / batch)
    chunk = chunk or epoch
    names = ["bp", "pc"] + (["pc-compiled"] if compile else [])
    batches = data(batch, min(epoch, max(40, 2 * chunk * len(names))), device=device)
    steps_fns: dict[str, Step | ChunkTimer] = {n: make_algorithm(n, model, steps) for n in names}
    compile_s = _compile(steps_fns["pc-compiled"], batches) if compile else None
    if pcx is not None:
        steps_fns.update({"pcx-pc": pcx.timer("pc"), "pcx-bp": pcx.timer("bp")})
    timings = interleaved(steps_fns, batches, chunk, rounds, device=device)
    rows = [_row(n, timings[n], batch, None) for n in steps_fns]
    bp = timings["bp"]
    ratios = {n: {"median": timings[n].median / bp.median, "best": timings[n].best / bp.best} for n in names if n != "bp"}
    out = {
        "model": "MLP 784-128-128-10 tanh", "widths": widths, "device": str(device), "batch": batch, "steps": steps, "rows": rows,
        "ratio_to_bp": ratios, "compile_seconds": compile_s, "flops": mlp_flops(widths, batch, steps),
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
        model, shape = _model(kind, device=device)
        batches = data(batch, max(2 * chunk, 10), shape, device=device)
        chosen = [n for n in names if not (n == "bpti-compiled" and kind == "conv")]  # (a Dense-chain reverse pass)
        fns = {n: make_algorithm(n, model, steps) for n in chosen}
        compile_s: dict[str, float] = {}
        for n in chosen:
            if n.endswith("-compiled"):  # the compiling calls, kept out of the timings
                compile_s[n] = _compile(fns[n], batches)
        flops = {n: counted_flops(make_algorithm(n, model, steps), *batches[0]) for n in chosen if not n.endswith("-compiled")}
        for n in compile_s:  # the same arithmetic as the eager algorithm
            flops[n] = flops.get(n.removesuffix("-compiled"))
        timings = interleaved(fns, batches, chunk, rounds, device=device)
        bp = timings["bp"].median if "bp" in timings else None
        rows = []
        for n in chosen:
            row = _row(n, timings[n], batch, flops.get(n))
            if bp:
                row["ratio_to_bp"] = timings[n].median / bp
            rows.append(row)
        entry = {"model": kind, "device": str(device), "batch": batch, "steps": steps, "rows": rows,
                 "compile_seconds": compile_s or None}
        # issue 8: bp-through-inference against PC at equal T, eager with eager and compiled with compiled
        pairs = {"eager": ("bpti", "pc"), "compiled": ("bpti-compiled", "pc-compiled")}
        ratios = {mode: timings[a].median / timings[b].median for mode, (a, b) in pairs.items() if a in timings and b in timings}
        if ratios:
            entry["bpti_over_pc"] = ratios
        if kind.startswith("mlp"):
            entry["nominal_flops"] = mlp_flops(_widths(kind), batch, steps)
        out.append(entry)
    return out


BPTI_CHUNKS = {"mlp128": 20, "mlp512": 4, "conv": 2}
"""Batches per timed chunk of :func:`bpti_ratio`: a tenth of a second or so of bp-through-inference here."""


def bpti_ratio(models: Sequence[str] = ("mlp128", "mlp512", "conv"), batch: int = 64, steps: int = 20, rounds: int = 10,
               compile: bool = True, device: torch.device | str = "cpu", chunks: dict[str, int] | None = None) -> list[dict[str, Any]]:
    """Issue 8's bp-through-inference target, timed for itself: per model and mode (``eager``:
    ``bpti`` against ``pc``; ``compiled``: ``bpti-compiled`` against ``pc-compiled``, Dense chains
    only), the two alone, in adjacent chunks whose order alternates round by round, so that each
    round's ratio compares chunks run a fraction of a second apart. (In :func:`algorithms` ten
    algorithms take turns, and a change of the machine's speed between a pair's chunks goes
    straight into its ratio: 1.67 and 2.01 for the same eager MLP-128 pair in two runs here.)

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
        model, shape = _model(kind, device=device)
        chunk = chunks[kind]
        batches = data(batch, max(2 * chunk, 10), shape, device=device)
        modes = {"eager": ("bpti", "pc")}
        if compile and kind != "conv":
            modes["compiled"] = ("bpti-compiled", "pc-compiled")
        entry: dict[str, Any] = {"model": kind, "device": str(device), "batch": batch, "steps": steps, "chunk": chunk, "rounds": rounds}
        # the arithmetic's own ratio (compiled paths run the same products as the eager ones)
        entry["flops_ratio"] = (counted_flops(make_algorithm("bpti", model, steps), *batches[0])
                                / counted_flops(make_algorithm("pc", model, steps), *batches[0]))
        for mode, (a, b) in modes.items():
            fns = {n: make_algorithm(n, model, steps) for n in (b, a)}
            for n, fn in fns.items():
                if n.endswith("-compiled"):
                    _compile(fn, batches)
            timings = interleaved(fns, batches, chunk, rounds, device=device)
            ratios = [x / y for x, y in zip(timings[a].chunks, timings[b].chunks)]
            quartiles = statistics.quantiles(ratios, n=4)[::2] if len(ratios) > 1 else [ratios[0], ratios[0]]
            entry[mode] = {"paired_median": statistics.median(ratios), "quartiles": quartiles, "range": [min(ratios), max(ratios)],
                           "bpti_ms": 1e3 * timings[a].median, "pc_ms": 1e3 * timings[b].median, "ratios": ratios}
        out.append(entry)
    return out


def _widths(kind: str, depth: int = 3) -> list[int]:
    width = int(kind[3:])
    return [784, *([width] * (depth - 1)), 10]


def _model(kind: str, depth: int = 3, device: torch.device | str = "cpu") -> tuple[PCN, tuple[int, ...]]:
    if kind == "conv":
        return conv_pcn(device=device), (1, 28, 28)
    if kind.startswith("mlp"):
        return mlp_pcn(_widths(kind, depth), device=device), (784,)
    raise ValueError(f"unknown model {kind!r}; expected mlp128, mlp512 or conv")


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


def scaling(
    ts: Sequence[int] = (5, 10, 20, 50), depths: Sequence[int] = (3, 5, 7, 10, 15), widths: Sequence[int] = (128, 512),
    batch: int = 64, steps: int = 20, chunk: int = 5, rounds: int = 3, device: torch.device | str = "cpu",
) -> dict[str, Any]:
    """PC (fast path) and BP per-batch time against ``T`` (MLP 784-128-128-10) and against depth
    (``T`` fixed), with least-squares lines (ms per step, ms per layer); models and data on ``device``."""
    device = torch.device(device)
    batches = data(batch, 2 * chunk, device=device)
    by_t = []
    model = mlp_pcn([784, 128, 128, 10], device=device)
    fns = {f"pc-T{t}": make_algorithm("pc", model, t) for t in ts}
    timings = interleaved(fns, batches, chunk, rounds, device=device)
    for t in ts:
        by_t.append({"T": t, "pc_batch_ms": 1e3 * timings[f"pc-T{t}"].median})
    out: dict[str, Any] = {"device": str(device), "vs_T": by_t,
                           "fit_vs_T_ms": fit_line(list(ts), [r["pc_batch_ms"] for r in by_t])}
    for width in widths:
        rows = []
        fns = {}
        for depth in depths:
            m = mlp_pcn([784, *([width] * (depth - 1)), 10], device=device)
            fns[f"pc-L{depth}"] = make_algorithm("pc", m, steps)
            fns[f"bp-L{depth}"] = make_algorithm("bp", m, steps)
        timings = interleaved(fns, batches, chunk, rounds, device=device)
        for depth in depths:
            rows.append({"depth": depth, "pc_batch_ms": 1e3 * timings[f"pc-L{depth}"].median,
                         "bp_batch_ms": 1e3 * timings[f"bp-L{depth}"].median})
        out[f"vs_depth_w{width}"] = rows
        out[f"fit_vs_depth_w{width}_ms"] = {
            "pc": fit_line(list(depths), [r["pc_batch_ms"] for r in rows]),
            "bp": fit_line(list(depths), [r["bp_batch_ms"] for r in rows]),
        }
    return out


_MEMORY_PROBE = """
import ctypes, json, sys, torch
from torch.utils._python_dispatch import TorchDispatchMode
from pclab.bench import data, make_algorithm, mlp_pcn

class MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]

libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = MallInfo2

def live():  # bytes in use on the heap (small blocks) plus mmapped blocks
    info = libc.mallinfo2()
    return info.uordblks + info.hblkhd

def rss_kib(field):
    for line in open("/proc/self/status"):
        if line.startswith(field):
            return int(line.split()[1])

class Peak(TorchDispatchMode):  # sample the heap after every tensor operation
    peak = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        Peak.peak = max(Peak.peak, live())
        return out

algorithm, steps, batch, widths = json.loads(sys.argv[1])
torch.set_num_threads(1)  # one thread: one malloc arena, which mallinfo2 sees
model = mlp_pcn(widths)
(x, y), = data(batch, 1)
step = make_algorithm(algorithm, model, steps)
step(x, y)  # warm up: optimiser state, lazy initialisation
open("/proc/self/clear_refs", "w").write("5")  # reset the resident peak (VmHWM) to the current size
rss_before, heap_before = rss_kib("VmRSS:"), live()
Peak.peak = heap_before
with Peak():
    step(x, y)
print(json.dumps({"heap": (Peak.peak - heap_before) / 2**20, "rss": (rss_kib("VmHWM:") - rss_before) / 1024}))
"""


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
    out = subprocess.run([sys.executable, "-c", _MEMORY_PROBE, arg], capture_output=True, text=True, env=env, timeout=600)
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
    model = mlp_pcn(widths, device=device)
    (x, y), = data(batch, 1, (widths[0],), classes=widths[-1], device=device)
    step = make_algorithm(algorithm, model, steps)
    step(x, y)  # warm up: optimiser state, lazy initialisation, cuBLAS workspace
    synchronize(device)
    allocated, reserved = torch.cuda.memory_allocated(device), torch.cuda.memory_reserved(device)
    torch.cuda.reset_peak_memory_stats(device)
    step(x, y)
    synchronize(device)
    return {"heap": (torch.cuda.max_memory_allocated(device) - allocated) / 2**20,
            "rss": (torch.cuda.max_memory_reserved(device) - reserved) / 2**20}


def _src_dir() -> str:
    return os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def memory(ts: Sequence[int] = (10, 20, 50, 100, 200), algorithms_: Sequence[str] = ("bpti", "bpti-ckpt", "bpti-flat", "pc"),
           device: torch.device | str = "cpu") -> dict[str, Any]:
    """Peak memory of one training step against ``T`` (MiB; see :func:`peak_memory_mib`), with a
    least-squares line of the heap peak per algorithm (MiB per inference step)."""
    device = torch.device(device)
    rows = []
    for t in ts:
        row: dict[str, Any] = {"T": t}
        for a in algorithms_:
            m = peak_memory_mib(a, t, device=device)
            row[a], row[f"{a}_rss"] = m["heap"], m["rss"]
        rows.append(row)
    fits = {a: fit_line(list(ts), [r[a] for r in rows]) for a in algorithms_}
    where = "one thread" if device.type == "cpu" else f"{device}, CUDA allocator: heap = allocated, rss = reserved"
    return {"model": f"MLP 784-128-128-10 tanh, batch 64, {where}", "device": str(device), "rows": rows,
            "fit_heap_MiB_vs_T": fits}


# ---------------------------------------------------------------------------- PCX
PCX_REQUIREMENT = "pcx>=0.6,<0.7"


def default_pcx_venv() -> Path:
    """Where the PCX comparison keeps its own virtual environment: ``$PCLAB_PCX_VENV`` or
    ``<user cache>/pclab/pcx-venv`` (outside any repository)."""
    env = os.environ.get("PCLAB_PCX_VENV")
    if env:
        return Path(env)
    import platformdirs

    return platformdirs.user_cache_path("pclab", appauthor=False) / "pcx-venv"


def ensure_pcx_venv(venv: Path) -> Path:
    """The Python of a virtual environment with PCX 0.6 (JAX CPU), created with ``venv`` and
    ``pip install pcx`` if it does not exist yet."""
    python = venv / "bin" / "python"
    if python.exists():
        check = subprocess.run([str(python), "-c", "import pcx, jax, optax"], capture_output=True, text=True)
        if check.returncode == 0:
            return python
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run([str(python), "-m", "pip", "install", "--quiet", PCX_REQUIREMENT], check=True)
    return python


def pcx_comparison(venv: Path | None = None, batches: int = 200, chunk: int = 20, steps: int = 20, batch: int = 64,
                   threads: int | None = None) -> dict[str, Any]:
    """Time PCX on the target problem (``bench_pcx.py`` in the PCX environment): PC and a plain
    JAX backprop loop, per batch, compile time apart."""
    python = ensure_pcx_venv(Path(venv) if venv is not None else default_pcx_venv())
    script = Path(__file__).with_name("bench_pcx.py")
    cmd = [str(python), str(script), "--batches", str(batches), "--chunk", str(chunk), "--steps", str(steps), "--batch", str(batch)]
    if threads is not None:
        cmd += ["--threads", str(threads)]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=3600)
    if out.returncode != 0:
        raise RuntimeError(f"PCX benchmark failed ({' '.join(cmd)}):\n{out.stderr[-3000:]}")
    return {"command": " ".join(cmd), **json.loads(out.stdout.strip().splitlines()[-1])}


def _pcx_from_target(worker: PcxWorker, target_result: dict[str, Any]) -> dict[str, Any]:
    """The ``pcx`` result of a target run that timed PCX in its rounds (:func:`target` with ``pcx``)."""
    rows = {r["algorithm"]: r for r in target_result["rows"]}
    pc, bp = rows["pcx-pc"], rows["pcx-bp"]
    out = {k: v for k, v in worker.info.items() if k != "ready"}
    out.update({
        "command": " ".join(worker.command), "interleaved_with_target": True, "device": "cpu",
        "pc_batch_ms": pc["batch_ms"], "pc_batch_ms_best": pc["batch_ms_best"], "bp_batch_ms": bp["batch_ms"],
        "bp_batch_ms_best": bp["batch_ms_best"], "pc_epoch_s": pc["epoch_s"], "bp_epoch_s": bp["epoch_s"],
        "pc_over_bp": pc["batch_ms"] / bp["batch_ms"],
    })
    for name, ratio in target_result["ratio_to_pcx_pc"].items():
        out[f"pclab_{name}_over_pcx_pc"] = ratio["median"]
        out[f"pclab_{name}_over_pcx_pc_paired"] = ratio["paired"]
    return out


class PcxWorker:
    """``bench_pcx.py --serve`` running in the PCX environment: PCX's PC and backprop steps on the
    target problem, timed chunk by chunk on request (:meth:`timer`), compiled once at the start
    (``info["pc_compile_s"]``). A context manager; the process ends when it closes."""

    def __init__(self, command: Sequence[str]):
        self.command = list(command)
        self.process = subprocess.Popen(self.command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                        text=True, bufsize=1)
        self.info = self._read()
        if not self.info.get("ready"):
            raise RuntimeError(f"PCX worker did not start ({' '.join(self.command)}): {self.info}")

    @classmethod
    def start(cls, venv: Path | None = None, batches: int = 938, steps: int = 20, batch: int = 64,
              threads: int | None = None) -> PcxWorker:
        """The worker in ``venv`` (default :func:`default_pcx_venv`, created if missing) with its
        own ``batches`` random batches."""
        python = ensure_pcx_venv(Path(venv) if venv is not None else default_pcx_venv())
        script = Path(__file__).with_name("bench_pcx.py")
        command = [str(python), str(script), "--serve", "--batches", str(batches), "--steps", str(steps), "--batch", str(batch)]
        return cls(command + (["--threads", str(threads)] if threads is not None else []))

    def _read(self) -> dict[str, Any]:
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if not line:
            error = self.process.stderr.read() if self.process.stderr is not None else ""
            raise RuntimeError(f"PCX worker ended ({' '.join(self.command)}):\n{error[-3000:]}")
        return json.loads(line)

    def time(self, what: str, start: int, count: int) -> float:
        """Seconds for ``count`` PCX steps of ``what`` (``"pc"`` or ``"bp"``) on its batches from ``start``."""
        assert self.process.stdin is not None
        self.process.stdin.write(json.dumps({"what": what, "start": start, "count": count}) + "\n")
        self.process.stdin.flush()
        return float(self._read()["seconds"])

    def timer(self, what: str) -> ChunkTimer:
        """``what``'s steps as a :class:`ChunkTimer` for :func:`interleaved`."""
        worker = self

        class _Timer(ChunkTimer):
            def time(self, start: int, count: int) -> float:
                return worker.time(what, start, count)

        return _Timer()

    def close(self) -> None:
        if self.process.stdin is not None and not self.process.stdin.closed:
            self.process.stdin.close()
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()

    def __enter__(self) -> PcxWorker:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


# ---------------------------------------------------------------------------- entry point
@dataclass
class SpeedConfig:
    """What :func:`run_speed_benchmark` runs.

    Args:
        suites: any of ``target``, ``algorithms``, ``bpti``, ``scaling``, ``memory``, ``pcx``.
        threads: torch intra-op threads.
        rounds: interleaved timing rounds of the target and of ``bpti`` (more: steadier medians).
        chunk: batches per timing chunk of the target and the PCX comparison; ``None``: an epoch.
        batch: batch size of the target and the PCX comparison.
        steps: inference steps ``T`` of the target and the PCX comparison.
        compile: include the ``torch.compile`` path.
        quick: smaller sweeps (a smoke run).
        pcx_venv: where the PCX environment lives (default :func:`default_pcx_venv`).
        device: where models and data live and the clock runs: ``cpu``, ``cuda``, ``cuda:N`` or
            ``auto`` (see :func:`resolve_device`). The ``pcx`` suite always runs on the CPU (its
            environment holds a CPU build of JAX); pclab/PCX ratios are reported only on the CPU.
    """

    suites: tuple[str, ...] = ("target",)
    threads: int = 2
    rounds: int = 10
    chunk: int | None = None
    batch: int = 64
    steps: int = 20
    compile: bool = True
    quick: bool = False
    pcx_venv: str | None = None
    device: str = "cpu"


SUITES = ("target", "algorithms", "bpti", "scaling", "memory", "pcx")


def run_speed_benchmark(config: SpeedConfig | None = None, **overrides: Any) -> dict[str, Any]:
    """Run the chosen suites and return every number as a JSON-ready dict."""
    config = config or SpeedConfig()
    if overrides:
        config = SpeedConfig(**{**asdict(config), **overrides})
    unknown = set(config.suites) - set(SUITES)
    if unknown:
        raise BenchError(f"unknown benchmark suites {sorted(unknown)}; expected some of {', '.join(SUITES)}")
    device = resolve_device(config.device)  # before any work: a bad --device fails at once
    torch.set_num_threads(config.threads)
    result: dict[str, Any] = {"config": asdict(config), "machine": machine(device),
                              "matmul_gflops": matmul_rate(device=device, batch=config.batch)}
    started = time.perf_counter()
    quick = config.quick
    pcx_threads = config.threads if config.threads == 1 else None
    if "target" in config.suites:
        worker = None
        if "pcx" in config.suites and device.type == "cpu":  # PCX timed in the target's rounds, in turn with pclab
            distinct = 40 if quick else math.ceil(MNIST_TRAIN / config.batch)
            worker = PcxWorker.start(config.pcx_venv, batches=distinct, steps=config.steps, batch=config.batch, threads=pcx_threads)
        try:
            result["target"] = target(config.batch, config.steps, chunk=5 if quick else config.chunk,
                                      rounds=3 if quick else config.rounds, compile=config.compile, device=device, pcx=worker)
        finally:
            if worker is not None:
                worker.close()
        result["target"]["floor"] = ratio_floor(result["target"], result["matmul_gflops"][f"{config.batch}x128x128"])
        if worker is not None:
            result["pcx"] = _pcx_from_target(worker, result["target"])
    if "pcx" in config.suites and "pcx" not in result:
        epoch = math.ceil(MNIST_TRAIN / config.batch)
        pcx_chunk = 10 if quick else config.chunk or epoch  # PC and BP alternate by chunks over distinct batches
        pcx_batches = 40 if quick else (3 * epoch if config.chunk is None else 10 * config.chunk)
        result["pcx"] = pcx_comparison(config.pcx_venv, batches=pcx_batches,
                                       chunk=pcx_chunk, steps=config.steps, batch=config.batch, threads=pcx_threads)
        result["pcx"]["device"] = "cpu"
        # pclab's PC (eager fast path, compiled) per batch over PCX's: like for like on the CPU only
        if "target" in result and device.type == "cpu":
            for row in result["target"]["rows"]:
                if row["algorithm"].startswith("pc"):
                    result["pcx"][f"pclab_{row['algorithm']}_over_pcx_pc"] = row["batch_ms"] / result["pcx"]["pc_batch_ms"]
    if "algorithms" in config.suites:
        names = ("bp", "pc", "pc-compiled", "pc-reference", "ipc", "ipc-compiled", "bpti", "bpti-compiled", "bpti-ckpt", "bpti-x")
        if not config.compile:
            names = tuple(n for n in names if not n.endswith("-compiled"))
        models = ("mlp128", "conv") if quick else ("mlp128", "mlp512", "conv")
        result["algorithms"] = algorithms(models, names, batch=config.batch, steps=config.steps, rounds=2 if quick else 5,
                                          device=device)
    if "bpti" in config.suites:
        result["bpti"] = bpti_ratio(("mlp128", "conv") if quick else ("mlp128", "mlp512", "conv"), batch=config.batch, steps=config.steps,
                                    rounds=2 if quick else config.rounds, compile=config.compile, device=device,
                                    chunks={"mlp128": 2, "conv": 1} if quick else None)
    if "scaling" in config.suites:
        if quick:
            result["scaling"] = scaling(ts=(5, 20), depths=(3, 5), widths=(128,), batch=config.batch, rounds=2,
                                        device=device)
        else:
            result["scaling"] = scaling(batch=config.batch, steps=config.steps, device=device)
    if "memory" in config.suites:
        result["memory"] = memory(ts=(10, 50) if quick else (10, 20, 50, 100, 200), device=device)
    result["compile_seconds"] = compiled.compile_seconds()
    result["wall_seconds"] = time.perf_counter() - started
    result["machine"]["load_average_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    return result


def summary(result: dict[str, Any]) -> str:
    """A plain-text summary of :func:`run_speed_benchmark`'s result."""
    m = result["machine"]
    lines = [f"machine: {m['cpu']}, {m['cores']} cores, torch {m['torch']}, {m['torch_threads']} threads, "
             f"load average {m.get('load_average')} -> {m.get('load_average_end')}",
             "matmul GFLOP/s (measured now): " + ", ".join(f"{k} {v:.0f}" for k, v in result["matmul_gflops"].items())]
    if m.get("gpu"):  # the matmul rate above and every time below are the GPU's
        lines.insert(1, f"device: {m['device']}, {m['gpu']}, {m['gpu_memory_gib']:.1f} GiB, CUDA {m['cuda']}, "
                        f"driver {m['driver']}")
    if "target" in result:
        t = result["target"]
        lines.append(f"target ({t['model']}, batch {t['batch']}, T={t['steps']}), epoch = {math.ceil(MNIST_TRAIN / t['batch'])} batches:")
        for row in t["rows"]:
            lines.append(f"  {row['algorithm']:12s} epoch {row['epoch_s']:6.2f} s (least disturbed chunk {row['epoch_s_best']:6.2f} s)")
        for name, r in t["ratio_to_bp"].items():
            lines.append(f"  {name}/bp epoch ratio: {r['median']:.2f} (least disturbed chunks {r['best']:.2f}); target <= 1.5")
        if t["compile_seconds"] is not None:
            lines.append(f"  compile (first pc-compiled batches, not in the epoch times): {t['compile_seconds']:.1f} s")
        if "floor" in t:
            f = t["floor"]
            n = t["widths"][1]
            lines.append(f"  floor: T sequential {t['batch']}x{n}x{n} products at the rate measured now ({f['rate_gflops']:.0f} GFLOP/s, "
                         f"{f['product_us']:.1f} us each) alone make pc/bp >= {f['ratio_floor']:.2f}")
    if "pcx" in result:
        p = result["pcx"]
        lines.append(f"PCX {p['pcx_version']} (JAX {p['jax_version']}): PC epoch {p['pc_epoch_s']:.2f} s, JAX BP epoch {p['bp_epoch_s']:.2f} s, "
                     f"PC/BP {p['pc_over_bp']:.2f}; compile PC {p['pc_compile_s']:.1f} s"
                     + ("; timed in the target's rounds, in turn with pclab" if p.get("interleaved_with_target") else ""))
        for key, value in p.items():
            if key.startswith("pclab_") and key.endswith("_over_pcx_pc"):
                paired = p.get(key + "_paired")
                lines.append(f"  pclab {key[6:-12]} / PCX PC per batch: {value:.2f}"
                             + (f" (median of the rounds' own ratios {paired:.2f})" if paired is not None else ""))
        if m.get("device", "cpu") != "cpu":
            lines.append(f"  PCX ran on the CPU, pclab on {m['device']}: no pclab/PCX ratio")
    for entry in result.get("algorithms", []):
        lines.append(f"algorithms on {entry['model']} (batch {entry['batch']}, T={entry['steps']}):")
        for row in entry["rows"]:
            lines.append(
                f"  {row['algorithm']:12s} {row['batch_ms']:8.2f} ms/batch {row['samples_per_s']:9.0f} samples/s "
                f"epoch {row['epoch_s']:7.1f} s  {row.get('gflops', float('nan')):6.1f} GFLOP/s"
                + (f"  x{row['ratio_to_bp']:.2f} bp" if "ratio_to_bp" in row else "")
            )
        if entry.get("bpti_over_pc"):
            lines.append("  bp-through-inference / PC at equal T: "
                         + ", ".join(f"{mode} {ratio:.2f}" for mode, ratio in entry["bpti_over_pc"].items()) + " (target <= 2)")
    if result.get("bpti"):
        lines.append("bp-through-inference / PC at equal T, the two alone in adjacent chunks "
                     "(median of the rounds' own ratios [quartiles]; target <= 2):")
        for entry in result["bpti"]:
            lines.append(f"  {entry['model']:7s} (chunks of {entry['chunk']}, {entry['rounds']} rounds) " + ", ".join(
                f"{mode} {r['paired_median']:.2f} [{r['quartiles'][0]:.2f}, {r['quartiles'][1]:.2f}] "
                f"({r['bpti_ms']:.2f} / {r['pc_ms']:.2f} ms)" for mode, r in entry.items() if isinstance(r, dict))
                + f"; FLOPs {entry['flops_ratio']:.2f}x PC's")
    if "scaling" in result:
        s = result["scaling"]
        f = s["fit_vs_T_ms"]
        lines.append(f"scaling: PC ms/batch = {f['intercept']:.2f} + {f['slope']:.3f} * T (R^2 {f['r2']:.3f})")
        for key, fits in s.items():
            if key.startswith("fit_vs_depth"):
                lines.append(f"  {key}: PC {fits['pc']['intercept']:.2f} + {fits['pc']['slope']:.3f} * depth; "
                             f"BP {fits['bp']['intercept']:.2f} + {fits['bp']['slope']:.3f} * depth")
    if "memory" in result:
        lines.append("peak memory of one step, MiB (live heap / resident) vs T:")
        for row in result["memory"]["rows"]:
            names = [k for k in row if k != "T" and not k.endswith("_rss")]
            lines.append(f"  T={row['T']:<4d} " + "  ".join(f"{k} {row[k]:6.1f}/{row[k + '_rss']:6.1f}" for k in names))
        for a, f in result["memory"]["fit_heap_MiB_vs_T"].items():
            lines.append(f"  {a}: heap {f['intercept']:.2f} + {f['slope']:.4f} * T MiB")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m pclab.bench [suites...] [--threads N] [--quick] [--no-compile] [--device D] [--json PATH]``.

    Raises :class:`BenchError` for an unknown suite or an unusable ``--device``."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m pclab.bench", description="pclab speed benchmarks")
    parser.add_argument("suites", nargs="*", default=["target"], help=f"any of {', '.join(SUITES)} (default: target)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=10, help="timed chunks per algorithm, in rotating order (default 10)")
    parser.add_argument("--chunk", type=int, default=None,
                        help="batches per timed chunk of the target and PCX (default: an epoch, each over distinct batches)")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--no-compile", action="store_true")
    parser.add_argument("--with-pcx", action="store_true", help="also time PCX in its own virtual environment")
    parser.add_argument("--pcx-venv", default=None, help="PCX virtual environment (created if missing)")
    parser.add_argument("--json", default=None, help="write the result here")
    parser.add_argument("--device", default="cpu",
                        help="cpu (default), cuda, cuda:N, or auto (cuda if available); PCX always runs on the CPU")
    args = parser.parse_args(argv)
    suites = tuple(args.suites) + (("pcx",) if args.with_pcx and "pcx" not in args.suites else ())
    result = run_speed_benchmark(SpeedConfig(suites, args.threads, args.rounds, args.chunk, args.batch, args.steps,
                                             not args.no_compile, args.quick, args.pcx_venv, args.device))
    result["command"] = " ".join(["python -m pclab.bench", *(argv if argv is not None else sys.argv[1:])])
    print(summary(result))
    if args.json:
        write_json(args.json, result)


def script_main(argv: Sequence[str] | None = None) -> None:
    """:func:`main` for ``python -m pclab.bench`` and ``bench/speed.py``: a :class:`BenchError`
    becomes one ``error:`` line and exit code 2, as the ``pclab`` command reports bad arguments."""
    try:
        main(argv)
    except BenchError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    script_main()
