"""Speed benchmarks: PC, incremental PC, backprop through inference and backprop, side by side.

:func:`run_speed_benchmark` measures, in one process and one run (so ratios compare like with
like on a shared or noisy machine):

* ``target``  -- the speed target: one epoch of PC (MLP 784-128-128-10 tanh, batch 64,
  ``T = 20``, latent SGD 0.1, Adam 1e-3) against a minimal PyTorch backprop loop on the same MLP;
* ``algorithms`` -- samples/s, epoch time and achieved GFLOP/s of PC (fast path, compiled,
  reference graph code), incremental PC, bp-through-inference (with and without checkpointing) and
  backprop on MLPs of width 128 and 512 and a small conv net;
* ``bpti`` -- the bp-through-inference / PC target on the same three models, each pair
  (eager; compiled) timed alone in adjacent chunks, with the rounds' own ratios (:func:`bpti_ratio`);
* ``scaling`` -- PC cost against ``T`` and against depth, with least-squares lines;
* ``memory`` -- peak memory of one training step against ``T`` (10 .. 200) for
  bp-through-inference without checkpointing, with per-step checkpointing and with binomial
  checkpointing (``bpti-flat``), and PC (each point in a fresh process);
* ``pcx`` -- PCX 0.6 (JAX) on the target's problem, in its own virtual environment. With ``target``
  (on the CPU) PCX's PC and backprop steps run in a worker process (:class:`PcxWorker`) and are
  timed in the target's rounds, in turn with pclab's, so both sides see the same machine speed (a
  shared machine can have phases of minutes in which everything runs slower); alone, one PCX run after pclab's.

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

The package, read in this order: :mod:`.run` (the suites chosen, the run, its summary, the command
line), :mod:`.suites` (what each suite measures), :mod:`.timing` (interleaved chunks),
:mod:`.steps` (one training step per algorithm, FLOP counting), :mod:`.models`, :mod:`.hardware`
(device, clock, machine record, matmul rate), :mod:`.peak_memory` and :mod:`.heap_probe` (memory),
:mod:`.pcx` (PCX's environment and worker; :mod:`.pcx_script` is the JAX side, never imported here).
"""

from .hardware import BenchError, clock, gpu, machine, matmul_rate, resolve_device, synchronize
from .models import MODELS, as_sequential, conv_pcn, mlp_flops, mlp_pcn, model_of, widths_of
from .pcx import PCX_REQUIREMENT, PcxWorker, default_pcx_venv, ensure_pcx_venv, pcx_comparison, pcx_from_target
from .peak_memory import cuda_peak_memory_mib, peak_memory_mib
from .run import SUITES, SpeedConfig, main, run_speed_benchmark, script_main, summary
from .steps import BPTI_FLAT_SLOTS, Step, bp_step, counted_flops, make_algorithm
from .suites import BPTI_CHUNKS, algorithms, bpti_ratio, memory, ratio_floor, scaling, target
from .timing import MNIST_TRAIN, ChunkTimer, Timing, compile_time, data, fit_line, interleaved, row

__all__ = [
    "BPTI_CHUNKS", "BPTI_FLAT_SLOTS", "MNIST_TRAIN", "MODELS", "PCX_REQUIREMENT", "SUITES", "BenchError", "ChunkTimer", "PcxWorker",
    "SpeedConfig", "Step", "Timing", "algorithms", "as_sequential", "bp_step", "bpti_ratio", "clock", "compile_time", "conv_pcn",
    "counted_flops", "cuda_peak_memory_mib", "data", "default_pcx_venv", "ensure_pcx_venv", "fit_line", "gpu", "interleaved",
    "machine", "main", "make_algorithm", "matmul_rate", "memory", "mlp_flops", "mlp_pcn", "model_of", "pcx_comparison", "pcx_from_target",
    "peak_memory_mib", "ratio_floor", "resolve_device", "row", "run_speed_benchmark", "scaling", "script_main", "summary",
    "synchronize", "target", "widths_of",
]
