"""One trial of the dynamics study: train one model family by one rule from one seed, then probe
its inference on fixed test batches.

Paired runs: for a given seed every rule starts from the same initial weights (the model is built
right after ``torch.manual_seed(seed)``, as :func:`pclab.train.prepare` does) and sees the same
training batches in the same order (the shuffling generator is seeded from ``(seed, epoch)`` as in
:func:`pclab.train.train`). The test batches are the same for every trial.
"""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Any

import numpy as np
import torch

from ... import models
from ...core import PCN, Inference, LearningRule, PCLearning
from ...data import Dataset, batches, load, one_hot
from ...io import atomic_write
from ...sweep import trial_id
from ...train import ConfigError, RunConfig, build_inference, build_model, build_rule, hybrid_precisions, make_batch, prepare_images, validate
from .alignment import alignment
from .metrics import convergence, trace
from .stepsize import choose_step, largest_steady_step, validation_split, with_step

RULE_OF = {"pc": "pc", "bp-through-inference": "bp-through-inference", "bp-through-inference-truncated": "bp-through-inference", "bp": "bp"}
"""Study rule -> ``learning.rule`` of :mod:`pclab.train` (the truncated variant sets ``learning.truncate``)."""


def run_config(params: dict[str, Any]) -> RunConfig:
    """The :class:`RunConfig` of a trial: its family's base config with the trial's rule, truncation,
    seed, inference horizon ``T`` and initialisation."""
    data = {k: (dict(v) if isinstance(v, dict) else v) for k, v in params["config"].items()}
    data["learning"] = {**data.get("learning", {}), "rule": RULE_OF[params["rule"]], "truncate": params.get("truncate")}
    data["inference"] = {**data.get("inference", {}), "init": params["train_init"], "steps": params["T"]}
    data["seed"] = params["seed"]
    return validate(data, f"dynamics trial {params['family']}/{params['rule']}")


def build(config: RunConfig, image_shape: tuple[int, int, int], classes: int) -> PCN:
    """The seeded network. A hybrid model gets, for every rule, the image and label precisions
    :func:`pclab.train.hybrid_precisions` derives from ``config.learning.lam``: its energy then
    weighs image and label like the backprop rules' loss ``(1 - lam) MSE + lam CE`` (up to one
    common factor), so PC learning descends the same objective, and every rule relaxes the same
    energy at test time."""
    torch.manual_seed(config.seed)
    if config.model.kind == "rathjens_wiskott":
        m = config.model
        dtype = torch.float64 if config.dtype == "float64" else torch.float32
        pixels = math.prod(image_shape)
        image_precision, label_precision = hybrid_precisions(config.learning.lam, pixels)
        model = models.rathjens_wiskott(m.complexity, m.latent, pixels, classes, image_precision, label_precision, m.layered)
        return model.to(device=config.device, dtype=dtype)
    return build_model(config, image_shape, classes)


def load_split(dataset: str, split: str, n: int | None, seed: int) -> Dataset:
    """``n`` stratified samples of a split (all of it when ``n`` is None or larger)."""
    data = load(dataset, split)
    return data.subset(n, seed=seed) if n is not None and n < len(data) else data


def train_and_validation(dataset: str, n: int | None, validation: int, seed: int) -> tuple[Dataset, Dataset]:
    """``(train, validation)``: the validation split (``validation`` stratified training examples, the same
    for every trial) and ``n`` stratified examples (seed ``seed``) of the rest of the training set."""
    rest, held_out = validation_split(load(dataset, "train"), validation)
    return (rest.subset(n, seed=seed) if n is not None and n < len(rest) else rest), held_out


def training_clamp(config: RunConfig, model: PCN, images: torch.Tensor, labels: torch.Tensor, classes: int) -> dict[str, torch.Tensor]:
    """What the trial's rule clamps while it relaxes in training: image and label (one-hot) for PC
    learning, the image only for backprop through inference and at test."""
    x = prepare_images(config, images)
    if config.learning.rule == "pc" and "y" in model.nodes:
        return {"x": x, "y": one_hot(labels, classes).to(dtype=x.dtype)}
    return {"x": x}


def train_with_alignment(config: RunConfig, model: PCN, train: Dataset, points: int, validation: Dataset | None = None,
                         step_grid: list[float] | None = None) -> tuple[LearningRule, list[dict[str, Any]], list[dict[str, Any]], float]:
    """Train ``model`` by ``config.learning.rule``; for PC, measure the update/gradient alignment
    on the current training batch at ``points`` evenly spaced batches (the first and the last
    included). With a ``step_grid`` the latent step size of a rule that relaxes in training is
    chosen at the start of every epoch on the ``validation`` set, clamped as in training
    (:func:`.stepsize.choose_step`). Returns the rule, the alignment rows, the step choices and
    the training time in seconds."""
    per_epoch = math.ceil(len(train) / config.data.batch_size)
    total = config.epochs * per_epoch
    rule = build_rule(config, model, per_epoch)
    marks = set(np.unique(np.linspace(0, total - 1, points).round().astype(int)).tolist()) if points > 0 else set()
    rows: list[dict[str, Any]] = []
    choices: list[dict[str, Any]] = []
    started = time.perf_counter()
    seen = 0
    for epoch in range(config.epochs):
        if step_grid and validation is not None and hasattr(rule, "inference"):
            clamp = training_clamp(config, model, validation.images, validation.labels, validation.classes)
            choice = choose_step(model, clamp, rule.inference, step_grid, config.inference.steps)
            rule.inference = with_step(rule.inference, choice["lr"])
            choices.append({"epoch": epoch + 1, **choice})
        generator = torch.Generator().manual_seed(config.seed * 1_000_003 + epoch)  # as pclab.train.train
        for images, labels in batches(train, config.data.batch_size, shuffle=True, generator=generator):
            batch = make_batch(config, images, labels, train.classes)
            if seen in marks and isinstance(rule, PCLearning):
                for row in alignment(rule, batch):
                    rows.append({"batch": seen, "progress": seen / max(total - 1, 1), **row})
            metrics = rule.step(batch)
            bad = [k for k, v in metrics.items() if not math.isfinite(v)]
            if bad:
                raise FloatingPointError(f"training diverged at epoch {epoch + 1}, batch {seen}: {bad} not finite ({metrics})")
            seen += 1
    return rule, rows, choices, time.perf_counter() - started


def probe_batches(params: dict[str, Any], config: RunConfig, test: Dataset):
    """The fixed test batches: ``(x prepared for the model, class indices)``."""
    size = params["test_batch_size"]
    for index, (images, labels) in enumerate(batches(test, size, shuffle=False)):
        if index >= params["test_batches"]:
            break
        yield prepare_images(config, images), labels


def run_probes(params: dict[str, Any], config: RunConfig, model: PCN, test: Dataset, out_dir: str | None,
               inference: Inference) -> dict[str, Any]:
    """Trace every probe of the trial's family on the test batches with ``inference`` (the trained
    latent step); returns per-batch traces and scalars, and saves the decoded images of the first
    batch under ``out_dir``."""
    T = config.inference.steps
    horizon = params["horizon_factor"] * T
    keep_steps = sorted({s for s in params["image_steps"] if s <= horizon} | {T, horizon})
    results: dict[str, Any] = {}
    kept: dict[str, np.ndarray] = {}
    for probe in params["probes"]:
        probe_inference = dataclasses.replace(inference, init=probe["init"])
        traces, scalars = [], []
        for index, (x, labels) in enumerate(probe_batches(params, config, test)):
            tr = _trace(params, model, probe, probe_inference, x, labels, test.classes, T, horizon,
                        keep_images=params["keep_images"] if index == 0 else 0, keep_steps=keep_steps)
            traces.append(tr.to_json())
            scalars.append(convergence(tr, T, params["tolerance"]))
            if index == 0 and tr.images:
                kept[probe["name"]] = np.stack([tr.images[s].reshape(len(tr.images[s]), -1).numpy() for s in keep_steps])
                kept["target"] = x[: params["keep_images"]].reshape(-1, x[0].numel()).numpy()
        results[probe["name"]] = {"traces": traces, "scalars": scalars}
    if kept and out_dir is not None:
        path = f"{out_dir}/artifacts/{trial_id(params)}/images.npz"
        arrays = {**kept, "steps": np.asarray(keep_steps)}
        atomic_write(path, lambda h: np.savez_compressed(h, **arrays), binary=True)
    return results


def _trace(params: dict[str, Any], model: PCN, probe: dict[str, Any], inference: Inference, x: torch.Tensor, labels: torch.Tensor,
           classes: int, T: int, horizon: int, keep_images: int = 0, keep_steps: tuple[int, ...] | list[int] = ()):
    clamp = {"x": x}
    if "y" in probe["clamp"]:
        clamp["y"] = one_hot(labels, classes).to(dtype=x.dtype)
    has_decoder = not params["family"].endswith("discriminative")
    return trace(model, clamp, inference, horizon, trained_steps=T, labels=labels if "y" in model.nodes else None,
                 latent="z" if has_decoder else None, image_target=x if has_decoder else None,
                 keep_images=keep_images, keep_steps=keep_steps)


def step_sensitivity(params: dict[str, Any], config: RunConfig, model: PCN, test: Dataset, held_out: Dataset,
                     inference: Inference, trained: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The family's first probe relaxed for ``horizon_factor * T`` steps at three latent step sizes,
    without retraining: the test step (the trained one; for a hybrid trained by PC learning or bp, the
    one chosen after training with the image clamped), half of it, and the largest of ``sensitivity_grid``
    (multiples of the test step) whose energy never rises on a held-out batch (the first ``test_batch_size``
    validation examples, clamped as the probe clamps), on the first ``sensitivity_batches`` test batches.
    ``trained``: the probe's scalars per test batch at the test step (reused, not recomputed). One
    row per (step kind, test batch): the step, its multiple of the test step, and the probe's scalars."""
    T = config.inference.steps
    horizon = params["horizon_factor"] * T
    probe = params["probes"][0]
    lr = float(inference.optimizer.lr)
    probe_inference = dataclasses.replace(inference, init=probe["init"])
    n = min(params["test_batch_size"], len(held_out))
    x = prepare_images(config, held_out.images[:n])
    clamp = {"x": x}
    if "y" in probe["clamp"]:
        clamp["y"] = one_hot(held_out.labels[:n], held_out.classes).to(dtype=x.dtype)
    steady = largest_steady_step(model, clamp, probe_inference, [lr * m for m in params["sensitivity_grid"]], horizon)
    count = params["sensitivity_batches"]
    rows = [{"kind": "test step", "lr": lr, "multiple": 1.0, "batch": index, **scalars} for index, scalars in enumerate(trained[:count])]
    kinds = {"half": lr / 2}
    if steady is not None:
        kinds["largest steady"] = steady
    for kind, step in kinds.items():
        for index, (xb, labels) in enumerate(probe_batches(params, config, test)):
            if index >= count:
                break
            if step == lr:  # the largest steady step is the test step
                rows.append({**rows[index], "kind": kind})
                continue
            tr = _trace(params, model, probe, with_step(probe_inference, step), xb, labels, test.classes, T, horizon)
            rows.append({"kind": kind, "lr": step, "multiple": step / lr, "batch": index, **convergence(tr, T, params["tolerance"])})
    return rows


def run_trial(params: dict[str, Any]) -> dict[str, Any]:
    """The trial function given to :func:`pclab.sweep.run_trials` (JSON in, JSON out).

    ``params``: ``family``, ``rule``, ``seed``, ``T`` (trained horizon), ``truncate``, ``train_init``,
    ``step_grid``, ``config`` (plain RunConfig data), ``probes`` (list of ``{name, clamp, init}``),
    ``validation``, ``sensitivity_grid``, ``sensitivity_batches``, ``test_batches``, ``test_batch_size``, ``horizon_factor``,
    ``tolerance``, ``alignment_points``, ``keep_images``, ``image_steps``, ``test_seed``, ``out``
    (study folder for artifacts).
    """
    cpu_started = time.process_time()
    config = run_config(params)
    if params["rule"] == "bp" and config.model.kind in ("generative_mlp", "deconv_generator"):
        raise ConfigError("bp is not defined for a generative PCN (no feed-forward path from the image)")
    train, held_out = train_and_validation(config.data.dataset, config.data.train_subset, params["validation"], config.seed)
    test = load_split(config.data.dataset, "test", params["test_batches"] * params["test_batch_size"], params["test_seed"])
    model = build(config, tuple(train.images.shape[1:]), train.classes)
    rule, rows, choices, seconds = train_with_alignment(config, model, train, params["alignment_points"], held_out, params["step_grid"])
    broken = [n for n, p in model.named_parameters() if not torch.isfinite(p).all()]
    if broken:
        raise FloatingPointError(f"training left non-finite parameters {broken[:5]}")
    model.eval()
    inference = getattr(rule, "inference", None) or build_inference(config.inference)
    if params["step_grid"] and (not hasattr(rule, "inference") or set(training_clamp(config, model, held_out.images[:1],
                                                                                      held_out.labels[:1], held_out.classes)) != {"x"}):
        # bp (no training relaxation) and PC learning (trained with the label clamped, whose precision sets the step):
        # the test relaxation (image clamped) is chosen on the validation split after training
        clamp = {"x": prepare_images(config, held_out.images)}
        choice = choose_step(model, clamp, inference, params["step_grid"], config.inference.steps)
        inference = with_step(inference, choice["lr"])
        choices.append({"epoch": None, **choice})
    started = time.perf_counter()
    probes = run_probes(params, config, model, test, params.get("out"), inference)
    sensitivity = step_sensitivity(params, config, model, test, held_out, inference, probes[params["probes"][0]["name"]]["scalars"])
    return {
        "train_seconds": seconds, "probe_seconds": time.perf_counter() - started,
        "cpu_seconds": time.process_time() - cpu_started,
        "trained_steps": config.inference.steps, "lr": float(inference.optimizer.lr), "step_choices": choices,
        "alignment": rows, "probes": probes, "sensitivity": sensitivity,
    }
