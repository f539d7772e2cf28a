"""The ``pclab bench`` entry point: which suites run (:class:`SpeedConfig`), the run itself
(:func:`run_speed_benchmark`), its plain-text summary and the command line (``python -m pclab.bench``)."""

from __future__ import annotations

import math
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch

from ..core.fast import compiled
from ..io import write_json
from . import hardware, pcx, suites
from .hardware import BenchError, resolve_device
from .timing import MNIST_TRAIN


@dataclass
class SpeedConfig:
    """What :func:`run_speed_benchmark` runs.

    Args:
        suites: any of ``target``, ``algorithms``, ``bpti``, ``scaling``, ``memory``, ``pcx``, ``epc``.
        threads: torch intra-op threads.
        rounds: interleaved timing rounds of the target and of ``bpti`` (more: steadier medians).
        chunk: batches per timing chunk of the target and the PCX comparison; ``None``: an epoch.
        batch: batch size of the target and the PCX comparison.
        steps: inference steps ``T`` of the target and the PCX comparison.
        compile: include the ``torch.compile`` path.
        quick: smaller sweeps (a smoke run).
        pcx_venv: where the PCX environment lives (default :func:`pclab.bench.pcx.default_pcx_venv`).
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


SUITES = ("target", "algorithms", "bpti", "scaling", "memory", "pcx", "epc")


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
    result: dict[str, Any] = {"config": asdict(config), "machine": hardware.machine(device),
                              "matmul_gflops": hardware.matmul_rate(device=device, batch=config.batch)}
    started = time.perf_counter()
    quick = config.quick
    pcx_threads = config.threads if config.threads == 1 else None
    if "target" in config.suites:
        worker = None
        if "pcx" in config.suites and device.type == "cpu":  # PCX timed in the target's rounds, in turn with pclab
            distinct = 40 if quick else math.ceil(MNIST_TRAIN / config.batch)
            worker = pcx.PcxWorker.start(config.pcx_venv, batches=distinct, steps=config.steps, batch=config.batch, threads=pcx_threads)
        try:
            result["target"] = suites.target(config.batch, config.steps, chunk=5 if quick else config.chunk,
                                      rounds=3 if quick else config.rounds, compile=config.compile, device=device, pcx=worker)
        finally:
            if worker is not None:
                worker.close()
        result["target"]["floor"] = suites.ratio_floor(result["target"], result["matmul_gflops"][f"{config.batch}x128x128"])
        if worker is not None:
            result["pcx"] = pcx.pcx_from_target(worker, result["target"])
    if "pcx" in config.suites and "pcx" not in result:
        epoch = math.ceil(MNIST_TRAIN / config.batch)
        pcx_chunk = 10 if quick else config.chunk or epoch  # PC and BP alternate by chunks over distinct batches
        pcx_batches = 40 if quick else (3 * epoch if config.chunk is None else 10 * config.chunk)
        result["pcx"] = pcx.pcx_comparison(config.pcx_venv, batches=pcx_batches,
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
        result["algorithms"] = suites.algorithms(models, names, batch=config.batch, steps=config.steps, rounds=2 if quick else 5,
                                          device=device)
    if "bpti" in config.suites:
        result["bpti"] = suites.bpti_ratio(("mlp128", "conv") if quick else ("mlp128", "mlp512", "conv"), batch=config.batch, steps=config.steps,
                                    rounds=2 if quick else config.rounds, compile=config.compile, device=device,
                                    chunks={"mlp128": 2, "conv": 1} if quick else None)
    if "scaling" in config.suites:
        if quick:
            result["scaling"] = suites.scaling(ts=(5, 20), depths=(3, 5), widths=(128,), batch=config.batch, rounds=2,
                                        device=device)
        else:
            result["scaling"] = suites.scaling(batch=config.batch, steps=config.steps, device=device)
    if "memory" in config.suites:
        result["memory"] = suites.memory(ts=(10, 50) if quick else (10, 20, 50, 100, 200), device=device)
    if "epc" in config.suites:  # sPC vs ePC: steps and time to equilibrium (pclab.bench.epc)
        from . import epc

        result["epc"] = epc.run(quick, compiled=config.compile)
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
    if "epc" in result:
        from . import epc

        lines.extend(epc.summary(result["epc"]))
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

    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["study"]:  # where a study preset's time goes (pclab.bench.study)
        from . import study

        study.main(argv[1:])
        return
    parser = argparse.ArgumentParser(prog="python -m pclab.bench", description="pclab speed benchmarks",
                                     epilog="`study tradeoff --preset P`: where a study preset's wall time goes (`study --help`)")
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
    chosen = tuple(args.suites) + (("pcx",) if args.with_pcx and "pcx" not in args.suites else ())
    result = run_speed_benchmark(SpeedConfig(chosen, args.threads, args.rounds, args.chunk, args.batch, args.steps,
                                             not args.no_compile, args.quick, args.pcx_venv, args.device))
    result["command"] = " ".join(["python -m pclab.bench", *argv])
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
