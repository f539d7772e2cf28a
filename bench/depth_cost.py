"""CPU cost of the depth study's MLP trials, and the run-time estimate of a preset sized from it.

Measures, with one thread (as a study trial runs), the CPU seconds (``time.process_time``, so a shared
machine's load does not inflate it) of one training batch of 128 MNIST images per method kind at depths
10 and 20, with T = depth and T = 4 x depth where T is tuned, and of one muPC iteration per residual run.
The estimate scales the depth-20 cost to other depths by the exponent the depth-10 / depth-20 pair gives,
interpolates T linearly between N and 4N, adds 3 s per trial (data, evaluation), and divides by 2 (trials
run two at a time on 2 cores). The chosen T is only known after tuning, so the estimate is given for
T = N, 2N and 4N for every method whose T is tuned. VGG trials are not estimated here (see
``bench/depth_vgg_timing.py``). Usage::

    python bench/depth_cost.py --preset standard --json bench/results/depth-cost/standard.json
    python bench/depth_cost.py --shares --json bench/results/depth-cost/shares.json   # where a step goes
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import torch

from pclab.io import write_json
from pclab.studies import depth as study
from pclab.train import load_data, make_batch, prepare

KINDS = {"pc+fu": "pc", "spiking": "spiking+fu", "decaying": "spiking+fu", "decaying+fu": "spiking+fu", "epc+fu": "epc", "bp-frozen": "bp"}
"""Methods whose per-batch cost is that of another (same relaxation and weight step)."""


def _training_run(variant: str, depth: int, factor: int, images: int):
    """``(config, run, train images, labels)`` of a standard-preset MLP trial (AdamW, seed 0) on
    ``images`` training images, relaxing ``factor`` x depth steps where the method relaxes."""
    training = study.PRESETS["standard"]["training"]
    p = {"kind": "accuracy", "training": training, "variant": variant, "model": "mlp", "depth": depth, "dataset": "mnist",
         "train_subset": images, "test_subset": 256, "epochs": 1, "seed": 0, "optimizer": "adamw"}
    if variant != "bp":
        p.update(latent_optimizer="sgd", latent_lr=0.1, steps_factor=factor)
    config = study._config(p, 784, 10)
    data = load_data(config)
    return config, prepare(config, data), data[0].images, data[0].labels


def batch_cpu(variant: str, depth: int, factor: int, batches: int = 10) -> float:
    """Mean CPU seconds of one training step (batch 128, AdamW) after 2 warm-up steps."""
    config, run, images, labels = _training_run(variant, depth, factor, 128 * (batches + 2))
    steps = [make_batch(config, images[i:i + 128], labels[i:i + 128], 10) for i in range(0, 128 * (batches + 2), 128)]
    for batch in steps[:2]:
        run.rule.step(batch)
    started = time.process_time()
    for batch in steps[2:]:
        run.rule.step(batch)
    return (time.process_time() - started) / batches


def step_shares(variant: str, depth: int, factor: int) -> dict[str, float]:
    """Where one training step (AdamW) goes: its wall seconds at batch 128 and at 4 examples, the
    fixed part that does not grow with the batch (Python, dispatch, kernel launches: what stacking
    trials could share out) and its matrix products replayed alone (:func:`pclab.bench.study.step_costs`)."""
    from pclab.bench.study import step_costs

    config, run, images, labels = _training_run(variant, depth, factor, 256)

    def make(b: int):
        batch = make_batch(config, images[:b], labels[:b], 10)
        return lambda: run.rule.step(batch)

    costs = step_costs(make, 128)
    return {**costs, "fixed_share": costs["fixed"] / costs["step"], "products_share": costs["products"] / costs["step"]}


def shares() -> dict:
    """:func:`step_shares` of every method kind at depth 20, T = N and (tuned kinds) 4N."""
    torch.set_num_threads(1)
    out = {}
    for kind in ("bp", "pc", "spiking+fu", "epc", "bpti"):
        for factor in ((1, 4) if kind in study.STEPS_TUNED else (1,)):
            r = step_shares(kind, 20, factor)
            out[f"{kind}/T={factor}N" if kind != "bp" else kind] = r
            print(f"{kind:11s} T={factor}N  step {r['step'] * 1e3:7.1f} ms  fixed {r['fixed_share']:4.0%}  products {r['products_share']:4.0%}",
                  flush=True)
    return out


def mupc_cpu(rule: str, delay: int, depth: int, iterations: int = 40) -> float:
    """CPU seconds per iteration of a muPC trial (data loading and one test included, so an upper bound)."""
    m = study.PRESETS["standard"]["mupc"]
    p = {"kind": "mupc", "parameterisation": "mupc", "rule": rule, "seed": 0, "dataset": "mnist", "width": m["width"], "depth": depth,
         "batch_size": m["batch_size"], "latent_lr": m["latent_lr"], "param_lr": m["param_lr"], "train_subset": 10_000,
         "iterations": iterations, "test_every": iterations, "test_subset": 1000, **({"skip_delay": delay} if delay else {})}
    started = time.process_time()
    study.mupc_trial(p)
    return (time.process_time() - started) / iterations


def measure() -> dict:
    torch.set_num_threads(1)
    cost = {}
    for kind in ("bp", "pc", "spiking+fu", "epc", "bpti"):
        tuned = kind in study.STEPS_TUNED
        cost[kind] = {"d10_N": batch_cpu(kind, 10, 1), "d20_N": batch_cpu(kind, 20, 1)}
        cost[kind]["d20_4N"] = batch_cpu(kind, 20, 4) if tuned else cost[kind]["d20_N"]
        print(kind, {k: round(v, 4) for k, v in cost[kind].items()}, flush=True)
    mupc = {f"{rule}/{delay}": mupc_cpu(rule, delay, 20) for rule, delay in (("pc", 0), ("epc", 0), ("pc", 1), ("bp", 0))}
    print("muPC per iteration", {k: round(v, 4) for k, v in mupc.items()}, flush=True)
    return {"batch_cpu_seconds": cost, "mupc_iteration_cpu_seconds_depth20": mupc}


def per_batch(cost: dict, variant: str, depth: int, factor: int) -> float:
    c = cost[KINDS.get(variant, variant)]
    exponent = math.log(c["d20_N"] / c["d10_N"]) / math.log(2)
    at20 = c["d20_N"] + (c["d20_4N"] - c["d20_N"]) * (factor - 1) / 3
    return at20 * (depth / 20) ** exponent


def estimate(preset: str, measured: dict, factor: int) -> dict:
    """CPU hours of a preset's MLP tuning, MLP final and muPC trials if every tuned T is ``factor`` x depth."""
    config = study._resolve(preset, None)
    cost, out, u = measured["batch_cpu_seconds"], Path("unused"), config["tuning"]
    bs = config["training"]["batch_size"]
    train_n = 60_000

    def trial(p: dict, images: int, epochs: int) -> float:
        f = p["steps_factor"] if p.get("stage") == "latent" else factor if p["variant"] in study.STEPS_TUNED else 1
        return math.ceil(images / bs) * epochs * per_batch(cost, p["variant"], p["depth"], f) + 3.0

    tune_images = u["train_subset"] or train_n - u["validation"]
    latent = [trial(p, tune_images, u["epochs"]) for p in study.latent_trials(config, out)]  # each at its own T
    sgd = [trial(p, tune_images, u["epochs"]) for p in study.sgd_trials(config, out, {})]
    final = [trial(p, config["train_subset"] or train_n, config["epochs"]) for p in study.trials(config, out)
             if p["kind"] == "accuracy" and p["model"] == "mlp"]
    m, it = config["mupc"], measured["mupc_iteration_cpu_seconds_depth20"]
    mupc = sum(len(m["seeds"]) * m["iterations"] * it.get(f"{r[1]}/{r[2] if len(r) > 2 else 0}", it["pc/0"]) * m["depth"] / 20
               for r in m["runs"])
    total = sum(latent) + sum(sgd) + sum(final) + mupc
    return {"T": f"{factor}N", "tuning_trials": len(latent) + len(sgd), "tuning_cpu_hours": (sum(latent) + sum(sgd)) / 3600,
            "final_mlp_trials": len(final), "final_cpu_hours": sum(final) / 3600, "mupc_cpu_hours": mupc / 3600,
            "total_cpu_hours": total / 3600, "hours_on_2_cores": total / 7200}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", action="append", default=None, help="preset(s) to estimate (default: quick, standard)")
    parser.add_argument("--json", type=Path, default=None, help="write the measurements and estimates here")
    parser.add_argument("--shares", action="store_true", help="instead: where one depth-20 training step goes (fixed cost, products)")
    args = parser.parse_args()
    if args.shares:
        result = {"depth": 20, "batch": 128, "threads": 1, "torch": torch.__version__, "steps": shares()}
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            write_json(args.json, result)
        return
    measured = measure()
    presets = args.preset or ["quick", "standard"]
    estimates = {p: [estimate(p, measured, f) for f in (1, 2, 4)] for p in presets}
    for preset, rows in estimates.items():
        for r in rows:
            print(f"{preset} T={r['T']}: {r['tuning_trials']} tuning trials {r['tuning_cpu_hours']:.2f} CPU-h, {r['final_mlp_trials']} MLP "
                  f"trials {r['final_cpu_hours']:.2f} CPU-h, muPC {r['mupc_cpu_hours']:.2f} CPU-h; total {r['total_cpu_hours']:.2f} CPU-h "
                  f"= {r['hours_on_2_cores']:.2f} h on 2 cores")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        write_json(args.json, {**measured, "estimates": estimates, "threads": 1, "torch": torch.__version__})


if __name__ == "__main__":
    main()
