"""One run of the trade-off study: build the hybrid model, train it one of three ways, measure it.

The three ways share the Rathjens-Wiskott family (:func:`pclab.models.rathjens_wiskott`), as a
PCN whose only value nodes are image ``x``, latent ``z`` and label ``y`` (the builder's default;
``layered=True`` would make hidden decoder layers value nodes that carry image information around
the latent):

* ``"bp"``   -- (a) their feed-forward model: ``z = enc(x)``, loss ``(1 - lam) MSE + lam CE`` on
  ``dec(z)`` and ``head(z)``, backprop (:class:`pclab.core.Backprop`).
* ``"bpti"`` -- (b) the hybrid PCN: ``z`` starts at ``enc(x)`` and relaxes ``T`` steps on the image
  energy (label released); the same loss on the relaxed state, backpropagated through the unrolled
  relaxation (:class:`pclab.core.BPThroughInference`).
* ``"pc"``   -- (c) the hybrid PCN trained by PC learning: image and label clamped, relax, one
  local weight step; the encoder (an amortiser, outside the energy) learns to predict the relaxed
  latent (:meth:`pclab.core.PCN.amortiser_loss`, part of PC learning).

``lam`` weights *classification* (pclab's convention; Rathjens & Wiskott's ``lambda`` weights
reconstruction, theirs = 1 - ours).
"""

from __future__ import annotations

import base64
import math
import time
from functools import lru_cache
from typing import Any

import numpy as np
import torch

from ...core import relax
from ...data import Dataset, batches, load
from ...train import DivergenceError, Run, evaluate, make_batch, prepare, prepare_images, validate
from .probes import decoder_probe_mse, linear_probe_accuracy

WAYS = {"bp": "bp", "bpti": "bp-through-inference", "pc": "pc"}
"""Training way of the study -> ``learning.rule`` of :mod:`pclab.train`."""

WAY_LABELS = {"bp": "(a) feed-forward, backprop", "bpti": "(b) PCN, backprop through inference", "pc": "(c) PCN, PC learning"}


# ---------------------------------------------------------------------------------------------- model
def run_config(params: dict[str, Any]):
    """The :class:`pclab.train.RunConfig` of a trial (model, inference, learning, data)."""
    return validate({
        "model": {"kind": "rathjens_wiskott", "complexity": params["complexity"], "latent": params["latent"]},
        "inference": {"steps": params["steps"], "optimizer": "sgd", "lr": params["latent_lr"]},
        "learning": {"rule": WAYS[params["way"]], "optimizer": "adam", "lr": params["lr"], "lam": params["lam"]},
        "data": {"dataset": params["dataset"], "batch_size": params["batch_size"],
                 "train_subset": params["train_subset"], "test_subset": params["test_subset"]},
        "epochs": params["epochs"],
        "seed": params["seed"],
        "eval_inference": True,
    }, source=f"tradeoff trial {params['dataset']} {params['way']} {params['complexity']} d={params['latent']} lam={params['lam']}")


def build_run(params: dict[str, Any], data: tuple[Dataset, Dataset]) -> Run:
    """Model and learning rule of a trial, seeded from ``params["seed"]`` (:func:`pclab.train.prepare`:
    for way (c) the image and label precisions are :func:`pclab.train.networks.hybrid_precisions`)."""
    return prepare(run_config(params), data)


# ----------------------------------------------------------------------------------------------- data
@lru_cache(maxsize=4)
def _full(name: str, split: str) -> Dataset:
    return load(name, split)


def trial_data(params: dict[str, Any]) -> tuple[Dataset, Dataset]:
    """Train and test sets of a trial; subsets are stratified with seed 0, the same for every run."""
    train, test = _full(params["dataset"], "train"), _full(params["dataset"], "test")
    if params["train_subset"] and params["train_subset"] < len(train):
        train = train.subset(params["train_subset"], seed=0)
    if params["test_subset"] and params["test_subset"] < len(test):
        test = test.subset(params["test_subset"], seed=0)
    return train, test


# ------------------------------------------------------------------------------------------- training
def fit(run: Run) -> list[dict[str, float]]:
    """Train ``run`` for ``config.epochs`` epochs; per-epoch mean training metrics.

    Raises :class:`pclab.train.DivergenceError` when a loss or energy stops being finite.
    """
    config = run.config
    history = []
    for epoch in range(config.epochs):
        generator = torch.Generator().manual_seed(config.seed * 1_000_003 + epoch)
        totals: dict[str, float] = {}
        seen = 0
        started = time.perf_counter()
        for images, labels in batches(run.train, config.data.batch_size, shuffle=True, generator=generator):
            metrics = run.rule.step(make_batch(config, images, labels, run.classes))
            bad = [k for k, v in metrics.items() if not math.isfinite(v)]
            if bad:
                raise DivergenceError(f"epoch {epoch + 1}: {bad} not finite; lower lr / latent_lr")
            for k, v in metrics.items():
                totals[k] = totals.get(k, 0.0) + v * len(labels)
            seen += len(labels)
        history.append({"epoch": epoch + 1, "seconds": time.perf_counter() - started,
                        **{f"train_{k}": v / seen for k, v in totals.items()}})
    return history


def latents(run: Run, dataset: Dataset, batch_size: int = 1000) -> torch.Tensor:
    """The latent the trained model uses at test time, ``(N, d)``: ``enc(x)`` for way (a), the
    latent relaxed with only the image clamped for ways (b) and (c)."""
    out = []
    model = run.model
    with torch.no_grad():
        for images, _ in batches(dataset, batch_size, shuffle=False):
            x = prepare_images(run.config, images)
            if run.config.learning.rule == "bp":
                z = model.initial_state({"x": x}, "forward")["z"]
            else:
                z = relax(model, {"x": x}, run.inference).values["z"]
            out.append(z)
    return torch.cat(out)


def reconstructions(run: Run, images: torch.Tensor) -> torch.Tensor:
    """Images ``(n, C, H, W)`` in [0, 1] -> the model's reconstructions from the native latent
    (label not clamped), in [0, 1], same shape."""
    x = prepare_images(run.config, images)
    with torch.no_grad():
        if run.config.learning.rule == "bp":
            values = run.model.initial_state({"x": x}, "forward")
        else:
            values = relax(run.model, {"x": x}, run.inference).values
        mu = run.model.predictions(values)["x"]
    return ((mu + 1.0) / 2.0).clamp(0, 1).reshape(images.shape)


def encode_images(images: torch.Tensor) -> str:
    """Images in [0, 1] -> base64 of their uint8 pixels (compact for JSON records)."""
    pixels = (images.detach().cpu().numpy() * 255.0).round().clip(0, 255).astype(np.uint8)
    return base64.b64encode(pixels.tobytes()).decode()


def decode_images(blob: str, shape: tuple[int, ...]) -> np.ndarray:
    """Inverse of :func:`encode_images`: float array in [0, 1] of ``shape``."""
    return np.frombuffer(base64.b64decode(blob), dtype=np.uint8).reshape(shape).astype(np.float32) / 255.0


def grid_images(test: Dataset, per_class: int = 1) -> torch.Tensor:
    """The fixed test images shown in the reconstruction grid: the first of each class."""
    chosen = []
    for c in range(test.classes):
        idx = torch.nonzero(test.labels == c).flatten()[:per_class]
        chosen.extend(idx.tolist())
    return test.images[chosen]


# ----------------------------------------------------------------------------------------------- trial
def run_trial(params: dict[str, Any]) -> dict[str, Any]:
    """Train and measure one run of the study (a Ray/serial trial function; JSON in, JSON out).

    ``params``: dataset, way (``bp``/``bpti``/``pc``), complexity, latent, lam, seed, epochs,
    batch_size, lr, steps (inference steps ``T``), latent_lr, train_subset, test_subset,
    probe_subset, grid (store reconstructions of the grid images).

    Returns: test_accuracy, recon_mse (native read-out, pixel scale [-1, 1]), their feed-forward
    and relaxed variants, probe_accuracy (linear probe on the latent), probe_mse (fresh decoder on
    the frozen latent), train history, seconds, and optionally the reconstructions.
    """
    started = time.perf_counter()
    torch.manual_seed(params["seed"])
    data = trial_data(params)
    run = build_run(params, data)
    history = fit(run)
    trained = time.perf_counter()
    metrics = evaluate(run)
    probe_train = data[0] if not params.get("probe_subset") else data[0].subset(min(params["probe_subset"], len(data[0])), seed=0)
    z_train, z_test = latents(run, probe_train), latents(run, data[1])
    x_train = prepare_images(run.config, probe_train.images)
    x_test = prepare_images(run.config, data[1].images)
    result: dict[str, Any] = {
        **{k: float(v) for k, v in metrics.items()},
        "probe_accuracy": linear_probe_accuracy(z_train, probe_train.labels, z_test, data[1].labels),
        "probe_mse": decoder_probe_mse(z_train, x_train, z_test, x_test, seed=params["seed"]),
        "latent_std": float(z_test.std(0).mean()),
        "history": history,
        "train_seconds": trained - started,
    }
    if params.get("grid"):
        shown = grid_images(data[1])
        result["grid_shape"] = list(shown.shape)
        result["grid_images"] = encode_images(reconstructions(run, shown))
    result["trial_seconds"] = time.perf_counter() - started
    return result
