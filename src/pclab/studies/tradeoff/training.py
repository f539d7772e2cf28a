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

Relaxation of ways (b) and (c) is chosen on a validation split carved from the training images
(:func:`choose_relaxation`), not by hand: the latent step size and ``T`` of the training-time
relaxation are re-chosen at the start of every epoch on the current model, those of the test-time
relaxation (image clamped, label released) once after training.
"""

from __future__ import annotations

import base64
import dataclasses
import math
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from functools import lru_cache
from typing import Any

import numpy as np
import torch

from ...core import PCN, SGD, Inference, relax
from ...data import Dataset, batches, load, one_hot
from ...data.dataset import stratified_indices
from ...train import DivergenceError, Run, evaluate, hybrid_precisions, make_batch, prepare, prepare_images, validate
from .probes import decoder_probe_mse, linear_probe_accuracy

WAYS = {"bp": "bp", "bpti": "bp-through-inference", "pc": "pc"}
"""Training way of the study -> ``learning.rule`` of :mod:`pclab.train`."""

WAY_LABELS = {"bp": "(a) feed-forward, backprop", "bpti": "(b) PCN, backprop through inference", "pc": "(c) PCN, PC learning"}


def precisions_for(lam: float, image_size: int) -> tuple[float, float]:
    """``(image, label)`` precisions of the hybrid PCN trained by PC learning at ``lam`` (the weight of
    classification) for images of ``image_size`` pixels: the energy then weighs image and label like
    the backprop loss ``(1 - lam) MSE + lam CE``, the stronger of the two with precision 1
    (:func:`pclab.train.hybrid_precisions`)."""
    return hybrid_precisions(lam, image_size)


# ---------------------------------------------------------------------------------------------- model
def run_config(params: dict[str, Any]):
    """The :class:`pclab.train.RunConfig` of a trial (model, inference, learning, data)."""
    return validate({
        "model": {"kind": "rathjens_wiskott", "complexity": params["complexity"], "latent": params["latent"]},
        "inference": {"steps": max(params["relax_steps"]), "optimizer": "sgd", "lr": min(params["relax_step_sizes"])},
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
    """Train and test sets of a trial; subsets are stratified with seed 0, the same for every run.
    With ``params["validation"] = n`` the training set excludes the validation split
    (:func:`validation_split`). The sets are built once per process for each (dataset, validation,
    subsets) and shared by the trials that ask for them again (nothing writes into a data set)."""
    return _splits(params["dataset"], params.get("validation") or 0, params["train_subset"], params["test_subset"])[:2]


@lru_cache(maxsize=4)
def _splits(name: str, validation: int, train_subset: int | None, test_subset: int | None) -> tuple[Dataset, Dataset, Dataset | None]:
    """``(train, test, validation or None)`` of :func:`trial_data` and :func:`trial_validation`."""
    train, test = _full(name, "train"), _full(name, "test")
    held = None
    if validation:
        train, held = validation_split(train, validation)
    if train_subset and train_subset < len(train):
        train = train.subset(train_subset, seed=0)
    if test_subset and test_subset < len(test):
        test = test.subset(test_subset, seed=0)
    return train, test, held


def validation_split(train: Dataset, n: int) -> tuple[Dataset, Dataset]:
    """``(rest, validation)``: a stratified split of ``n`` training examples (seed 0, the same for
    every run) and the remaining ones, disjoint."""
    if not 0 < n < len(train):
        raise ValueError(f"validation: expected 0 < n < {len(train)} training examples, got {n}")
    chosen = np.zeros(len(train), dtype=bool)
    chosen[stratified_indices(train.labels.cpu().numpy(), n, 0)] = True
    pick = {flag: torch.from_numpy(np.flatnonzero(chosen == flag)) for flag in (False, True)}
    rest, validation = (dataclasses.replace(train, images=train.images[pick[flag]], labels=train.labels[pick[flag]],
                                            description=f"{train.description}; {'validation' if flag else 'without validation'} "
                                            f"split of {n} (seed 0)") for flag in (False, True))
    return rest, validation


def trial_validation(params: dict[str, Any]) -> Dataset:
    """The validation split of a trial (``params["validation"]`` examples of the training set)."""
    held = _splits(params["dataset"], params["validation"], params["train_subset"], params["test_subset"])[2]
    if held is None:
        raise ValueError(f"validation: expected a number of training examples > 0, got {params['validation']!r}")
    return held


def mean_image_mse(run: Run) -> float:
    """Test MSE (pixels in [-1, 1]) of predicting every test image by the mean training image: the
    error of the trade-off fronts' fixed reference point."""
    mean = prepare_images(run.config, run.train.images).mean(0)
    return float(((prepare_images(run.config, run.test.images) - mean) ** 2).mean())


# ------------------------------------------------------------------------------------------ relaxation
def _with(inference: Inference, lr: float, steps: int) -> Inference:
    return dataclasses.replace(inference, steps=int(steps), optimizer=SGD(float(lr)))


def choose_relaxation(
    model: PCN,
    clamp: dict[str, torch.Tensor],
    inference: Inference,
    step_sizes: Sequence[float],
    steps: Sequence[int],
    keep: float = 0.9,
) -> dict[str, float]:
    """The latent step size and number of steps ``T`` that lower the energy of ``clamp`` most.

    Step sizes are relative to the largest precision among the clamped nodes' energies (the
    absolute step is ``step_size / precision``, so the choice does not depend on how ``lam``
    scales the energy). Each candidate step size relaxes ``max(steps)`` steps of latent SGD from
    the feed-forward state; the chosen one reaches the lowest finite energy; ``T`` is the smallest
    of ``steps`` that attains ``keep`` of its energy drop. When no candidate lowers the energy
    (e.g. no clamped node has an energy), ``T = 0``: nothing is relaxed.

    Returns: ``lr`` (absolute latent step size), ``steps`` (``T``), ``energy_start``, ``energy_end``
    (batch-mean energy before and after the chosen relaxation).
    """
    precisions = [float(model.nodes[n].energy.precision) for n in clamp if model.nodes[n].energy is not None]
    scale = max(precisions, default=0.0)
    best: dict[str, float] = {"lr": float(min(step_sizes)), "steps": 0, "energy_start": float("nan"), "energy_end": float("nan")}
    lowest = math.inf
    if scale > 0:
        with torch.no_grad():
            for eta in step_sizes:
                lr = float(eta) / scale
                energy = relax(model, clamp, _with(inference, lr, max(steps)), record=True).trajectory.total_energy()
                if not all(math.isfinite(e) for e in energy) or energy[-1] >= energy[0] or energy[-1] >= lowest:
                    continue
                lowest = energy[-1]
                t = min(t for t in steps if energy[0] - energy[t] >= keep * (energy[0] - energy[-1]))
                best = {"lr": lr, "steps": t, "energy_start": energy[0], "energy_end": energy[t]}
    return best


def training_clamp(run: Run, images: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
    """What the way clamps while it relaxes in training: image and label for PC learning, the
    image only for backprop through inference."""
    x = prepare_images(run.config, images)
    if run.config.learning.rule == "pc":
        return {"x": x, "y": one_hot(labels, run.classes).to(dtype=x.dtype)}
    return {"x": x}


def set_relaxation(run: Run, lr: float, steps: int) -> None:
    """Relax ``run`` (learning rule and read-out) with ``steps`` steps of latent SGD at ``lr``."""
    run.inference = _with(run.inference, lr, steps)
    if hasattr(run.rule, "inference"):
        run.rule.inference = run.inference


# ------------------------------------------------------------------------------------------- training
def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """The generator of a run's data order in ``epoch`` (0-based): the permutation
    ``torch.randperm(N, generator=...)`` it draws first is the order of the epoch's examples."""
    return torch.Generator().manual_seed(seed * 1_000_003 + epoch)


def fit(run: Run, validation: Dataset | None = None, step_sizes: Sequence[float] = (), steps: Sequence[int] = (),
        max_batches: int | None = None) -> list[dict[str, float]]:
    """Train ``run`` for ``config.epochs`` epochs; per-epoch mean training metrics.

    Ways (b) and (c) with a ``validation`` set re-choose their training relaxation at the start of
    every epoch (:func:`choose_relaxation` over ``step_sizes`` x ``steps`` on the validation images,
    clamped as in training); the history records the choice (``relax_lr``, ``relax_steps``).

    ``max_batches`` ends every epoch after that many batches (a timed slice of a run, for
    :mod:`pclab.bench.study`); the history then records ``batches``, the number trained.

    Raises :class:`pclab.train.DivergenceError` when a loss or energy stops being finite.
    """
    config = run.config
    history = []
    for epoch in range(config.epochs):
        chosen: dict[str, float] = {}
        if validation is not None and config.learning.rule != "bp":
            choice = choose_relaxation(run.model, training_clamp(run, validation.images, validation.labels), run.inference, step_sizes, steps)
            if choice["steps"] == 0:  # no candidate lowered the energy: relax the fewest steps
                choice = {**choice, "steps": min(steps)}
            set_relaxation(run, choice["lr"], choice["steps"])
            chosen = {"relax_lr": choice["lr"], "relax_steps": choice["steps"]}
        generator = epoch_generator(config.seed, epoch)
        totals: dict[str, float] = {}
        seen = count = 0
        started, cpu = time.perf_counter(), time.process_time()
        for images, labels in batches(run.train, config.data.batch_size, shuffle=True, generator=generator):
            if max_batches is not None and count >= max_batches:
                break
            count += 1
            metrics = run.rule.step(make_batch(config, images, labels, run.classes))
            bad = [k for k, v in metrics.items() if not math.isfinite(v)]
            if bad:
                raise DivergenceError(f"epoch {epoch + 1}: {bad} not finite; lower lr / relax_step_sizes")
            for k, v in metrics.items():
                totals[k] = totals.get(k, 0.0) + v * len(labels)
            seen += len(labels)
        history.append({"epoch": epoch + 1, "seconds": time.perf_counter() - started, "cpu_seconds": time.process_time() - cpu, **chosen,
                        **{f"train_{k}": v / seen for k, v in totals.items()}})
        if max_batches is not None:
            history[-1]["batches"] = count
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
def relaxation_effect(run: Run, dataset: Dataset, batch_size: int = 1000) -> dict[str, float]:
    """What the test-time relaxation (image clamped, label released) does on ``dataset``:
    ``latent_movement`` -- mean over samples of ``||z_T - z_0|| / ||z_0||`` (``z_0 = enc(x)``);
    ``test_energy_start`` / ``test_energy_end`` -- mean image energy before and after;
    ``energy_drop`` -- their relative difference ``(E_0 - E_T) / E_0`` (0: nothing relaxed)."""
    moved, start, end, count = 0.0, 0.0, 0.0, 0
    with torch.no_grad():
        for images, _ in batches(dataset, batch_size, shuffle=False):
            x = prepare_images(run.config, images)
            relaxed = relax(run.model, {"x": x}, run.inference)
            z0, zt = relaxed.initial["z"], relaxed.values["z"]
            moved += float(((zt - z0).norm(dim=1) / z0.norm(dim=1).clamp_min(1e-12)).sum())
            start += float(run.model.energy(relaxed.initial, {"x"})) * len(x)
            end += float(run.model.energy(relaxed.values, {"x"})) * len(x)
            count += len(x)
    start, end = start / count, end / count
    return {"latent_movement": moved / count, "test_energy_start": start, "test_energy_end": end,
            "energy_drop": (start - end) / start if start > 0 else 0.0}


# ----------------------------------------------------------------------------------------------- trial
Phase = Callable[[str], AbstractContextManager[Any]]
"""``phase(name)``: a context manager around one phase of a trial (:func:`run_trial`'s ``phase``)."""


@contextmanager
def untimed(name: str) -> Iterator[None]:
    """The :data:`Phase` that does nothing (a trial run for its result only)."""
    yield


def run_trial(params: dict[str, Any], phase: Phase = untimed, max_batches: int | None = None) -> dict[str, Any]:
    """Train and measure one run of the study (a Ray/serial trial function; JSON in, JSON out).

    ``params``: dataset, way (``bp``/``bpti``/``pc``), complexity, latent, lam, seed, epochs,
    batch_size, lr, validation (size of the validation split carved from the training set),
    relax_step_sizes and relax_steps (the grids :func:`choose_relaxation` chooses from), train_subset,
    test_subset, probe_subset, grid (store reconstructions of the grid images).

    ``phase`` wraps each phase -- ``data``, ``build``, ``train`` and those of :func:`measure` -- (a
    profiler's clock, :mod:`pclab.bench.study`); ``max_batches`` trains a slice of every epoch (see
    :func:`fit`).

    Returns what :func:`measure` returns.
    """
    started, cpu = time.perf_counter(), time.process_time()
    torch.manual_seed(params["seed"])
    with phase("data"):
        data = trial_data(params)
        validation = trial_validation(params)
    with phase("build"):
        run = build_run(params, data)
    with phase("train"):
        history = fit(run, validation, params["relax_step_sizes"], params["relax_steps"], max_batches=max_batches)
    trained = {"train_seconds": time.perf_counter() - started, "train_cpu_seconds": time.process_time() - cpu}
    result = measure(params, run, data, validation, history, phase)
    shown = {k: result.pop(k) for k in ("grid_shape", "grid_images") if k in result}
    result.update(trained)
    result.update(shown)  # the record's fields in their usual order
    result["trial_seconds"] = time.perf_counter() - started
    result["cpu_seconds"] = time.process_time() - cpu  # the run's own CPU time: its cost on a machine shared with others
    return result


def measure(params: dict[str, Any], run: Run, data: tuple[Dataset, Dataset], validation: Dataset, history: list[dict[str, float]],
            phase: Phase = untimed) -> dict[str, Any]:
    """Everything a trained run of the study reports (the record's result, less its times).

    Returns: test_accuracy, recon_mse (native read-out, pixel scale [-1, 1]), their feed-forward
    and relaxed variants, probe_accuracy (linear probe on the latent), probe_mse (fresh decoder on
    the frozen latent), mean_image_mse (the fronts' reference error), for ways (b) and (c) the
    test-time relaxation (relax_lr, relax_steps) and its effect (:func:`relaxation_effect`), the
    train ``history``, and with ``params["grid"]`` the reconstructions of the grid images. Phases:
    ``relaxation`` (ways (b), (c)), ``evaluate``, ``probes``, ``grid``.
    """
    relaxation: dict[str, float] = {}
    if params["way"] != "bp":
        with phase("relaxation"):
            choice = choose_relaxation(run.model, {"x": prepare_images(run.config, validation.images)}, run.inference,
                                       params["relax_step_sizes"], params["relax_steps"])
            set_relaxation(run, choice["lr"], choice["steps"])
            relaxation = {"relax_lr": choice["lr"], "relax_steps": choice["steps"], **relaxation_effect(run, data[1])}
    with phase("evaluate"):
        metrics = evaluate(run)
        mean_mse = mean_image_mse(run)
    with phase("probes"):
        probe_train = data[0] if not params.get("probe_subset") else data[0].subset(min(params["probe_subset"], len(data[0])), seed=0)
        z_train, z_test = latents(run, probe_train), latents(run, data[1])
        x_train = prepare_images(run.config, probe_train.images)
        x_test = prepare_images(run.config, data[1].images)
        probes = {"probe_accuracy": linear_probe_accuracy(z_train, probe_train.labels, z_test, data[1].labels),
                  "probe_mse": decoder_probe_mse(z_train, x_train, z_test, x_test, seed=params["seed"]),
                  "latent_std": float(z_test.std(0).mean())}
    result: dict[str, Any] = {
        **{k: float(v) for k, v in metrics.items()},
        **relaxation,
        "mean_image_mse": mean_mse,
        **probes,
        "history": history,
    }
    if params.get("grid"):
        with phase("grid"):
            shown = grid_images(data[1])
            result["grid_shape"] = list(shown.shape)
            result["grid_images"] = encode_images(reconstructions(run, shown))
    return result
