"""Study "depth": deep PCNs, from failure to backprop accuracy (Qi, Forasassi, Lukasiewicz &
Salvatori 2025; REFERENCE sections 5, 5b and 7).

Trials run by :func:`pclab.sweep.run_trials`, in three stages:

* **tuning** (:func:`tune`) -- on a validation split carved from the training set
  (:func:`validation_split`), at the deepest depth only: per method the latent optimiser (SGD or
  Nesterov momentum), its step size and, where T matters (:data:`STEPS_TUNED`), T in {1, 2, 4} x
  depth, under AdamW; then the learning rate of SGD with momentum per method. The choices are reused
  at every depth. The test set is never loaded here.
* **accuracy vs depth** -- width-``W`` MLPs (and a VGG-style conv net with BatchNorm whose running
  statistics move only in the weight phase, ``vgg_bn``) of several depths, trained by each method of
  :data:`VARIANTS` (PC, the precision schedules, the forward update, ePC, backprop through inference,
  backprop and the frozen-bottom control) under AdamW and SGD with momentum. Every method of one
  (dataset, depth, seed) starts from the same initial weights and sees the same batches (paired
  seeds). Accuracy is the feed-forward read-out on the test set after the last epoch (touched once).
  Each first-seed AdamW trial also records, per layer, the cosine and norm ratio of its weight gradient
  to backprop's (:func:`alignment`) at initialisation and after training; at one depth, the
  relaxation's energy and error per layer and step (:func:`diagnose`).
* **muPC** -- jpc's width-128 ReLU residual MLP (Innocenti et al. 2025) trained by PC, by ePC, by PC
  with auxiliary nodes on the skip paths and by backprop on the same network; and optionally the
  standard parameterisation for contrast.
"""

from __future__ import annotations

import copy
import dataclasses
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
from ..data.dataset import Dataset, stratified_indices
from ..io import load_torch
from ..models.deep import residual_mlp
from ..sweep import failures, records_frame, run_trials, trial_id
from ..train import ConfigError, RunConfig, load_data, make_batch, prepare, task_loss, train, validate
from ..train.build import inputs
from ..train.config import DATA_SHAPES, MAX_EPOCHS, cut, short
from ..train.loop import DivergenceError
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
    "epc": {"rule": "pc", "precision": "constant", "forward_update": False, "parametrisation": "error"},
    "epc+fu": {"rule": "pc", "precision": "constant", "forward_update": True, "parametrisation": "error"},
    "bpti": {"rule": "bp-through-inference", "precision": "constant", "forward_update": False, "init": "zeros"},
    "bp": {"rule": "bp", "precision": "constant", "forward_update": False},
    "bp-frozen": {"rule": "bp", "precision": "constant", "forward_update": False, "frozen": True},
}
"""Name -> learning rule, precision schedule in relaxation, forward-update weight rule, and (optional)
the relaxation's variables (``parametrisation``: ``"error"`` is ePC) and start (``init``: backprop
through inference, ``bpti``, relaxes from zero states with only the image clamped; from the
feed-forward start such a chain is already at equilibrium and the method would be plain backprop)."""

STEPS_TUNED = ("pc", "pc+fu", "epc", "epc+fu", "bpti")
"""Variants whose relaxation length T is tuned (T in ``tuning.steps`` x depth); the precision
schedules define their own T = depth (the least that lets the spiking schedule's unit spike visit
every layer)."""

_TRAINING = {  # init "lecun": with PyTorch's default init a depth-15 tanh chain barely trains even by backprop
    "width": 128, "activation": "tanh", "output": "ce", "batch_size": 32, "init": "lecun",
    "latent_optimizer": "sgd", "latent_lr": 0.5, "latent_momentum": 0.0, "alpha": 1e-3, "decay": 1.0,
    "weight_optimizer": "adamw", "lr_pc": 1e-3, "lr_bp": 1e-3, "weight_decay": 1e-4, "sgd_momentum": 0.9,
}

_TUNING = {  # the stated grid (REFERENCE 5: Qi et al. tune the latent step with SGD and Nesterov momentum)
    "validation": 10_000, "epochs": 1, "train_subset": None, "seed": 0,
    "latent_optimizers": ["sgd", "nesterov"], "latent_lr": [0.03, 0.1, 0.3], "latent_momentum": 0.9,
    "steps": [1, 2, 4], "sgd_lr": [0.01, 0.03, 0.1],
}
"""Tuning, on a validation split carved from the training set (``validation`` images, stratified,
seed 0; the rest train), at the preset's deepest depth, for ``epochs`` epochs, seed ``seed``: per PC
variant the latent optimiser (``sgd`` or ``nesterov`` with ``latent_momentum``) x step size x (for
:data:`STEPS_TUNED`) T in ``steps`` x depth, under AdamW; then per variant (backprop included) the
learning rate of SGD with momentum ``training.sgd_momentum`` from ``sgd_lr``, with the chosen latent
settings. The choices are reused at every depth."""

_MUPC = {  # jpc examples/mupc.ipynb (REFERENCE 7); latent_lr in jpc's units (gradient of the batch-mean energy)
    "dataset": "mnist", "width": 128, "depth": 30, "iterations": 900, "batch_size": 64, "latent_lr": 0.5,
    "param_lr": 0.1, "test_every": 100, "test_subset": None, "train_subset": None,
    "runs": [["mupc", "pc"], ["standard", "pc"]], "seeds": [0],
}

_QUICK_TRAINING = {**_TRAINING, "batch_size": 128}
# the paper's recipe (REFERENCE 5): AdamW with warm-up and cosine decay, batch 128
_STANDARD_TRAINING = {**_TRAINING, "batch_size": 128, "schedule": "cosine", "warmup_epochs": 1.0}

PRESETS: dict[str, dict[str, Any]] = {
    "tiny": {
        "datasets": ["digits"], "depths": [3, 5], "variants": list(VARIANTS), "optimizers": ["adamw", "sgd"], "seeds": [0],
        "epochs": 1, "train_subset": 256, "test_subset": 128, "diagnostic_depth": 5,
        "vgg_dataset": "digits", "vgg_depths": [3], "vgg_width": 4, "vgg_variants": ["pc", "spiking+fu", "bp"],
        "training": {**_TRAINING, "width": 16, "batch_size": 32},
        "tuning": {**_TUNING, "validation": 64, "train_subset": 256, "latent_optimizers": ["sgd", "nesterov"], "latent_lr": [0.1], "steps": [1, 2],
                   "sgd_lr": [0.03]},
        "mupc": {**_MUPC, "dataset": "digits", "width": 16, "depth": 6, "iterations": 12, "batch_size": 32,
                 "runs": [["mupc", "pc"], ["standard", "pc"], ["mupc", "bp"], ["mupc", "epc"], ["mupc", "pc", 1]],
                 "test_every": 6, "test_subset": 128, "train_subset": 512},
    },
    "quick": {
        "datasets": ["mnist"], "depths": [5, 10], "variants": ["pc", "spiking+fu", "epc", "bp"], "optimizers": ["adamw"],
        "seeds": [0], "epochs": 1, "train_subset": 10_000, "test_subset": None, "diagnostic_depth": 10,
        "vgg_dataset": None, "vgg_depths": [], "training": _QUICK_TRAINING,
        "tuning": {**_TUNING, "validation": 2_000, "train_subset": 6_000, "latent_optimizers": ["sgd"], "latent_lr": [0.1, 0.3],
                   "steps": [1, 2], "sgd_lr": [0.03]},
        "mupc": {**_MUPC, "iterations": 100, "test_every": 50, "test_subset": 1000, "train_subset": 10_000, "runs": [["mupc", "pc"], ["mupc", "bp"]]},
    },
    "standard": {
        "datasets": ["mnist"], "depths": [5, 10, 15, 20],
        "variants": ["pc", "spiking+fu", "epc", "epc+fu", "bpti", "bp", "bp-frozen"], "optimizers": ["adamw", "sgd"],
        "fix_depth": 20, "fix_variants": ["spiking", "decaying+fu"], "seeds": [0, 1, 2], "epochs": 2, "train_subset": 30_000,
        "test_subset": None, "diagnostic_depth": 20, "vgg_dataset": None, "vgg_depths": [],
        "training": _STANDARD_TRAINING,
        "tuning": {**_TUNING, "validation": 5_000, "train_subset": 10_000, "latent_lr": [0.03, 0.1, 0.3], "steps": [1, 2, 4],
                   "sgd_lr": [0.01, 0.03, 0.1]},
        "mupc": {**_MUPC, "depth": 20, "iterations": 600, "runs": [["mupc", "pc"], ["mupc", "bp"], ["mupc", "epc"], ["mupc", "pc", 1]],
                 "seeds": [0, 1, 2],
                 "test_subset": 2_000},
    },
    "full": {
        "datasets": ["mnist", "fashion-mnist"], "depths": [3, 5, 7, 10, 15, 20, 30], "variants": list(VARIANTS),
        "optimizers": ["adamw", "sgd"], "seeds": [0, 1, 2, 3, 4], "epochs": 10, "train_subset": None, "test_subset": None,
        "diagnostic_depth": 30, "vgg_dataset": "cifar10", "vgg_depths": [5, 7], "vgg_width": 128, "vgg_variants": ["pc", "spiking+fu", "bp"], "training": dict(_STANDARD_TRAINING),
        "tuning": {**_TUNING, "epochs": 3, "latent_lr": [0.01, 0.03, 0.1, 0.3, 0.5], "steps": [1, 2, 4], "sgd_lr": [0.003, 0.01, 0.03, 0.1]},
        "mupc": {**_MUPC, "runs": [["mupc", "pc"], ["standard", "pc"], ["mupc", "bp"], ["mupc", "epc"], ["mupc", "pc", 1]],
                 "seeds": [0, 1, 2, 3, 4]},
    },
}
"""Study presets; budgets on 2 CPU cores (2 trials at a time) are estimated from measured per-trial
CPU seconds (see the depth study's page).

``tiny``: digits, for tests (seconds); every variant, both weight optimisers, one VGG-BN depth.
``quick``: MNIST, 10k training images, 1 epoch at batch 128, depths 5 and 10, pc / spiking+fu / ePC / bp
under AdamW, one seed; a small tuning grid; muPC 100 iterations. Under 10 minutes.
``standard``: the answering preset: MNIST, 30k training images, 2 epochs at batch 128 (warm-up + cosine),
depths 5 / 10 / 15 / 20, pc, spiking+fu, ePC with and without the forward update, backprop through
inference and backprop, under AdamW and SGD with momentum, seeds 0-2 (paired); the separate fixes
spiking and decaying+fu at depth 20; tuning at depth 20 on a 5k validation split; muPC at depth 20
with PC and with backprop on the same residual network. About 2 hours.
``full``: MNIST and Fashion-MNIST on all images, 10 epochs, depths to 30, every variant, 5 seeds and
the phase-BN VGG on CIFAR-10 (VGG5 / VGG7 at width 128); for a Ray cluster or a GPU."""


# ----------------------------------------------------------------------------------------- trials
def _config(p: dict[str, Any], input_dim: int = 1, classes: int = 10) -> RunConfig:
    """The :class:`RunConfig` of an accuracy or tuning trial (``input_dim``/``classes`` fill the MLP widths).

    ``p`` may carry the tuned settings: ``latent_optimizer``, ``latent_lr``, ``steps_factor`` (T =
    factor x depth), ``optimizer`` (weight optimiser, ``"adamw"`` or ``"sgd"``) and ``weight_lr``;
    absent ones come from ``p["training"]``.
    """
    t, v = p["training"], VARIANTS[p["variant"]]
    if p["model"] == "mlp":
        model = {"kind": "mlp", "widths": [input_dim, *[t["width"]] * (p["depth"] - 1), classes],
                 "activation": t["activation"], "output": t["output"], "init": t.get("init", "default")}
    elif p["model"] == "vgg-bn":  # the paper's VGG: BatchNorm statistics updated in the weight phase only
        model = {"kind": "vgg_bn", "depth": p["depth"], "width": p["vgg_width"], "activation": "gelu", "output": t["output"]}
    else:
        raise ValueError(f"unknown depth-study model {p['model']!r}; expected 'mlp' or 'vgg-bn'")
    latent = p.get("latent_optimizer", t["latent_optimizer"])
    momentum = 0.0 if latent == "sgd" else p.get("latent_momentum", t["latent_momentum"])
    optimizer = p.get("optimizer", t["weight_optimizer"])
    lr = p.get("weight_lr", t["lr_bp"] if v["rule"] == "bp" else t["lr_pc"])
    return validate({
        "model": model,
        "inference": {"steps": p["depth"] * p.get("steps_factor", 1), "optimizer": latent, "lr": p.get("latent_lr", t["latent_lr"]),
                      "momentum": momentum, "precision": v["precision"], "alpha": t["alpha"], "decay": t["decay"],
                      "parametrisation": v.get("parametrisation", "state"), "init": v.get("init", "forward")},
        "learning": {"rule": v["rule"], "forward_update": v["forward_update"], "optimizer": optimizer, "lr": lr,
                     "frozen_layers": p.get("frozen_layers", 0),
                     "momentum": t["sgd_momentum"] if optimizer == "sgd" else 0.0, "weight_decay": t["weight_decay"],
                     "schedule": t.get("schedule", "constant"), "warmup_epochs": min(t.get("warmup_epochs", 0.0), p["epochs"])},
        "data": {"dataset": p["dataset"], "batch_size": t["batch_size"], "train_subset": p["train_subset"],
                 "test_subset": p["test_subset"]},
        "epochs": p["epochs"], "seed": p["seed"],
    }, f"depth trial {p['variant']} depth {p['depth']}")


def validation_split(train_set: Dataset, n: int, seed: int = 0) -> tuple[Dataset, Dataset]:
    """(training part, validation part) of a training set: ``n`` images drawn stratified by class with
    ``seed`` (:meth:`pclab.data.Dataset.subset`'s draw) are held out; the rest, in their order, train."""
    if not 0 < n < len(train_set):
        raise ValueError(f"validation split: expected 0 < validation images < {len(train_set)} training images, got {n}")
    held = np.zeros(len(train_set), dtype=bool)
    held[stratified_indices(train_set.labels.cpu().numpy(), n, seed)] = True

    def part(mask: np.ndarray, split: str) -> Dataset:
        index = torch.from_numpy(np.flatnonzero(mask))
        return dataclasses.replace(train_set, images=train_set.images.index_select(0, index), labels=train_set.labels.index_select(0, index),
                                   split=split, description=f"{train_set.description}; {split} part of a {n}-image validation split (seed {seed})")

    return part(~held, "train"), part(held, "validation")


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


def _edge_grads(model, loss: torch.Tensor) -> list[torch.Tensor]:
    """``d loss / d theta`` per edge (input side first), flattened over the edge's parameters (float64)."""
    params = [list(model.edge_modules[e.key].parameters()) for e in model.edges]
    flat = [q for group in params for q in group]
    grads = torch.autograd.grad(loss, flat, allow_unused=True)
    out, i = [], 0
    for group in params:
        g = [(x if x is not None else torch.zeros_like(q)).double().reshape(-1) for x, q in zip(grads[i:i + len(group)], group)]
        i += len(group)
        out.append(torch.cat(g) if g else torch.zeros(0, dtype=torch.float64))
    return out


ADAM_EPS = 1e-8
"""AdamW's eps (PyTorch's default, the study's): a gradient element of this size gets about half a scale-free step."""


def alignment(run, batch: dict[str, torch.Tensor]) -> dict[str, list[float]]:
    """Per edge (input side first), the weight gradient ``g`` the method hands its optimiser against
    backprop's gradient ``b`` of the task loss on the same batch and weights: ``cosine`` (g . b /
    |g||b|), ``norm_ratio`` (|g| / |b|), and the median absolute element of each (``median_abs``,
    ``bp_median_abs``), to set against AdamW's eps (:data:`ADAM_EPS`)."""
    model, rule = run.model, run.rule
    bp = Backprop(model, torch.optim.SGD(model.parameters(), 0.0), task_loss(run.config), inputs(run.config))
    if isinstance(rule, PCLearning):
        loss = rule.weight_energy(relax(model, batch, rule.inference))
    else:
        loss, _ = rule.objective(batch)
    g, b = _edge_grads(model, loss), _edge_grads(model, bp.objective(batch)[0])
    out: dict[str, list[float]] = {"cosine": [], "norm_ratio": [], "median_abs": [], "bp_median_abs": []}
    for gi, bi in zip(g, b):
        gn, bn = float(gi.norm()), float(bi.norm())
        out["cosine"].append(float(gi @ bi) / (gn * bn) if gn > 0 and bn > 0 else math.nan)
        out["norm_ratio"].append(gn / bn if bn > 0 else math.nan)
        out["median_abs"].append(float(gi.abs().median()) if gi.numel() else math.nan)
        out["bp_median_abs"].append(float(bi.abs().median()) if bi.numel() else math.nan)
    return out


def frozen_layers(median_abs: list[float], eps: float = ADAM_EPS) -> int:
    """How many layers from the input side in a row have a median gradient element at or below ``eps``."""
    return next((i for i, m in enumerate(median_abs) if not m <= eps), len(median_abs))


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
    """Train one (dataset, model, depth, variant, optimiser, seed) and return accuracies, timing and diagnostics.

    ``p["kind"] == "tune"``: train on the training set minus a validation split of
    ``p["validation"]`` images and return the validation accuracy after each epoch (a diverging
    run is a result: ``diverged`` true, accuracy NaN); the test set is not loaded. Otherwise
    (``"accuracy"``) train on the training set and return the test accuracy of the last epoch, the
    number reported (no choice is made on the test set). ``cpu_seconds``: the trial's process CPU time.
    """
    torch.set_num_threads(p.get("threads", 1))
    cpu = time.process_time()
    tuning = p["kind"] == "tune"
    full = pdata.load(p["dataset"], "train")
    config = _config(p, int(np.prod(full.images.shape[1:])), full.classes)
    if tuning:
        data = validation_split(full, p["validation"])
        if p["train_subset"] and p["train_subset"] < len(data[0]):
            data = (data[0].subset(p["train_subset"], seed=p["seed"]), data[1])
    else:
        data = load_data(config)
    folder = Path(p["out"]) / "artifacts" / trial_id({k: v for k, v in p.items() if k != "out"}) if p.get("out") else None
    diagnostics, aligned = {}, {}
    images, labels = data[0].images[: config.data.batch_size], data[0].labels[: config.data.batch_size]
    diag_batch = make_batch(config, images, labels, data[0].classes)
    if p.get("diagnostics"):
        diagnostics["init"] = diagnose(prepare(config, data), diag_batch)
    if p.get("alignment"):
        aligned["init"] = alignment(prepare(config, data), diag_batch)
    started = time.perf_counter()
    try:
        results = train(config, out=folder, progress=False, data=data)
    except DivergenceError as err:
        if not tuning:
            raise
        return {"validation_accuracy": float("nan"), "validation_per_epoch": [], "diverged": True, "error": str(err).splitlines()[0],
                "train_seconds": time.perf_counter() - started, "cpu_seconds": time.process_time() - cpu}
    seconds = time.perf_counter() - started
    per_epoch = [100 * h["test_accuracy"] for h in results["history"]]
    if tuning:
        return {"validation_accuracy": 100 * results["test_accuracy"], "validation_per_epoch": per_epoch, "diverged": False,
                "train_seconds": seconds, "cpu_seconds": time.process_time() - cpu}
    if (p.get("diagnostics") or p.get("alignment")) and folder is not None:
        run = prepare(config, data)
        run.model.load_state_dict(load_torch(folder / "checkpoint.pt")["model"])
        if p.get("diagnostics"):
            diagnostics["trained"] = diagnose(run, diag_batch)
        if p.get("alignment"):
            aligned["trained"] = alignment(run, diag_batch)
    return {
        "test_accuracy": 100 * results["test_accuracy"],
        "accuracy_per_epoch": per_epoch,
        "steps": config.inference.steps,
        "epoch_seconds": results["epoch_seconds"],
        "train_seconds": seconds,
        "cpu_seconds": time.process_time() - cpu,
        "diagnostics": diagnostics,
        "alignment": aligned,
    }


def mupc_trial(p: dict[str, Any]) -> dict[str, Any]:
    """jpc's muPC experiment: a residual MLP trained by PC, ePC (``rule`` ``"epc"``) or backprop for a number of
    iterations; ``skip_delay`` (optional): auxiliary identity nodes on each skip path (:func:`~pclab.models.residual_mlp`).

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
    model = residual_mlp(dim, p["width"], p["depth"], classes, "relu", p["parameterisation"], p.get("skip_delay", 0), output="gaussian")
    optimizer = torch.optim.Adam(model.parameters(), p["param_lr"])
    if p["rule"] in ("pc", "epc"):  # epc: the same relaxation over the prediction errors (ePC)
        inference = Inference(steps=p["depth"], optimizer=SGD(lr=p["latent_lr"] / p["batch_size"]), init="forward",
                              check_finite=False, parametrisation="error" if p["rule"] == "epc" else "state")  # a divergence is a result
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
    if p["kind"] in ("accuracy", "tune"):
        return accuracy_trial(p)
    if p["kind"] == "mupc":
        return mupc_trial(p)
    raise ValueError(f"unknown depth-study trial kind {p['kind']!r}; expected 'accuracy', 'tune' or 'mupc'")


def _variants(config: dict[str, Any]) -> list[str]:
    """Every MLP variant of a configuration (the separate fixes included)."""
    return list(dict.fromkeys([*config["variants"], *config.get("fix_variants", [])]))


def _tune_base(config: dict[str, Any], out: Path) -> dict[str, Any]:
    u = config["tuning"]
    return {"kind": "tune", "epochs": u["epochs"], "train_subset": u["train_subset"], "test_subset": None, "validation": u["validation"],
            "training": config["training"], "dataset": config["datasets"][0] if config["datasets"] else None, "model": "mlp",
            "depth": max(config["depths"]), "seed": u["seed"], "out": str(out.resolve())}


def latent_trials(config: dict[str, Any], out: Path) -> list[dict[str, Any]]:
    """Tuning trials of the latent optimiser, step size and (for :data:`STEPS_TUNED`) T, under AdamW, at the deepest depth."""
    if not config["datasets"] or not config["depths"]:
        return []
    u, base = config["tuning"], _tune_base(config, out)
    grid = []
    for variant in _variants(config):
        if VARIANTS[variant]["rule"] == "bp":
            continue
        for latent in u["latent_optimizers"]:
            for lr in u["latent_lr"]:
                for factor in (u["steps"] if variant in STEPS_TUNED else [1]):
                    grid.append({**base, "stage": "latent", "variant": variant, "optimizer": "adamw", "latent_optimizer": latent,
                                 "latent_momentum": 0.0 if latent == "sgd" else u["latent_momentum"], "latent_lr": lr, "steps_factor": factor})
    return grid


def sgd_trials(config: dict[str, Any], out: Path, choices: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Tuning trials of SGD-with-momentum's learning rate per variant, with the chosen latent settings."""
    if "sgd" not in config["optimizers"] or not config["datasets"] or not config["depths"]:
        return []
    base = _tune_base(config, out)
    return [{**base, "stage": "sgd", "variant": v, **_latent(choices, v, config), "optimizer": "sgd", "weight_lr": lr}
            for v in _variants(config) if not VARIANTS[v].get("frozen") for lr in config["tuning"]["sgd_lr"]]


_LATENT_KEYS = ("latent_optimizer", "latent_momentum", "latent_lr", "steps_factor")


def _latent(choices: dict[str, dict[str, Any]] | None, variant: str, config: dict[str, Any]) -> dict[str, Any]:
    """The chosen latent settings of a variant (none for backprop); without choices, the grid's first point."""
    if VARIANTS[variant]["rule"] == "bp":
        return {}
    if choices and variant in choices:
        return {k: choices[variant][k] for k in _LATENT_KEYS}
    u = config["tuning"]
    first = u["latent_optimizers"][0]
    return {"latent_optimizer": first, "latent_momentum": 0.0 if first == "sgd" else u["latent_momentum"], "latent_lr": u["latent_lr"][0],
            "steps_factor": u["steps"][0] if variant in STEPS_TUNED else 1}


def choose(records: list[dict[str, Any]], keys: tuple[str, ...]) -> dict[str, dict[str, Any]]:
    """Per variant, the tuning trial with the highest final validation accuracy (ties: the first in
    grid order; diverged or failed trials never win unless every trial of the variant did): its
    ``keys`` and ``validation_accuracy``."""
    best: dict[str, tuple[float, dict[str, Any]]] = {}
    for r in records:
        p = r["params"]
        acc = r["result"].get("validation_accuracy", math.nan) if r["status"] == "ok" else math.nan
        score = -math.inf if math.isnan(acc) else acc
        if p["variant"] not in best or score > best[p["variant"]][0]:
            best[p["variant"]] = (score, {**{k: p[k] for k in keys}, "validation_accuracy": acc})
    return {v: chosen for v, (_, chosen) in best.items()}


def trials(config: dict[str, Any], out: Path, choices: dict[str, dict[str, Any]] | None = None,
           frozen: dict[int, int] | None = None) -> list[dict[str, Any]]:
    """Every final (test-set) trial of a resolved study configuration, with the tuned settings of
    ``choices`` (``None``: each grid's first point, for validating configs before tuning) and, for
    ``bp-frozen``, ``frozen[depth]`` bottom layers frozen (``None``: one; a depth with none has no
    ``bp-frozen`` trial, it would be backprop)."""
    base = {"kind": "accuracy", "epochs": config["epochs"], "train_subset": config["train_subset"],
            "test_subset": config["test_subset"], "training": config["training"], "out": str(out.resolve())}
    grid = [(d, "mlp", depth) for d in config["datasets"] for depth in config["depths"]]
    if config.get("vgg_dataset"):
        grid += [(config["vgg_dataset"], "vgg-bn", depth) for depth in config["vgg_depths"]]
    lrs = {"adamw": {}, "sgd": {v: (choices or {}).get(f"sgd:{v}" if v != "bp-frozen" else "sgd:bp", {}).get(
        "weight_lr", config["tuning"]["sgd_lr"][0]) for v in VARIANTS}}
    out_trials = []
    for dataset, model, depth in grid:
        # the separate fixes (e.g. spiking without forward update) only where the preset asks for them
        extra = config.get("fix_variants", []) if model == "mlp" and depth == config.get("fix_depth") else []
        variants = [*config["variants"], *[v for v in extra if v not in config["variants"]]]
        if model == "vgg-bn":
            variants = config.get("vgg_variants", config["variants"])
        k = 1 if frozen is None else frozen.get(depth, 0)
        variants = [v for v in variants if not (VARIANTS[v].get("frozen") and (model != "mlp" or k == 0))]
        for optimizer in config["optimizers"]:
            for seed in config["seeds"]:
                for variant in variants:
                    p = {**base, "dataset": dataset, "model": model, "depth": depth, "variant": variant, "seed": seed,
                         "optimizer": optimizer, **_latent(choices, variant, config),
                         "diagnostics": (model == "mlp" and depth == config["diagnostic_depth"] and seed == config["seeds"][0]
                                         and optimizer == config["optimizers"][0])}
                    if variant in lrs[optimizer]:
                        p["weight_lr"] = lrs[optimizer][variant]
                    if VARIANTS[variant].get("frozen"):
                        p["frozen_layers"] = k
                    if model == "mlp" and seed == config["seeds"][0] and optimizer == config["optimizers"][0]:
                        p["alignment"] = True
                    if model == "vgg-bn":
                        p["vgg_width"] = config.get("vgg_width", 16)
                    out_trials.append(p)
    m = config["mupc"]
    for parameterisation, rule, *delay in m["runs"]:
        for seed in m["seeds"]:
            out_trials.append({"kind": "mupc", "parameterisation": parameterisation, "rule": rule, "seed": seed,
                               **({"skip_delay": delay[0]} if delay and delay[0] else {}),
                               **{k: m[k] for k in ("dataset", "width", "depth", "iterations", "batch_size", "latent_lr",
                                                    "param_lr", "test_every", "test_subset", "train_subset")}})
    return out_trials


def frozen_bottom(config: dict[str, Any], choices: dict[str, dict[str, Any]]) -> dict[int, dict[str, Any]]:
    """Per MLP depth, the ``frozen_reference`` variant's (tuned) per-layer median gradient element at
    initialisation on the first training batch (seed of the first seed) and ``k``, the bottom layers at
    or below AdamW's eps (:func:`frozen_layers`)."""
    reference = config.get("frozen_reference", "spiking+fu")
    if not config["datasets"] or not any(VARIANTS[v].get("frozen") for v in _variants(config)):
        return {}
    out = {}
    for depth in config["depths"]:
        p = {"kind": "accuracy", "epochs": config["epochs"], "train_subset": config["train_subset"], "test_subset": config["test_subset"],
             "training": config["training"], "dataset": config["datasets"][0], "model": "mlp", "depth": depth, "variant": reference,
             "seed": config["seeds"][0], "optimizer": "adamw", **_latent(choices, reference, config)}
        probe = pdata.load(p["dataset"], "test")
        c = _config(p, int(np.prod(probe.images.shape[1:])), probe.classes)
        data = load_data(c)
        batch = make_batch(c, data[0].images[: c.data.batch_size], data[0].labels[: c.data.batch_size], data[0].classes)
        medians = alignment(prepare(c, data), batch)["median_abs"]
        out[depth] = {"reference": reference, "median_abs": medians, "k": frozen_layers(medians)}
    return out


def tune(config: dict[str, Any], out: Path, address: str | None = None, executor: str = "ray") -> tuple[dict[str, dict[str, Any]], list]:
    """Run both tuning stages; return (choices, tuning records). ``choices[variant]`` holds the latent
    settings, ``choices["sgd:" + variant]`` SGD's learning rate."""
    records = run_trials(run_trial, latent_trials(config, out), out, address=address, executor=executor)
    choices = choose(records, _LATENT_KEYS)
    sgd = run_trials(run_trial, sgd_trials(config, out, choices), out, address=address, executor=executor) if config["optimizers"] else []
    choices.update({f"sgd:{v}": c for v, c in choose(sgd, ("weight_lr",)).items()})
    return choices, records + sgd


# ----------------------------------------------------------------------------------------- report
_KEYS = ["dataset", "model", "optimizer", "depth"]


def accuracy_table(frame: pd.DataFrame) -> pd.DataFrame:
    """Test accuracy (%, last epoch) per (dataset, model, weight optimiser, depth, variant): median, min, max over seeds."""
    g = frame.groupby([*_KEYS, "variant"])["test_accuracy"]
    table = g.agg(median="median", min="min", max="max", seeds="count").reset_index()
    seconds = frame.groupby([*_KEYS, "variant"])["epoch_seconds"].median().reset_index(drop=True)
    table["epoch_seconds"] = seconds.values
    return table


def gap_table(frame: pd.DataFrame) -> pd.DataFrame:
    """Seed-paired difference to backprop (points) per (dataset, model, optimiser, depth, variant):
    mean of ``acc(variant, seed) - acc(bp, seed)`` with its 95 % t-interval over seeds."""
    rows = []
    for key, sub in frame.groupby(_KEYS, sort=False):
        for variant in dict.fromkeys(sub.variant):
            gap = None if variant == "bp" else _paired_gap(sub, variant, "bp")
            if gap is not None and gap.n > 0:
                rows.append({**dict(zip(_KEYS, key)), "variant": variant, "mean_gap": gap.mean, "low": gap.low, "high": gap.high,
                             "seeds": gap.n})
    return pd.DataFrame(rows, columns=[*_KEYS, "variant", "mean_gap", "low", "high", "seeds"])


_COLOURS = {**{v: rule_colour(v) for v in ("pc", "bp", "epc", "bpti")}, **VARIANT_COLOURS, "epc+fu": "#c5b0d5", "bp-frozen": "#98df8a"}


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
    for run, rows in _mupc_runs(mupc).groupby("run"):
        curves = pd.DataFrame([c for cs in rows.curve for c in cs]).groupby("iteration")["test_accuracy"]
        med = curves.median()
        ax.plot(med.index, med.values, "o-", label=run)
        ax.fill_between(med.index, curves.min().values, curves.max().values, alpha=0.15)
    ax.set_xlabel("training iteration (batches)")
    ax.set_ylabel("test accuracy (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return fig


QUESTION = ("Can PC learning train deep networks to backprop's accuracy with the deep-PCN toolbox (precision schedules, "
            "forward weight update, muPC), and how does vanilla PC fail as depth grows?")


def _paired_gap(frame: pd.DataFrame, variant: str, other: str) -> Any:
    """Seed-paired ``test_accuracy`` of ``variant`` minus ``other`` (rows of one dataset, model, optimiser and depth)."""
    wide = frame.pivot_table(index="seed", columns="variant", values="test_accuracy", aggfunc="first")
    if variant not in wide or other not in wide:
        return None
    both = wide[[variant, other]].dropna()
    return paired_difference(both[variant].to_numpy(), both[other].to_numpy())


def _degradation(pc: pd.DataFrame, where: str) -> list[str]:
    """(a): vanilla PC at each depth minus at the shallowest depth, seed-paired, and the first depth
    whose whole interval lies below -1 point."""
    wide = pc.pivot_table(index="seed", columns="depth", values="test_accuracy", aggfunc="first")
    depths = sorted(wide.columns)
    if len(depths) < 2:
        return []
    lines, first = [], None
    for d in depths[1:]:
        both = wide[[depths[0], d]].dropna()
        gap = paired_difference(both[d].to_numpy(), both[depths[0]].to_numpy())
        lines.append(claim(f"{where}: tuned vanilla PC at depth {d} minus at depth {depths[0]}", gap))
        if first is None and gap.computable and gap.high < -1.0:
            first = d
    lines.append(f"{where}: tuned vanilla PC " + (f"loses more than 1 point (whole interval below -1) from depth {first} on, against depth "
                                                  f"{depths[0]}." if first is not None else
                                                  f"loses more than 1 point (whole interval below -1) at no depth of this run (depths {depths})."))
    return lines


def _steps_lines(choices: dict[str, dict[str, Any]], tuning: pd.DataFrame, depth: int) -> list[str]:
    """(d): the relaxation length each variant was given, and what T the validation split chose."""
    lines = []
    for variant, c in choices.items():
        if variant.startswith("sgd:"):
            continue
        text = (f"Relaxation of {variant} (chosen on validation at depth {depth}): latent {c['latent_optimizer']} step {c['latent_lr']:g}, "
                f"T = {c['steps_factor']} x depth")
        if variant in STEPS_TUNED and len(tuning):
            rows = tuning[(tuning.variant == variant) & (tuning.latent_optimizer == c["latent_optimizer"])
                          & (tuning.latent_lr == c["latent_lr"])].sort_values("steps_factor")
            text += "; validation accuracy at T = " + ", ".join(
                f"{int(r.steps_factor)}N: " + ("diverged" if r.diverged else f"{r.validation_accuracy:.2f} %") for r in rows.itertuples())
        else:
            text += " (T fixed by the precision schedule)" if VARIANTS[variant]["precision"] != "constant" else ""
        lines.append(text + " (one seed).")
    return lines


def _mupc_runs(mupc: pd.DataFrame) -> pd.DataFrame:
    """``mupc`` with a ``run`` label per row: ``parameterisation/rule``, plus the skip delay (auxiliary nodes) if any."""
    delays = mupc["skip_delay"] if "skip_delay" in mupc else pd.Series([0] * len(mupc), index=mupc.index)
    return mupc.assign(run=[f"{a}/{b}" + (f" (skip delay {int(d)})" if d == d and d else "")
                            for a, b, d in zip(mupc.parameterisation, mupc.rule, delays)])


def findings(acc: pd.DataFrame, mupc: pd.DataFrame, choices: dict[str, dict[str, Any]] | None = None,
             tuning: pd.DataFrame | None = None, depth: int | None = None, bottom: dict[int, dict[str, Any]] | None = None) -> list[str]:
    """Sentences from the runs, each a seed-paired difference with its 95 % interval; the verdicts first
    (the report's Findings box holds the first few): (a) from which depth tuned vanilla PC loses more
    than a point, (b) which methods stay within 1 point of backprop at depths 15 and 20 (else the
    deepest), per weight optimiser, and the frozen-bottom control's k (``bottom``, from
    :func:`frozen_bottom`); then the differences behind them: vanilla PC per depth, each method minus
    backprop, (c) ePC, backprop through inference and spiking + forward update against one another and
    every residual-network run against backprop on the same network, (d) the relaxation each method
    was given and what T the validation split chose."""
    verdicts: list[str] = []
    within_lines: list[str] = []
    lines: list[str] = []
    for (dataset, model, optimizer), sub in ([] if acc.empty else acc.groupby(["dataset", "model", "optimizer"], sort=False)):
        where = f"{dataset} {model.upper() if model == 'mlp' else model}, {optimizer}"
        degradation = _degradation(sub[sub.variant == "pc"], where)
        verdicts += degradation[-1:]
        lines += degradation[:-1]
        asked = sorted(d for d in set(sub.depth) if d in (15, 20)) or [int(sub.depth.max())]
        for d in asked:
            at, within = sub[sub.depth == d], []
            for variant in dict.fromkeys(at.variant):
                gap = None if variant == "bp" else _paired_gap(at, variant, "bp")
                if gap is not None and gap.n > 0:
                    lines.append(claim(f"{where}, depth {d}: {variant} minus backprop", gap))
                    within += [variant] if gap.within(1.0) else []
            within_lines.append(f"{where}, depth {d}: within 1 point of backprop (whole interval inside +-1): "
                                + (", ".join(within) if within else "none") + ".")
        for d in sorted(set(sub.depth)):
            at = sub[sub.depth == d]
            for a, b in (("epc", "spiking+fu"), ("bpti", "spiking+fu"), ("epc", "bpti"), ("epc+fu", "epc")):
                gap = _paired_gap(at, a, b)
                if gap is not None and gap.n > 0:
                    lines.append(claim(f"{where}, depth {d}: {a} minus {b}", gap))
    if bottom:
        within_lines.append("Frozen-bottom control (bp-frozen, backprop with the bottom k layers never trained): k = " + ", ".join(
            f"{b['k']} at depth {d}" for d, b in bottom.items()) + f" (layers whose median {next(iter(bottom.values()))['reference']} "
            f"gradient element is at or below AdamW's eps {ADAM_EPS:g} at initialisation; no bp-frozen trial where k = 0).")
    if not mupc.empty:
        mupc = _mupc_runs(mupc)
        wide = mupc.pivot_table(index="seed", columns="run", values="final_test_accuracy", aggfunc="first")
        where = f"Residual MLP, depth {int(mupc.depth.iloc[0])}, {int(mupc.iterations_run.max())} iterations"
        for run in wide.columns:
            if run == "mupc/bp":
                continue
            if "mupc/bp" in wide:
                both = wide[[run, "mupc/bp"]].dropna()
                lines.append(claim(f"{where}: {run} minus backprop on the same network (mupc/bp), test accuracy",
                                   paired_difference(both[run].to_numpy(), both["mupc/bp"].to_numpy())))
            else:
                lines.append(claim(f"{where}, {run}: test accuracy", mean_interval(wide[run].dropna().to_numpy()), unit="%", within=None,
                                   signed=False, null="no detectable accuracy"))
    if choices:
        lines += _steps_lines(choices, tuning if tuning is not None else pd.DataFrame(), depth or 0)
    return verdicts + within_lines + lines or ["No trial finished; no finding."]


def _summary(config: dict[str, Any], table: pd.DataFrame, mupc: pd.DataFrame, diag: dict[str, dict[str, Any]], failed: list) -> list[str]:
    lines = []
    for (dataset, model, optimizer), sub in ([] if table.empty else table.groupby(["dataset", "model", "optimizer"])):
        pc = sub[sub.variant == "pc"].sort_values("depth")
        if len(pc):
            curve = ", ".join(f"{r['median']:.2f} % at depth {int(r['depth'])}" for _, r in pc.iterrows())
            lines.append(f"{dataset} {model}, {optimizer}: tuned vanilla PC test accuracy {curve} (median over seeds).")
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
    for run, rows in _mupc_runs(mupc).groupby("run") if len(mupc) else []:
        acc = rows.final_test_accuracy
        lines.append(f"Residual MLP depth {int(rows.depth.iloc[0])}, width {int(rows.width.iloc[0])}, {run}: {acc.median():.2f} % test accuracy after {int(rows.iterations_run.max())} iterations (min {acc.min():.2f}, "
                     f"max {acc.max():.2f})" + ("; diverged" if rows.diverged.any() else "") + ".")
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
    check_settings("depth", config, {**PRESETS, "optional": {"vgg_variants": [], "vgg_width": 16, "fix_depth": 15, "fix_variants": [],
                                                   "frozen_reference": "spiking+fu"}},
                   positive=_POSITIVE, limits=_LIMITS)
    return config


_POSITIVE = ("depths[]", "epochs", "train_subset", "test_subset", "diagnostic_depth", "vgg_depths[]", "vgg_width", "fix_depth",
             "training.width", "training.batch_size", "training.latent_lr", "training.lr_pc", "training.lr_bp", "mupc.width",
             "mupc.depth", "mupc.iterations", "tuning.validation", "tuning.epochs", "tuning.train_subset",
             "tuning.latent_lr[]", "tuning.latent_momentum", "tuning.steps[]", "tuning.sgd_lr[]", "training.sgd_momentum", "mupc.batch_size", "mupc.latent_lr", "mupc.param_lr", "mupc.test_every",
             "mupc.test_subset", "mupc.train_subset")
_LIMITS = {"depths[]": (2, 1000), "vgg_depths[]": (2, 1000), "epochs": (1, MAX_EPOCHS), "mupc.depth": (2, 1000),
           "mupc.iterations": (1, 10**6), "tuning.steps[]": (1, 64), "tuning.latent_momentum": (0, 0.99), "training.sgd_momentum": (0, 0.99), "tuning.epochs": (1, MAX_EPOCHS), "training.width": (1, 100_000), "mupc.width": (1, 100_000), "vgg_width": (1, 4096)}


def check_trials(config: dict[str, Any], out: Path) -> int:
    """Validate the run configuration of every tuning and accuracy trial before any trial starts; returns how many."""
    for key in ("variants", "fix_variants", "vgg_variants", "frozen_reference"):
        value = config.get(key, [])
        unknown = [v for v in ([value] if isinstance(value, str) else value) if v not in VARIANTS]
        if unknown:
            raise ConfigError(f"depth study setting {key}: expected names from {sorted(VARIANTS)}, got {short(unknown[0])}")
    unknown = [o for o in config["optimizers"] if o not in ("adamw", "sgd")]
    if unknown:
        raise ConfigError(f"depth study setting optimizers: expected 'adamw' or 'sgd', got {short(unknown[0])}")
    unknown = [o for o in config["tuning"]["latent_optimizers"] if o not in ("sgd", "nesterov")]
    if unknown:
        raise ConfigError(f"depth study setting tuning.latent_optimizers: expected 'sgd' or 'nesterov', got {short(unknown[0])}")
    items = []
    for p in [*latent_trials(config, out), *sgd_trials(config, out, {}), *trials(config, out)]:
        if p["kind"] in ("accuracy", "tune"):
            (c, h, w), classes = DATA_SHAPES.get(p["dataset"], ((1, 1, 1), 10))
            label = f"{p['kind']} {p['dataset']} {p['model']} depth {p['depth']} {p['variant']} {p['optimizer']} seed {p['seed']}"
            items.append((label, functools.partial(_config, p, c * h * w, classes)))
    return preflight("depth", items)


_OPTIONAL_KEYS = {"vgg_variants", "vgg_width", "fix_depth", "fix_variants", "frozen_reference"}
"""Settings a preset may leave out (their defaults live in :func:`trials`)."""


def _tuning_frame(records: list[dict[str, Any]]) -> pd.DataFrame:
    rows = []
    for r in records:
        p, res = r["params"], r.get("result") or {}
        rows.append({"stage": p["stage"], "variant": p["variant"], "latent_optimizer": p.get("latent_optimizer", ""),
                     "latent_lr": p.get("latent_lr", math.nan), "steps_factor": p.get("steps_factor", 1), "weight_lr": p.get("weight_lr", math.nan),
                     "validation_accuracy": res.get("validation_accuracy", math.nan), "diverged": bool(res.get("diverged", r["status"] != "ok")),
                     "cpu_seconds": res.get("cpu_seconds", math.nan)})
    return pd.DataFrame(rows)


def _tuning_figure(tuning: pd.DataFrame):
    """Validation accuracy vs latent step, one panel per variant, one line per (latent optimiser, T)."""
    latent = tuning[tuning.stage == "latent"]
    variants = list(dict.fromkeys(latent.variant))
    cols = min(4, max(1, len(variants)))
    rows = max(1, -(-len(variants) // cols))
    fig, axes = plt.subplots(rows, cols, figsize=(2.8 * cols, 2.5 * rows), squeeze=False, constrained_layout=True)
    for ax in axes.flat[len(variants):]:
        ax.set_axis_off()
    for ax, v in zip(axes.flat, variants):
        for (opt, factor), g in latent[latent.variant == v].groupby(["latent_optimizer", "steps_factor"]):
            g = g.sort_values("latent_lr")
            ax.plot(g.latent_lr, g.validation_accuracy.fillna(0.0), "o-", ms=3, label=f"{opt}, T={int(factor)}N")
        ax.set_xscale("log")
        ax.set_title(v, fontsize=9)
        ax.set_xlabel("latent step size", fontsize=8)
        ax.set_ylabel("validation accuracy (%)", fontsize=8)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6)
    return fig


def _alignment_figure(align: pd.DataFrame):
    depths = sorted(set(align.depth))
    fig, axes = plt.subplots(2, len(depths), figsize=(3.0 * len(depths), 5.0), squeeze=False, constrained_layout=True)
    for j, d in enumerate(depths):
        sub = align[(align.depth == d) & (align.variant != "bp")]
        for (variant, stage), g in sub.groupby(["variant", "stage"]):
            style = "-" if stage == "init" else "--"
            axes[0, j].plot(g.layer, g.cosine, style, color=_COLOURS.get(variant), label=variant if stage == "init" else None)
            axes[1, j].plot(g.layer, g.norm_ratio, style, color=_COLOURS.get(variant))
        axes[0, j].set_title(f"depth {d}", fontsize=9)
        axes[0, j].set_ylim(-1.05, 1.05)
        axes[1, j].set_yscale("log")
        axes[1, j].set_xlabel("layer")
        for ax in axes[:, j]:
            ax.grid(alpha=0.3)
    axes[0, 0].set_ylabel("cosine to bp gradient")
    axes[1, 0].set_ylabel("norm ratio to bp gradient")
    axes[0, 0].legend(fontsize=6)
    return fig


def _energy_figure(diag: dict[str, dict[str, Any]]):
    """Total energy (sum over layers, batch mean) vs relaxation step at initialisation, one line per variant."""
    fig, ax = plt.subplots(figsize=(6, 4))
    for v, d in diag.items():
        energy = d.get("init", {}).get("energy")
        if energy:
            ax.plot(range(len(energy)), [sum(row) for row in energy], "o-", ms=2, color=_COLOURS.get(v), label=v)
    ax.set_xlabel("relaxation step t")
    ax.set_ylabel("total energy (precision-weighted)")
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return fig


def run(preset: str, out: Path, address: str | None = None, executor: str = "ray", overrides: dict | None = None) -> Path:
    """Run the depth study (skipping finished trials): tune on a validation split, then the test-set
    trials with the chosen settings; write ``out/report.html``."""
    started = time.time()
    out = Path(out)
    config = _resolve(preset, overrides)
    check_trials(config, out)
    choices, tune_records = tune(config, out, address, executor)
    bottom = frozen_bottom(config, choices)
    records = run_trials(run_trial, trials(config, out, choices, {d: b["k"] for d, b in bottom.items()}), out, address=address, executor=executor)
    report = Report("Deep PCNs, from failure to backprop accuracy", out, {"preset": preset, **config}, question=QUESTION,
                    study="depth", preset=preset, started=started)
    frame = records_frame(records)
    acc = frame[frame.kind == "accuracy"] if len(frame) else frame
    mupc = frame[frame.kind == "mupc"] if len(frame) else frame
    tuning = _tuning_frame(tune_records)
    table = accuracy_table(acc) if len(acc) else pd.DataFrame()
    gaps = gap_table(acc) if len(acc) else pd.DataFrame()
    diag = {}
    if len(acc):
        for r in acc[acc.diagnostics.map(bool)].itertuples():
            diag.setdefault(r.dataset, {})[r.variant] = r.diagnostics
    main_diag = diag.get(config["datasets"][0], {}) if config["datasets"] else {}  # a VGG-only run has no MLP diagnostics
    failed = failures(records + tune_records)
    deepest = max(config["depths"]) if config["depths"] else 0
    report.findings(findings(acc, mupc, choices, tuning, deepest, bottom))
    report.statements(_summary(config, table, mupc, main_diag, failed))
    t, u = config["training"], config["tuning"]
    report.methods("Tuning", (
        f"On {config['datasets'][0] if config['datasets'] else '-'}: a validation split of {u['validation']} training images (stratified, seed 0; held out of the tuning runs' "
        f"{u['train_subset'] or 'remaining'} training images), at the deepest depth ({deepest}) only, {u['epochs']} epoch(s), seed "
        f"{u['seed']}; the choices are reused at every depth (and for the VGG). Stage 1, under AdamW: latent optimiser "
        f"{u['latent_optimizers']} (momentum {u['latent_momentum']} for Nesterov) x step size {u['latent_lr']} x, for "
        f"{[v for v in STEPS_TUNED if v in _variants(config)]}, T in {u['steps']} x depth (the precision schedules keep T = depth). "
        f"Stage 2: per variant (backprop included) the learning rate of SGD with momentum {t['sgd_momentum']} from {u['sgd_lr']}, with "
        f"stage 1's latent choice. Chosen: the highest validation accuracy after the last epoch. AdamW keeps the paper's learning "
        f"rate ({t['lr_pc']} PC, {t['lr_bp']} bp; not tuned). The test set is used only by the final trials below."))
    if len(tuning):
        report.figure(_tuning_figure(tuning), "tuning", "Validation accuracy after tuning vs latent step size, per variant, latent "
                      "optimiser and T (0 = diverged).")
        chosen = pd.DataFrame([{"variant": v, **c} for v, c in choices.items()])
        report.table(chosen, "tuning_choices", "Chosen settings per variant (sgd:<variant>: SGD's learning rate) and their validation accuracy")
        report.table(tuning, "tuning", "Every tuning trial", max_rows=60)
    report.methods("Accuracy vs depth", (
        f"MLPs of width {t['width']} ({t['activation']}, {t['output']} output), trained for {config['epochs']} epochs on "
        f"{config['train_subset'] or 'all'} training images in batches of {t['batch_size']}, tested once on "
        f"{config['test_subset'] or 'all'} test images after the last epoch (feed-forward read-out; no choice is made on the test set). "
        f"Weight init {t.get('init', 'default')}. Weight optimisers {config['optimizers']}: AdamW (weight decay {t['weight_decay']}) "
        f"and SGD with momentum {t['sgd_momentum']}, schedule {t.get('schedule', 'constant')} (warm-up {t.get('warmup_epochs', 0.0)} "
        "epochs). Relaxation per variant as tuned. ePC (epc) relaxes the prediction errors instead of the states; bpti is "
        "backprop through the relaxation from zero states with only the image clamped. "
        + (f"Separate fixes {config.get('fix_variants')} only at depth {config['fix_depth']}. " if config.get("fix_depth") else "")
        + (f"VGG-BN ({config['vgg_dataset']}, width {config.get('vgg_width', 16)}, GELU): BatchNorm running statistics "
           "updated only in the weight phase (PC) / the training forward pass (bp). " if config.get("vgg_dataset") else "")
        + f"Spiking alpha {t['alpha']}, decaying k {t['decay']}. Seeds {config['seeds']}, paired (same initial weights and "
        "batches for every variant of a seed); differences are seed-paired means with 95 % t-intervals."))
    if bottom:
        report.table(pd.DataFrame([{"depth": d, "reference": b["reference"], "frozen_k": b["k"],
                                    "median_abs_per_layer": " ".join(f"{m:.1e}" for m in b["median_abs"])} for d, b in bottom.items()]),
                     "frozen_bottom", f"Frozen-bottom control: per depth, k = bottom layers whose median gradient element under the reference "
                     f"variant at initialisation is at or below AdamW's eps ({ADAM_EPS:g}); bp-frozen trains backprop with those k layers frozen")
    aligned = acc[acc.alignment.map(bool)] if len(acc) and "alignment" in acc else pd.DataFrame()
    if len(aligned):
        rows = [{"variant": r.variant, "depth": int(r.depth), "stage": st, "layer": i, **{k: v[i] for k, v in a.items()}}
                for r in aligned.itertuples() for st, a in r.alignment.items() for i in range(len(a["cosine"]))]
        align = pd.DataFrame(rows)
        report.figure(_alignment_figure(align), "alignment", "Per layer (0 = input side): cosine (top) and norm ratio (bottom, log) "
                      "of each method's weight gradient to backprop's gradient on the same batch and weights, at initialisation "
                      "(solid) and after training (dashed); one column per depth; first seed, AdamW run.")
        report.table(align, "alignment", "Per-layer alignment with backprop's gradient", max_rows=40)
    if len(table):
        report.figure(_accuracy_figure(table), "accuracy_vs_depth", "Test accuracy vs depth per variant and weight optimiser (median, "
                      "min-max band over seeds); blue = PC learning, green = backprop, other colours = the toolbox's fixes.", key=True)
        report.table(table, "accuracy", "Test accuracy (%) per dataset, model, optimiser, depth and variant; median epoch time (s)")
        report.table(gaps, "gap_to_bp", "Seed-paired difference to backprop (points; negative = below bp) with its 95 % interval")
    for dataset, d in diag.items():
        report.section(f"Diagnostics ({dataset}, depth {config['diagnostic_depth']})")
        report.methods(f"Diagnostics ({dataset}, depth {config['diagnostic_depth']})", (
            "On the first training batch (image and label clamped), at initialisation and after training, with each variant's "
            "tuned relaxation. Error norm: batch-mean L2 norm of each layer's prediction error at each relaxation step; energy: "
            "the precision-weighted energy relaxation descends. First-error step: the first step at which a layer's error norm "
            "exceeds 1e-10 (-1: never within T). Weight-gradient norm: L2 norm of dE/dtheta (PC) or dLoss/dtheta (bp) per layer, "
            "before the optimiser."))
        report.figure(_energy_figure(d), f"energy_vs_step_{dataset}", f"{dataset}, depth {config['diagnostic_depth']}, at initialisation: "
                      "total energy vs relaxation step, up to each variant's tuned T (spiking / decaying: with their precision schedule).")
        for stage in ("init", "trained"):
            if any(stage in v for v in d.values()):
                report.figure(_heatmaps(d, stage, "error_norm", "error norm"), f"error_heatmap_{dataset}_{stage}",
                              f"{dataset}, {stage}: log10 error norm per layer (rows) and inference step (columns).")
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
            "multipliers and PyTorch's default init; rule 'bp' = backprop on the same network (like-for-like row); 'epc' = ePC's "
            "relaxation of the errors with the same steps; skip delay k = k auxiliary identity nodes on each skip path."))
        report.figure(_mupc_figure(mupc), "mupc", "Test accuracy vs training iteration (median, min-max band over seeds).")
        report.table(_mupc_runs(mupc)[["run", "parameterisation", "rule", "seed", "final_test_accuracy", "best_test_accuracy", "iterations_run",
                           "diverged", "train_seconds"]], "mupc", "muPC vs standard parameterisation / backprop")
    timing = frame[["kind", "seconds"]].groupby("kind")["seconds"].agg(["count", "median", "sum"]).reset_index() if len(frame) else pd.DataFrame()
    if len(timing):
        report.table(timing, "timing", "Trial wall time by kind (s), including data loading and diagnostics")
    if failed:
        report.table(pd.DataFrame(failed), "failures", "Failed trials")
    return report.write()
