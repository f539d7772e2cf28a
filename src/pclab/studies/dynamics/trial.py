"""One trial of the dynamics study: train one model family by one rule from one seed, then probe
its inference on fixed test batches.

Paired runs: for a given seed every rule starts from the same initial weights (the model is built
right after ``torch.manual_seed(seed)``, as :func:`pclab.train.prepare` does) and sees the same
training batches in the same order (the shuffling generator is seeded from ``(seed, epoch)`` as in
:func:`pclab.train.train`). The test batches are the same for every trial.
"""

from __future__ import annotations

import math
import time
from typing import Any

import numpy as np
import torch

from ... import models
from ...core import PCN, Inference, PCLearning
from ...data import Dataset, batches, load, one_hot
from ...io import atomic_write
from ...sweep import trial_id
from ...train import ConfigError, RunConfig, build_inference, build_model, build_rule, hybrid_precisions, make_batch, prepare_images, validate
from .alignment import alignment
from .metrics import convergence, trace

FAMILIES = ("generative", "discriminative", "hybrid")
RULES = ("pc", "bp-through-inference", "bp")


def run_config(params: dict[str, Any]) -> RunConfig:
    """The :class:`RunConfig` of a trial: its family's base config with the trial's rule, seed and
    training initialisation."""
    data = {k: (dict(v) if isinstance(v, dict) else v) for k, v in params["config"].items()}
    data["learning"] = {**data.get("learning", {}), "rule": params["rule"]}
    data["inference"] = {**data.get("inference", {}), "init": params["train_init"]}
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


def train_with_alignment(config: RunConfig, model: PCN, train: Dataset, points: int) -> tuple[list[dict[str, Any]], float]:
    """Train ``model`` by ``config.learning.rule``; for PC, measure the update/gradient alignment
    on the current training batch at ``points`` evenly spaced batches (the first and the last
    included). Returns the alignment rows and the training time in seconds."""
    per_epoch = math.ceil(len(train) / config.data.batch_size)
    total = config.epochs * per_epoch
    rule = build_rule(config, model, per_epoch)
    marks = set(np.unique(np.linspace(0, total - 1, points).round().astype(int)).tolist()) if points > 0 else set()
    rows: list[dict[str, Any]] = []
    started = time.perf_counter()
    seen = 0
    for epoch in range(config.epochs):
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
    return rows, time.perf_counter() - started


def probe_batches(params: dict[str, Any], config: RunConfig, test: Dataset):
    """The fixed test batches: ``(x prepared for the model, class indices)``."""
    size = params["test_batch_size"]
    for index, (images, labels) in enumerate(batches(test, size, shuffle=False)):
        if index >= params["test_batches"]:
            break
        yield prepare_images(config, images), labels


def run_probes(params: dict[str, Any], config: RunConfig, model: PCN, test: Dataset, out_dir: str | None) -> dict[str, Any]:
    """Trace every probe of the trial's family on the test batches; returns per-batch traces and
    scalars, and saves the decoded images of the first batch under ``out_dir``."""
    T = config.inference.steps
    horizon = params["horizon_factor"] * T
    keep_steps = sorted({s for s in params["image_steps"] if s <= horizon} | {T, horizon})
    results: dict[str, Any] = {}
    kept: dict[str, np.ndarray] = {}
    for probe in params["probes"]:
        inference: Inference = build_inference(config.inference.model_copy(update={"init": probe["init"]}))
        traces, scalars = [], []
        for index, (x, labels) in enumerate(probe_batches(params, config, test)):
            clamp = {"x": x}
            if "y" in probe["clamp"]:
                clamp["y"] = one_hot(labels, test.classes).to(dtype=x.dtype)
            has_decoder = params["family"] != "discriminative"
            tr = trace(
                model, clamp, inference, horizon, trained_steps=T,
                labels=labels if "y" in model.nodes else None,
                latent="z" if has_decoder else None, image_target=x if has_decoder else None,
                keep_images=params["keep_images"] if index == 0 else 0, keep_steps=keep_steps,
            )
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


def run_trial(params: dict[str, Any]) -> dict[str, Any]:
    """The trial function given to :func:`pclab.sweep.run_trials` (JSON in, JSON out).

    ``params``: ``family``, ``rule``, ``seed``, ``train_init``, ``config`` (plain RunConfig data),
    ``probes`` (list of ``{name, clamp, init}``), ``test_batches``, ``test_batch_size``,
    ``horizon_factor``, ``tolerance``, ``alignment_points``, ``keep_images``, ``image_steps``,
    ``test_seed``, ``out`` (study folder for artifacts).
    """
    cpu_started = time.process_time()
    config = run_config(params)
    if params["rule"] == "bp" and params["family"] == "generative":
        raise ConfigError("bp is not defined for a generative PCN (no feed-forward path from the image)")
    train = load_split(config.data.dataset, "train", config.data.train_subset, config.seed)
    test = load_split(config.data.dataset, "test", params["test_batches"] * params["test_batch_size"], params["test_seed"])
    model = build(config, tuple(train.images.shape[1:]), train.classes)
    rows, seconds = train_with_alignment(config, model, train, params["alignment_points"])
    broken = [n for n, p in model.named_parameters() if not torch.isfinite(p).all()]
    if broken:
        raise FloatingPointError(f"training left non-finite parameters {broken[:5]}")
    model.eval()
    started = time.perf_counter()
    probes = run_probes(params, config, model, test, params.get("out"))
    return {
        "train_seconds": seconds, "probe_seconds": time.perf_counter() - started,
        "cpu_seconds": time.process_time() - cpu_started,
        "trained_steps": config.inference.steps, "alignment": rows, "probes": probes,
    }
