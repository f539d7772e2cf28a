"""Study "depth": deep PCNs, from failure to backprop accuracy (Qi, Forasassi, Lukasiewicz &
Salvatori 2025; REFERENCE sections 5 and 7).

Three parts, each a set of trials run by :func:`pclab.sweep.run_trials`:

* **accuracy vs depth** -- width-``W`` MLPs (and a VGG-style conv net with BatchNorm whose running
  statistics move only in the weight phase, ``vgg_bn``) of several depths, trained by
  PC, PC + spiking precision, PC + decaying precision, each with and without the forward-update
  weight rule, and by backprop (optionally the separate fixes only at one depth, ``fix_depth``). Every variant of one (dataset, depth, seed) starts from the same
  initial weights and sees the same batches (paired seeds). Training goes through
  :func:`pclab.train.train`; accuracy is the feed-forward read-out on the test set, best epoch.
* **diagnostics** (one depth per dataset) -- on a fixed training batch, at initialisation and after
  training: energy and error norm per layer per relaxation step, the step at which each layer's
  error first becomes non-zero, and the norm of each layer's weight gradient (before the optimiser).
* **muPC** -- jpc's 30-layer width-128 ReLU residual MLP on MNIST (Innocenti et al. 2025; 93.26 %
  after 900 iterations in their notebook) and the same network in the standard parameterisation
  trained by plain PC, for contrast.

Relaxation uses ``T = N`` steps (``N`` = error layers = depth), the least that lets the spiking
schedule's unit spike visit every layer.
"""

from __future__ import annotations

import copy
import functools
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from .. import data as pdata
from ..core import SGD, Backprop, Inference, PCLearning, TaskLoss, relax
from ..io import load_torch
from ..models.deep import residual_mlp
from ..sweep import failures, records_frame, run_trials, trial_id
from ..train import ConfigError, RunConfig, load_data, make_batch, prepare, train, validate
from ..train.config import DATA_SHAPES, MAX_EPOCHS, cut, short
from .report import VARIANT_COLOURS, Report, plt, rule_colour
from .settings import check_settings, preflight
from .stats import claim, mean_interval, paired_difference

VARIANTS: dict[str, dict[str, Any]] = {
    "pc": {"rule": "pc", "precision": "constant", "forward_update": False},
    "pc+fu": {"rule": "pc", "precision": "constant", "forward_update": True},
    "spiking": {"rule": "pc", "precision": "spiking", "forward_update": False},
    "spiking+fu": {"rule": "pc", "precision": "spiking", "forward_update": True},
    "decaying": {"rule": "pc", "precision": "decaying", "forward_update": False},
    "decaying+fu": {"rule": "pc", "precision": "decaying", "forward_update": True},
    "bp": {"rule": "bp", "precision": "constant", "forward_update": False},
}
"""Name -> learning rule, precision schedule in relaxation, forward-update weight rule."""

_TRAINING = {  # init "lecun": with PyTorch's default init a depth-15 tanh chain barely trains even by backprop
    "width": 128, "activation": "tanh", "output": "ce", "batch_size": 32, "init": "lecun",
    "latent_optimizer": "sgd", "latent_lr": 0.5, "latent_momentum": 0.0, "alpha": 1e-3, "decay": 1.0,
    "weight_optimizer": "adamw", "lr_pc": 1e-3, "lr_bp": 1e-3, "weight_decay": 1e-4,
}

_MUPC = {  # jpc examples/mupc.ipynb (REFERENCE 7); latent_lr in jpc's units (gradient of the batch-mean energy)
    "dataset": "mnist", "width": 128, "depth": 30, "iterations": 900, "batch_size": 64, "latent_lr": 0.5,
    "param_lr": 0.1, "test_every": 100, "test_subset": None, "train_subset": None,
    "runs": [["mupc", "pc"], ["standard", "pc"]], "seeds": [0],
}

_QUICK_TRAINING = {**_TRAINING, "batch_size": 128}
# the paper's recipe (REFERENCE 5): AdamW with warm-up and cosine decay, batch 128
_TARGETS_TRAINING = {**_TRAINING, "batch_size": 128, "schedule": "cosine", "warmup_epochs": 1.0}

PRESETS: dict[str, dict[str, Any]] = {
    "tiny": {
        "datasets": ["digits"], "depths": [3, 5], "variants": list(VARIANTS), "seeds": [0], "epochs": 1,
        "train_subset": 256, "test_subset": 128, "diagnostic_depth": 5,
        "vgg_dataset": "digits", "vgg_depths": [3], "vgg_width": 4, "vgg_variants": ["pc", "spiking+fu", "bp"],
        "training": {**_TRAINING, "width": 16, "batch_size": 32},
        "mupc": {**_MUPC, "dataset": "digits", "width": 16, "depth": 6, "iterations": 12, "batch_size": 32,
                 "test_every": 6, "test_subset": 128, "train_subset": 512},
    },
    "quick": {
        "datasets": ["mnist"], "depths": [3, 7, 11, 15], "variants": ["pc", "spiking+fu", "decaying+fu", "bp"],
        "seeds": [0], "epochs": 2, "train_subset": None, "test_subset": None, "diagnostic_depth": 11,
        "vgg_dataset": None, "vgg_depths": [], "training": _QUICK_TRAINING,
        "mupc": {**_MUPC, "iterations": 200, "test_every": 50, "test_subset": 1000},
    },
    "targets": {
        "datasets": ["mnist", "fashion-mnist"], "depths": [3, 7, 11, 15],
        "variants": ["pc", "spiking+fu", "decaying+fu", "bp"], "fix_depth": 15,
        "fix_variants": ["pc+fu", "spiking", "decaying"], "seeds": [0, 1], "epochs": 5, "train_subset": None,
        "test_subset": None, "diagnostic_depth": 15, "vgg_dataset": None, "vgg_depths": [],
        "training": _TARGETS_TRAINING,
        "mupc": {**_MUPC, "runs": [["mupc", "pc"], ["standard", "pc"]], "seeds": [0]},
    },
    "full": {
        "datasets": ["mnist", "fashion-mnist"], "depths": [3, 5, 7, 9, 11, 15, 20], "variants": list(VARIANTS),
        "seeds": [0, 1, 2], "epochs": 10, "train_subset": None, "test_subset": None, "diagnostic_depth": 15,
        "vgg_dataset": "fashion-mnist", "vgg_depths": [5, 7, 9], "vgg_width": 16, "training": dict(_TRAINING),
        "mupc": {**_MUPC, "runs": [["mupc", "pc"], ["standard", "pc"], ["mupc", "bp"]], "seeds": [0, 1, 2]},
    },
}
"""Study presets and their budgets on 2 CPU cores (2 Ray workers); measured run times are on the
benchmarks page.

``tiny``: digits, for tests (seconds); includes one VGG-BN depth.
``quick``: MNIST, all 60k training / 10k test images, 2 epochs at batch 128, depths 3-15, 4 variants,
one seed; muPC 200 iterations tested on 1k images. About 5 minutes.
``targets``: the study's targets as far as 2 cores allow: MNIST and Fashion-MNIST, all images, 5 epochs at
batch 128 (warm-up + cosine), depths 3 / 7 / 11 / 15, pc, spiking+fu, decaying+fu and bp, plus the separate
fixes pc+fu, spiking and decaying at depth 15, seeds 0 and 1 (paired); muPC and the standard
parameterisation for jpc's full 900 iterations (one seed). About an hour.
``full``: everything, including the phase-BN VGG on Fashion-MNIST: about 35 core-hours (about 18 hours on
2 cores); for a Ray cluster."""


# ----------------------------------------------------------------------------------------- trials
def _config(p: dict[str, Any], input_dim: int = 1, classes: int = 10) -> RunConfig:
    """The :class:`RunConfig` of an accuracy trial (``input_dim``/``classes`` fill the MLP widths)."""
    t, v = p["training"], VARIANTS[p["variant"]]
    if p["model"] == "mlp":
        model = {"kind": "mlp", "widths": [input_dim, *[t["width"]] * (p["depth"] - 1), classes],
                 "activation": t["activation"], "output": t["output"], "init": t.get("init", "default")}
    elif p["model"] == "vgg-bn":  # the paper's VGG: BatchNorm statistics updated in the weight phase only
        model = {"kind": "vgg_bn", "depth": p["depth"], "width": p["vgg_width"], "activation": "gelu", "output": t["output"]}
    else:
        raise ValueError(f"unknown depth-study model {p['model']!r}; expected 'mlp' or 'vgg-bn'")
    momentum = t["latent_momentum"] if t["latent_optimizer"] != "sgd" else 0.0
    return validate({
        "model": model,
        "inference": {"steps": p["depth"], "optimizer": t["latent_optimizer"], "lr": t["latent_lr"], "momentum": momentum,
                      "precision": v["precision"], "alpha": t["alpha"], "decay": t["decay"]},
        "learning": {"rule": v["rule"], "forward_update": v["forward_update"], "optimizer": t["weight_optimizer"],
                     "lr": t["lr_bp"] if v["rule"] == "bp" else t["lr_pc"], "weight_decay": t["weight_decay"],
                     "schedule": t.get("schedule", "constant"), "warmup_epochs": t.get("warmup_epochs", 0.0)},
        "data": {"dataset": p["dataset"], "batch_size": t["batch_size"], "train_subset": p["train_subset"],
                 "test_subset": p["test_subset"]},
        "epochs": p["epochs"], "seed": p["seed"],
    }, f"depth trial {p['variant']} depth {p['depth']}")


def _first_nonzero(column: list[float], tol: float = 1e-10) -> int:
    """First step whose value exceeds ``tol`` (``-1``: never)."""
    return next((t for t, v in enumerate(column) if v > tol), -1)


def _edge_grad_norms(model, loss: torch.Tensor) -> list[float]:
    """L2 norm of ``d loss / d theta`` per edge, in the model's edge order (input side first)."""
    params = [list(model.edge_modules[e.key].parameters()) for e in model.edges]
    flat = [q for group in params for q in group]
    grads = torch.autograd.grad(loss, flat, allow_unused=True)
    out, i = [], 0
    for group in params:
        g = [x for x in grads[i:i + len(group)] if x is not None]
        i += len(group)
        out.append(float(torch.sqrt(sum((x.double() ** 2).sum() for x in g))) if g else 0.0)
    return out


def diagnose(run, batch: dict[str, torch.Tensor]) -> dict[str, Any]:
    """Relaxation and weight-gradient diagnostics of ``run`` (a :class:`pclab.train.Run`) on one batch.

    Returns ``nodes`` (error nodes, input side first), ``edges``; for PC rules ``energy`` and
    ``error_norm`` ``(T+1, nodes)`` (batch means; energy includes the precision schedule),
    ``first_error_step`` per node (``-1``: never non-zero within ``T`` steps); for every rule
    ``grad_norm`` per edge (L2 norm of the weight gradient the optimiser receives).
    """
    model, rule = run.model, run.rule
    out: dict[str, Any] = {"nodes": list(model.error_nodes), "edges": [e.target for e in model.edges]}
    if isinstance(rule, PCLearning):
        relaxed = relax(model, batch, rule.inference, record=True)
        traj = relaxed.trajectory
        out["energy"], out["error_norm"] = traj.energy, traj.error_norm
        columns = list(zip(*traj.error_norm))
        out["first_error_step"] = [_first_nonzero(list(c)) for c in columns]
        loss = rule.weight_energy(relaxed)
    else:
        loss, _ = rule.objective(batch)
    out["grad_norm"] = _edge_grad_norms(model, loss)
    return out


def accuracy_trial(p: dict[str, Any]) -> dict[str, Any]:
    """Train one (dataset, model, depth, variant, seed); return accuracies, timing and diagnostics."""
    torch.set_num_threads(p.get("threads", 1))
    probe = pdata.load(p["dataset"], "test")
    config = _config(p, int(np.prod(probe.images.shape[1:])), probe.classes)
    data = load_data(config)
    folder = Path(p["out"]) / "artifacts" / trial_id({k: v for k, v in p.items() if k != "out"}) if p.get("out") else None
    diagnostics = {}
    if p.get("diagnostics"):
        run = prepare(config, data)
        images, labels = data[0].images[: config.data.batch_size], data[0].labels[: config.data.batch_size]
        diag_batch = make_batch(config, images, labels, data[0].classes)
        diagnostics["init"] = diagnose(run, diag_batch)
    started = time.perf_counter()
    results = train(config, out=folder, progress=False, data=data)
    seconds = time.perf_counter() - started
    if p.get("diagnostics") and folder is not None:
        run = prepare(config, data)
        run.model.load_state_dict(load_torch(folder / "checkpoint.pt")["model"])
        diagnostics["trained"] = diagnose(run, diag_batch)
    return {
        "best_test_accuracy": 100 * results["best_test_accuracy"],
        "final_test_accuracy": 100 * results["test_accuracy"],
        "best_epoch": results["best_epoch"],
        "accuracy_per_epoch": [100 * h["test_accuracy"] for h in results["history"]],
        "epoch_seconds": results["epoch_seconds"],
        "train_seconds": seconds,
        "diagnostics": diagnostics,
    }


def mupc_trial(p: dict[str, Any]) -> dict[str, Any]:
    """jpc's muPC experiment: a residual MLP trained by PC (or backprop) for a number of iterations.

    Settings follow jpc's ``examples/mupc.ipynb``: ReLU, no biases, inputs standardised with the
    training set's mean and std, one-hot labels with a squared-error output energy, ``T = depth``
    latent SGD steps, Adam on the weights, batches drawn without replacement (last partial batch
    dropped). jpc's activity step ``latent_lr`` acts on the gradient of the *batch-mean* energy;
    pclab relaxes each sample's own energy, so the pclab step is ``latent_lr / batch_size``.
    """
    torch.set_num_threads(p.get("threads", 1))
    torch.manual_seed(p["seed"])
    train_set, test_set = pdata.load(p["dataset"], "train"), pdata.load(p["dataset"], "test")
    if p["train_subset"] and p["train_subset"] < len(train_set):
        train_set = train_set.subset(p["train_subset"], seed=p["seed"])
    if p["test_subset"] and p["test_subset"] < len(test_set):
        test_set = test_set.subset(p["test_subset"], seed=p["seed"])
    stats = pdata.channel_stats(train_set.images)

    def inputs(images: torch.Tensor) -> torch.Tensor:
        return pdata.normalise(images, "standard", stats).reshape(len(images), -1)

    classes, dim = train_set.classes, int(np.prod(train_set.images.shape[1:]))
    model = residual_mlp(dim, p["width"], p["depth"], classes, "relu", p["parameterisation"], output="gaussian")
    optimizer = torch.optim.Adam(model.parameters(), p["param_lr"])
    if p["rule"] == "pc":
        inference = Inference(steps=p["depth"], optimizer=SGD(lr=p["latent_lr"] / p["batch_size"]), init="forward",
                              check_finite=False)  # a divergence is a result here
        rule = PCLearning(model, inference, optimizer)
    else:
        rule = Backprop(model, optimizer, TaskLoss(reconstruct={"y": 1.0}), ("x",))
    test_x, test_y = inputs(test_set.images), test_set.labels

    def test_accuracy() -> float:
        with torch.no_grad():
            return 100 * float((model({"x": test_x})["y"].argmax(1) == test_y).float().mean())

    curve, iteration, diverged, epoch = [], 0, False, 0
    started = time.perf_counter()
    while iteration < p["iterations"] and not diverged:
        generator = torch.Generator().manual_seed(p["seed"] * 1_000_003 + epoch)
        for images, labels in pdata.batches(train_set, p["batch_size"], shuffle=True, generator=generator, drop_last=True):
            metrics = rule.step({"x": inputs(images), "y": pdata.one_hot(labels, classes)})
            iteration += 1
            if not all(math.isfinite(v) for v in metrics.values()):
                diverged = True
            if iteration % p["test_every"] == 0 or diverged or iteration == p["iterations"]:
                curve.append({"iteration": iteration, "test_accuracy": test_accuracy()})
            if diverged or iteration >= p["iterations"]:
                break
        epoch += 1
    seconds = time.perf_counter() - started
    return {"curve": curve, "final_test_accuracy": curve[-1]["test_accuracy"],
            "best_test_accuracy": max(c["test_accuracy"] for c in curve), "iterations_run": iteration,
            "diverged": diverged, "train_seconds": seconds}


def run_trial(p: dict[str, Any]) -> dict[str, Any]:
    """The trial function given to :func:`pclab.sweep.run_trials` (dispatches on ``p["kind"]``)."""
    if p["kind"] == "accuracy":
        return accuracy_trial(p)
    if p["kind"] == "mupc":
        return mupc_trial(p)
    raise ValueError(f"unknown depth-study trial kind {p['kind']!r}; expected 'accuracy' or 'mupc'")


def trials(config: dict[str, Any], out: Path) -> list[dict[str, Any]]:
    """Every trial of a resolved study configuration."""
    base = {"kind": "accuracy", "epochs": config["epochs"], "train_subset": config["train_subset"],
            "test_subset": config["test_subset"], "training": config["training"], "out": str(out.resolve())}
    grid = [(d, "mlp", depth) for d in config["datasets"] for depth in config["depths"]]
    if config.get("vgg_dataset"):
        grid += [(config["vgg_dataset"], "vgg-bn", depth) for depth in config["vgg_depths"]]
    out_trials = []
    for dataset, model, depth in grid:
        # the separate fixes (e.g. spiking without forward update) only where the preset asks for them
        extra = config.get("fix_variants", []) if model == "mlp" and depth == config.get("fix_depth") else []
        variants = [*config["variants"], *[v for v in extra if v not in config["variants"]]]
        if model == "vgg-bn":
            variants = config.get("vgg_variants", config["variants"])
        for seed in config["seeds"]:
            for variant in variants:
                p = {**base, "dataset": dataset, "model": model, "depth": depth, "variant": variant, "seed": seed,
                     "diagnostics": model == "mlp" and depth == config["diagnostic_depth"] and seed == config["seeds"][0]}
                if model == "vgg-bn":
                    p["vgg_width"] = config.get("vgg_width", 16)
                out_trials.append(p)
    m = config["mupc"]
    for parameterisation, rule in m["runs"]:
        for seed in m["seeds"]:
            out_trials.append({"kind": "mupc", "parameterisation": parameterisation, "rule": rule, "seed": seed,
                               **{k: m[k] for k in ("dataset", "width", "depth", "iterations", "batch_size", "latent_lr",
                                                    "param_lr", "test_every", "test_subset", "train_subset")}})
    return out_trials


# ----------------------------------------------------------------------------------------- report
def accuracy_table(frame: pd.DataFrame) -> pd.DataFrame:
    """Best test accuracy (%) per (dataset, model, depth, variant): median, min, max over seeds."""
    g = frame.groupby(["dataset", "model", "depth", "variant"])["best_test_accuracy"]
    table = g.agg(median="median", min="min", max="max", seeds="count").reset_index()
    seconds = frame.groupby(["dataset", "model", "depth", "variant"])["epoch_seconds"].median().reset_index(drop=True)
    table["epoch_seconds"] = seconds.values
    return table


def gap_table(frame: pd.DataFrame) -> pd.DataFrame:
    """Paired gap to backprop (points): per (dataset, model, depth, variant) the median over seeds of
    ``acc(variant, seed) - acc(bp, seed)``."""
    keys = ["dataset", "model", "depth", "seed"]
    bp = frame[frame.variant == "bp"].set_index(keys)["best_test_accuracy"]
    rows = []
    for _, r in frame[frame.variant != "bp"].iterrows():
        k = tuple(r[c] for c in keys)
        if k in bp.index:
            rows.append({**{c: r[c] for c in keys}, "variant": r["variant"], "gap_to_bp": r["best_test_accuracy"] - bp[k]})
    if not rows:
        return pd.DataFrame(columns=["dataset", "model", "depth", "variant", "median_gap", "min_gap", "max_gap"])
    gaps = pd.DataFrame(rows)
    return gaps.groupby(["dataset", "model", "depth", "variant"])["gap_to_bp"].agg(
        median_gap="median", min_gap="min", max_gap="max").reset_index()


_COLOURS = {"pc": rule_colour("pc"), "bp": rule_colour("bp"), **VARIANT_COLOURS}


def _accuracy_figure(table: pd.DataFrame):
    panels = table[["dataset", "model"]].drop_duplicates().values.tolist()
    fig, axes = plt.subplots(1, len(panels), figsize=(min(10.4, 4.6 * len(panels) + 1.0), 3.2), squeeze=False, constrained_layout=True)
    for ax, (dataset, model) in zip(axes[0], panels):
        sub = table[(table.dataset == dataset) & (table.model == model)]
        for variant, rows in sub.groupby("variant"):
            rows = rows.sort_values("depth")
            ax.plot(rows.depth, rows["median"], "o-", color=_COLOURS.get(variant), label=variant)
            ax.fill_between(rows.depth, rows["min"], rows["max"], color=_COLOURS.get(variant), alpha=0.15)
        ax.set_xlabel("depth (weight layers)")
        ax.set_ylabel("best test accuracy (%)")
        ax.set_title(f"{dataset}, {model}", fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, ncols=2)
    return fig


def _heatmaps(diag: dict[str, dict[str, Any]], stage: str, key: str, label: str):
    variants = [v for v in diag if key in diag[v].get(stage, {})]
    cols = min(4, len(variants))
    rows = -(-len(variants) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(2.6 * cols, 2.6 * rows), squeeze=False, constrained_layout=True)
    for ax in axes.flat[len(variants):]:
        ax.set_axis_off()
    for ax, v in zip(axes.flat, variants):
        values = np.asarray(diag[v][stage][key], dtype=float).T  # (nodes, steps)
        image = ax.imshow(np.log10(np.maximum(values, 1e-12)), aspect="auto", origin="lower", cmap="viridis",
                          vmin=-12, vmax=max(1.0, float(np.log10(np.maximum(values.max(), 1e-12)))))
        ax.set_title(v, fontsize=9)
        ax.set_xlabel("inference step t", fontsize=8)
        ax.set_ylabel("layer l (0 = input side)", fontsize=8)
        fig.colorbar(image, ax=ax).set_label(f"log10 {label}", fontsize=7)
    return fig


def _line_per_variant(diag: dict[str, dict[str, Any]], stage: str, key: str, ylabel: str, log: bool):
    fig, ax = plt.subplots(figsize=(6, 4))
    for v, d in diag.items():
        if key in d.get(stage, {}):
            values = d[stage][key]
            ax.plot(range(len(values)), values, "o-", ms=3, color=_COLOURS.get(v), label=v)
    ax.set_xlabel("layer l (0 = input side)")
    ax.set_ylabel(ylabel)
    if log:
        ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return fig


def _mupc_figure(mupc: pd.DataFrame):
    fig, ax = plt.subplots(figsize=(6, 4))
    for (param, rule), rows in mupc.groupby(["parameterisation", "rule"]):
        curves = pd.DataFrame([c for cs in rows.curve for c in cs]).groupby("iteration")["test_accuracy"]
        med = curves.median()
        ax.plot(med.index, med.values, "o-", label=f"{param} parameterisation, {rule}")
        ax.fill_between(med.index, curves.min().values, curves.max().values, alpha=0.15)
    ax.set_xlabel("training iteration (batches)")
    ax.set_ylabel("test accuracy (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return fig


_TARGETS = {"mnist": 1.0, "fashion-mnist": 2.0}  # the study's target: best variant within this many points of bp up to depth 15
_JPC_MUPC = 93.26  # jpc's notebook, muPC, 30 layers, width 128, MNIST, after 900 iterations (REFERENCE 7)


def _target_lines(dataset: str, model: str, sub: pd.DataFrame, gaps: pd.DataFrame) -> list[str]:
    """Target verdict of one (dataset, model): per depth up to 15 the best PC variant's paired gap to bp."""
    target = _TARGETS.get(dataset)
    g = gaps[(gaps.dataset == dataset) & (gaps.model == model) & (gaps.depth <= 15)]
    if not len(g):
        return []
    best = g.loc[g.groupby("depth")["median_gap"].idxmax()].sort_values("depth")
    bp = sub[sub.variant == "bp"].set_index("depth")["median"]
    parts = [f"depth {int(r.depth)}: {r.variant} {r.median_gap:+.2f} (seeds {r.min_gap:+.2f} .. {r.max_gap:+.2f}; "
             f"bp {bp.get(r.depth, float('nan')):.2f} %)" for r in best.itertuples()]
    depths = ", ".join(str(int(d)) for d in best.depth)
    if target is None:
        return [f"{dataset} {model}: best PC variant minus bp, per depth (points, median over seeds): " + "; ".join(parts)
                + f". The study sets no target for {dataset}."]
    missed = [int(r.depth) for r in best.itertuples() if r.median_gap < -target]
    verdict = f"met at depths {depths}" if not missed else f"NOT met at depth {', '.join(map(str, missed))} (run: {depths})"
    # the target compares with a *trained* bp: where bp itself falls far below its best depth,
    # this run does not test it
    weak = [int(d) for d, acc in bp.items() if d <= 15 and acc < bp.max() - 5.0]
    if weak:
        verdict += (f"; NOT TESTED at depth {', '.join(map(str, weak))}: bp itself is more than 5 points below its best "
                    f"({bp.max():.2f} %) there, so it is under-trained in this preset")
    return [f"{dataset} {model}: best PC variant minus bp, per depth up to 15 (points, median over seeds): "
            + "; ".join(parts) + f". Target (within {target:.1f} points of bp): {verdict}."]


def _fix_lines(config: dict[str, Any], dataset: str, model: str, gaps: pd.DataFrame) -> list[str]:
    """At ``fix_depth``, every variant's paired gap to bp, best first: which piece of the toolbox matters."""
    depth = config.get("fix_depth")
    g = gaps[(gaps.dataset == dataset) & (gaps.model == model) & (gaps.depth == depth)].sort_values("median_gap", ascending=False)
    if depth is None or len(g) < 2:
        return []
    parts = [f"{r.variant} {r.median_gap:+.2f}" for r in g.itertuples()]
    return [f"{dataset} {model}, depth {depth}, each variant minus bp (points, median over seeds), best first: "
            + "; ".join(parts) + "."]


QUESTION = ("Can PC learning train deep networks to backprop's accuracy with the deep-PCN toolbox (precision schedules, "
            "forward weight update, muPC), and how does vanilla PC fail as depth grows?")


def _paired_gap(frame: pd.DataFrame, variant: str, other: str) -> Any:
    """Seed-paired ``best_test_accuracy`` of ``variant`` minus ``other`` (rows of one dataset, model and depth)."""
    wide = frame.pivot_table(index="seed", columns="variant", values="best_test_accuracy", aggfunc="first")
    if variant not in wide or other not in wide:
        return None
    both = wide[[variant, other]].dropna()
    return paired_difference(both[variant].to_numpy(), both[other].to_numpy())


def findings(acc: pd.DataFrame, mupc: pd.DataFrame) -> list[str]:
    """Sentences from the runs, each a seed-paired difference (or a level) with its interval: per
    (dataset, model) at the deepest depth, vanilla PC and the best PC variant against backprop, and
    vanilla PC's change from the shallowest to the deepest depth; muPC's final accuracy."""
    lines: list[str] = []
    for (dataset, model), sub in ([] if acc.empty else acc.groupby(["dataset", "model"], sort=False)):
        deep = int(sub["depth"].max())
        at = sub[sub["depth"] == deep]
        where = f"{dataset} {model.upper() if model == 'mlp' else model}, depth {deep}"
        gap = _paired_gap(at, "pc", "bp")
        if gap is not None:
            lines.append(claim(f"{where}: vanilla PC minus backprop, best test accuracy", gap))
        others = [v for v in dict.fromkeys(at["variant"]) if v not in ("pc", "bp")]
        gaps = {v: _paired_gap(at, v, "bp") for v in others}
        gaps = {v: g for v, g in gaps.items() if g is not None and g.n > 0}
        if gaps:
            best = max(gaps, key=lambda v: gaps[v].mean)
            lines.append(claim(f"{where}: best of {len(gaps)} PC variant{'s' if len(gaps) > 1 else ''} ({best}) minus backprop", gaps[best]))
        pc = sub[sub["variant"] == "pc"].pivot_table(index="seed", columns="depth", values="best_test_accuracy", aggfunc="first")
        shallow = int(sub["depth"].min())
        if shallow != deep and shallow in pc and deep in pc:
            both = pc[[shallow, deep]].dropna()
            lines.append(claim(f"{dataset} {model.upper() if model == 'mlp' else model}: vanilla PC at depth {deep} minus at depth "
                               f"{shallow}", paired_difference(both[deep].to_numpy(), both[shallow].to_numpy())))
    for (param, rule), rows in ([] if mupc.empty else mupc.groupby(["parameterisation", "rule"], sort=False)):
        if param == "mupc":
            lines.append(claim(f"Residual MLP, depth {int(rows.depth.iloc[0])}, muPC, {rule}: test accuracy after "
                               f"{int(rows.iterations_run.max())} iterations", mean_interval(rows.final_test_accuracy.to_numpy()),
                               unit="%", within=None, signed=False, null="no detectable accuracy"))
    return lines or ["No trial finished; no finding."]


def _summary(config: dict[str, Any], table: pd.DataFrame, gaps: pd.DataFrame, mupc: pd.DataFrame,
             diag: dict[str, dict[str, Any]], failed: list) -> list[str]:
    lines = []
    for (dataset, model), sub in ([] if table.empty else table.groupby(["dataset", "model"])):
        pc = sub[sub.variant == "pc"].sort_values("depth")
        if len(pc) >= 2:
            a, b = pc.iloc[0], pc.iloc[-1]
            verdict = "loses" if b["median"] < a["median"] - 1.0 else "does not lose more than 1 point of"
            curve = ", ".join(f"{r['median']:.2f} % at depth {int(r['depth'])}" for _, r in pc.iterrows())
            lines.append(f"{dataset} {model}: vanilla PC {verdict} accuracy with depth ({curve}; median over seeds).")
        lines += _target_lines(dataset, model, sub, gaps)
        lines += _fix_lines(config, dataset, model, gaps)
    for v, d in diag.items():
        steps = d.get("init", {}).get("first_error_step")
        if steps:
            never = sum(1 for s in steps if s < 0)
            lines.append(f"Diagnostics at depth {config['diagnostic_depth']}, {v}, at initialisation: the input-side layer's "
                         f"error first becomes non-zero at step {steps[0]} (-1 = never within T); {never} of {len(steps)} "
                         f"layers never see an error.")
        gn = d.get("init", {}).get("grad_norm")
        if gn and gn[-1] > 0:
            lines.append(f"{v}: weight-gradient norm of the first layer / last layer at initialisation = {gn[0] / gn[-1]:.3g}.")
    for (param, rule), rows in mupc.groupby(["parameterisation", "rule"]) if len(mupc) else []:
        acc = rows.final_test_accuracy
        its = int(rows.iterations_run.max())
        line = (f"Residual MLP depth {int(rows.depth.iloc[0])}, width {int(rows.width.iloc[0])}, {param} parameterisation, "
                f"{rule}: {acc.median():.2f} % test accuracy after {its} iterations (min {acc.min():.2f}, max {acc.max():.2f})"
                + ("; diverged" if rows.diverged.any() else ""))
        if param == "mupc" and rule == "pc":
            if its >= 900:
                line += (f"; jpc's notebook: {_JPC_MUPC} % after 900 iterations, so this run is "
                         f"{acc.median() - _JPC_MUPC:+.2f} points from it")
            else:
                line += f"; jpc's {_JPC_MUPC} % is after 900 iterations, so this shorter run does not test it"
        lines.append(line + ".")
    if failed:
        lines.append(f"{len(failed)} trials failed (listed below).")
    return lines


def _resolve(preset: str, overrides: dict | None) -> dict[str, Any]:
    if preset not in PRESETS:
        raise ValueError(f"unknown depth preset {preset!r}; expected one of {sorted(PRESETS)}")
    config = copy.deepcopy(PRESETS[preset])
    known = set().union(*PRESETS.values()) | _OPTIONAL_KEYS
    for key, value in (overrides or {}).items():
        if key not in known:  # a typo would otherwise be ignored silently
            raise ConfigError(f"depth study setting {short(key)}: unknown; expected one of {sorted(known)}")
        if isinstance(value, dict) and isinstance(config.get(key), dict):
            unknown = sorted(set(value) - set(config[key]))
            if unknown:
                raise ConfigError(f"depth study setting {key}.{cut(str(unknown[0]))}: unknown; expected one of {sorted(config[key])}")
            config[key] = {**config[key], **value}
        else:
            config[key] = value
    check_settings("depth", config, {**PRESETS, "optional": {"vgg_variants": [], "vgg_width": 16, "fix_depth": 15, "fix_variants": []}},
                   positive=_POSITIVE, limits=_LIMITS)
    return config


_POSITIVE = ("depths[]", "epochs", "train_subset", "test_subset", "diagnostic_depth", "vgg_depths[]", "vgg_width", "fix_depth",
             "training.width", "training.batch_size", "training.latent_lr", "training.lr_pc", "training.lr_bp", "mupc.width",
             "mupc.depth", "mupc.iterations", "mupc.batch_size", "mupc.latent_lr", "mupc.param_lr", "mupc.test_every",
             "mupc.test_subset", "mupc.train_subset")
_LIMITS = {"depths[]": (2, 1000), "vgg_depths[]": (2, 1000), "epochs": (1, MAX_EPOCHS), "mupc.depth": (2, 1000),
           "mupc.iterations": (1, 10**6), "training.width": (1, 100_000), "mupc.width": (1, 100_000), "vgg_width": (1, 4096)}


def check_trials(config: dict[str, Any], out: Path) -> int:
    """Validate the run configuration of every accuracy trial before any trial starts; returns how many."""
    items = []
    for p in trials(config, out):
        if p["kind"] == "accuracy":
            (c, h, w), classes = DATA_SHAPES.get(p["dataset"], ((1, 1, 1), 10))
            label = f"{p['dataset']} {p['model']} depth {p['depth']} {p['variant']} seed {p['seed']}"
            items.append((label, functools.partial(_config, p, c * h * w, classes)))
    return preflight("depth", items)


_OPTIONAL_KEYS = {"vgg_variants", "vgg_width", "fix_depth", "fix_variants"}
"""Settings a preset may leave out (their defaults live in :func:`trials`)."""


def run(preset: str, out: Path, address: str | None = None, executor: str = "ray", overrides: dict | None = None) -> Path:
    """Run the depth study (skipping finished trials) and write ``out/report.html``."""
    started = time.time()
    out = Path(out)
    config = _resolve(preset, overrides)
    check_trials(config, out)
    records = run_trials(run_trial, trials(config, out), out, address=address, executor=executor)
    report = Report("Deep PCNs, from failure to backprop accuracy", out, {"preset": preset, **config}, question=QUESTION,
                    study="depth", preset=preset, started=started)
    frame = records_frame(records)
    acc = frame[frame.kind == "accuracy"] if len(frame) else frame
    mupc = frame[frame.kind == "mupc"] if len(frame) else frame
    table = accuracy_table(acc) if len(acc) else pd.DataFrame()
    gaps = gap_table(acc) if len(acc) else pd.DataFrame()
    diag = {}
    if len(acc):
        for r in acc[acc.diagnostics.map(bool)].itertuples():
            diag.setdefault(r.dataset, {})[r.variant] = r.diagnostics
    main_diag = diag.get(config["datasets"][0], {}) if config["datasets"] else {}  # a VGG-only run has no MLP diagnostics
    failed = failures(records)
    report.findings(findings(acc, mupc))
    report.statements(_summary(config, table, gaps, mupc, main_diag, failed))
    t = config["training"]
    report.methods("Accuracy vs depth", (
        f"MLPs of width {t['width']} ({t['activation']}, {t['output']} output), trained for {config['epochs']} epochs on "
        f"{config['train_subset'] or 'all'} training images in batches of {t['batch_size']}, tested on "
        f"{config['test_subset'] or 'all'} test images; best epoch, feed-forward read-out. Weight init "
        f"{t.get('init', 'default')}. PC variants relax T = depth steps (latent {t['latent_optimizer']} lr "
        f"{t['latent_lr']}); weights {t['weight_optimizer']} lr {t['lr_pc']} (PC) / {t['lr_bp']} (bp), schedule "
        f"{t.get('schedule', 'constant')} (warm-up {t.get('warmup_epochs', 0.0)} epochs). "
        + (f"Separate fixes {config['fix_variants']} only at depth {config['fix_depth']}. " if config.get("fix_depth") else "")
        + (f"VGG-BN ({config['vgg_dataset']}, width {config.get('vgg_width', 16)}, GELU): BatchNorm running statistics "
           "updated only in the weight phase (PC) / the training forward pass (bp). " if config.get("vgg_dataset") else "")
        + f"Spiking alpha "
        f"{t['alpha']}, decaying k {t['decay']}. Lines: median over seeds {config['seeds']}; bands: min-max. Fashion-MNIST "
        "split: pclab.data's fixed split (see pclab.data.sources)."))
    if len(table):
        report.figure(_accuracy_figure(table), "accuracy_vs_depth", "Best test accuracy vs depth per variant (median, min-max band over "
                      "seeds); blue = PC learning, green = backprop, other colours = PC with the toolbox's fixes.", key=True)
        report.table(table, "accuracy", "Best test accuracy (%) per dataset, model, depth and variant; median epoch time (s)")
        report.table(gaps, "gap_to_bp", "Paired gap to backprop (points; negative = below bp)")
    for dataset, d in diag.items():
        report.section(f"Diagnostics ({dataset}, depth {config['diagnostic_depth']})")
        report.methods(f"Diagnostics ({dataset}, depth {config['diagnostic_depth']})", (
            "On the first training batch (image and label clamped), at initialisation and after training. Error norm: "
            "batch-mean L2 norm of each layer's prediction error at each relaxation step; energy: the precision-weighted "
            "energy relaxation descends. First-error step: the first step at which a layer's error norm exceeds 1e-10 "
            "(-1: never within T). Weight-gradient norm: L2 norm of dE/dtheta (PC) or dLoss/dtheta (bp) per layer, "
            "before the optimiser."))
        for stage in ("init", "trained"):
            if any(stage in v for v in d.values()):
                report.figure(_heatmaps(d, stage, "error_norm", "error norm"), f"error_heatmap_{dataset}_{stage}",
                              f"{dataset}, {stage}: log10 error norm per layer (rows) and inference step (columns).")
                report.figure(_heatmaps(d, stage, "energy", "energy"), f"energy_heatmap_{dataset}_{stage}",
                              f"{dataset}, {stage}: log10 precision-weighted energy per layer and step.")
                report.figure(_line_per_variant(d, stage, "first_error_step", "first step with non-zero error", False),
                              f"first_error_{dataset}_{stage}", f"{dataset}, {stage}: step at which each layer's error first becomes non-zero.")
                report.figure(_line_per_variant(d, stage, "grad_norm", "weight-gradient norm", True),
                              f"grad_norm_{dataset}_{stage}", f"{dataset}, {stage}: weight-gradient norm per layer (log scale).")
        rows = [{"variant": v, "stage": s, "layer": i, "first_error_step": (x.get("first_error_step") or [None] * len(x["grad_norm"]))[i],
                 "grad_norm": x["grad_norm"][i]} for v, st in d.items() for s, x in st.items() for i in range(len(x["grad_norm"]))]
        report.table(pd.DataFrame(rows), f"diagnostics_{dataset}", "Per-layer diagnostics", max_rows=40)
    if len(mupc):
        m = config["mupc"]
        report.section("muPC: a deep residual MLP")
        report.methods("muPC", (
            f"Residual ReLU MLP, depth {m['depth']}, width {m['width']}, no biases, on {m['dataset']}; PC with T = depth "
            f"latent SGD steps (jpc lr {m['latent_lr']} on the batch-mean energy = {m['latent_lr'] / m['batch_size']:.4g} "
            f"per sample), Adam lr {m['param_lr']}, batch {m['batch_size']}, {m['iterations']} iterations; test accuracy of "
            f"the feed-forward read-out on {m['test_subset'] or 'all'} test images. 'standard' = the same network with unit "
            "multipliers and PyTorch's default init, trained the same way."))
        report.figure(_mupc_figure(mupc), "mupc", "Test accuracy vs training iteration (median, min-max band over seeds).")
        report.table(mupc[["parameterisation", "rule", "seed", "final_test_accuracy", "best_test_accuracy", "iterations_run",
                           "diverged", "train_seconds"]], "mupc", "muPC vs standard parameterisation")
    timing = frame[["kind", "seconds"]].groupby("kind")["seconds"].agg(["count", "median", "sum"]).reset_index() if len(frame) else pd.DataFrame()
    if len(timing):
        report.table(timing, "timing", "Trial wall time by kind (s), including data loading and diagnostics")
    if failed:
        report.table(pd.DataFrame(failed), "failures", "Failed trials")
    return report.write()
