"""The clarity study's trials: functions of a JSON-able parameter dict, run in Ray workers.

Two kinds (``params["kind"]``):

* ``"model"`` -- one model (trained by the trial, loaded from a run directory, or the untrained
  architecture of either): reconstruct test images from every layer, by gradient descent on the
  input and by the PCN's own relaxation; per-layer, per-image metrics in the result, the images in
  ``out/artifacts/<trial_id>/reconstructions.pt``.
* ``"width"`` -- the width test: an untrained one-hidden-layer chain ``[pixels, width, classes]``;
  reconstruct from the hidden layer.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from ...core import PCN, Inference
from ...data import Dataset, batches, load
from ...data.dataset import stratified_indices
from ...io import load_torch, save_torch
from ...sweep import trial_id
from ...train import Run, build_inference, load_run, prepare, prepare_images, validate
from ...train.build import make_batch, task
from ...train.config import InferenceConfig, RunConfig, to_dict
from ...train.loop import evaluate, load_data
from .inversion import Clarity, InversionConfig, clarity_metrics, initial_input, invert, procedure_config
from .pcn import (
    IMAGE,
    embedding_layers,
    forward_embedding,
    generative_layers,
    has_generative_path,
    layer_depths,
    native_reconstruction,
    relaxed_embedding,
    represent,
)


# ---------------------------------------------------------------------------- scales
def pixel_range(config: RunConfig) -> tuple[float, float]:
    """``(lo, hi)``: the model-scale values of unit pixels 0 and 1 (``prepare_images`` is affine)."""
    probe = torch.stack([torch.zeros(1, 1, 1), torch.ones(1, 1, 1)])
    lo, hi = prepare_images(config, probe).reshape(2).tolist()
    return float(lo), float(hi)


def unit_converter(config: RunConfig, image_shape: tuple[int, int, int]):
    """Map model-scale inputs ``(N, *input)`` to unit-scale images ``(N, C, H, W)`` in [0, 1] pixels."""
    lo, hi = pixel_range(config)

    def to_unit(a: torch.Tensor) -> torch.Tensor:
        return ((a - lo) / (hi - lo)).reshape(len(a), *image_shape).float()

    return to_unit


# ---------------------------------------------------------------------------- models
def _run_dir(out: Path, config: dict[str, Any]) -> Path:
    return out / "models" / f"{config.get('name') or 'run'}-{trial_id(config)}"


def split_validation(train: Dataset, fraction: float, seed: int) -> tuple[Dataset, Dataset]:
    """``(fit, validation)``: a stratified ``fraction`` of ``train`` held out (deterministic in ``seed``)."""
    if not 0 < fraction < 1:
        raise ValueError(f"validation fraction: expected a number in (0, 1), got {fraction!r}")
    held = max(1, round(fraction * len(train)))
    index = torch.from_numpy(stratified_indices(train.labels.numpy(), held, seed))
    keep = torch.ones(len(train), dtype=torch.bool)
    keep[index] = False

    def part(mask: torch.Tensor, name: str) -> Dataset:
        return replace(train, images=train.images[mask], labels=train.labels[mask],
                       description=f"{train.description}; {name} part of a stratified {fraction:g} validation split (seed {seed})")

    return part(keep, "fit"), part(~keep, "validation")


def selection_metric(config: RunConfig) -> tuple[str, bool]:
    """The validation metric a model is selected by and whether higher is better: accuracy for
    classifiers and hybrids (their native read-out), image MSE for generative models."""
    return ("test_accuracy", True) if task(config) in ("classify", "hybrid") else ("recon_mse", False)


def train_to_best(config: RunConfig, validation: float, path: Path | None = None) -> tuple[Run, dict[str, Any]]:
    """Train ``config`` for ``config.epochs`` epochs on the training split minus a validation part and
    keep the weights of the epoch with the best validation metric (:func:`selection_metric`).

    Every rule gets the same budget (epochs, batches, data order); nothing forces equal accuracies.
    With ``path``, the selected weights and the history are kept in ``path/best.pt`` and reused.

    Returns:
        ``(run, info)``: the run holds the selected weights and the *test* split; ``info`` has
        ``best_epoch``, ``validation`` (the metric at that epoch), ``metric`` and per-epoch ``history``.
    """
    train_set, test_set = load_data(config)
    fit, held = split_validation(train_set, validation, config.seed)
    run = prepare(config, (fit, held))
    metric, higher = selection_metric(config)
    cached = path / "best.pt" if path is not None else None
    if cached is not None and cached.exists():
        state = load_torch(cached)
        run.model.load_state_dict(state["model"])
        return replace(run, test=test_set), state["info"]
    history: list[dict[str, float]] = []
    best: tuple[float, int, dict[str, torch.Tensor]] | None = None
    for epoch in range(config.epochs):
        generator = torch.Generator().manual_seed(config.seed * 1_000_003 + epoch)
        torch.manual_seed(config.seed * 1_000_003 + epoch)
        for images, labels in batches(fit, config.data.batch_size, shuffle=True, generator=generator):
            metrics = run.rule.step(make_batch(config, images, labels, run.classes))
            bad = {k: v for k, v in metrics.items() if not math.isfinite(v) or abs(v) > config.max_energy}
            if bad:
                raise FloatingPointError(f"training {config.name or config.model.kind} diverged in epoch {epoch + 1}: {bad}")
        score = evaluate(run, held)[metric]
        history.append({"epoch": epoch + 1, f"validation_{metric}": score})
        if best is None or (score > best[0] if higher else score < best[0]):
            best = (score, epoch + 1, copy.deepcopy(run.model.state_dict()))
    assert best is not None
    run.model.load_state_dict(best[2])
    info = {"best_epoch": best[1], "validation": best[0], "metric": metric, "history": history,
            "fit_size": len(fit), "validation_size": len(held)}
    if cached is not None:
        save_torch(cached, {"model": best[2], "info": info})
    return replace(run, test=test_set), info


def obtain_model(params: dict[str, Any], out: Path) -> tuple[RunConfig, Run, str | None, dict[str, Any] | None]:
    """The model of a ``"model"`` trial, the run directory it came from and how it was selected.

    ``params["source"]`` is ``{"train": RunConfig dict}`` (trained by this trial to its best
    validation epoch, :func:`train_to_best`, kept in ``out/models/<name>-<id>/best.pt``) or
    ``{"run": path}`` (a finished pclab run, its last epoch); ``params["trained"] = False`` gives the
    same architecture freshly initialised from its seed.
    """
    source = params["source"]
    if "run" in source:
        path = Path(source["run"])
        config, run = load_run(path)
        if not params["trained"]:
            run = prepare(config)
        return config, run, str(path), None
    config = validate(source["train"], "clarity model")
    if not params["trained"]:
        return config, prepare(config), None, None
    path = _run_dir(out, source["train"])
    path.mkdir(parents=True, exist_ok=True)
    run, info = train_to_best(config, params.get("validation", 0.1), path)
    return config, run, str(path), info


def test_images(config: RunConfig, count: int, seed: int) -> torch.Tensor:
    """``count`` stratified test images ``(count, C, H, W)`` in [0, 1] of the model's data set."""
    test: Dataset = load(config.data.dataset, "test", root=config.data.root)
    return test.subset(min(count, len(test)), seed=seed).images


def _summary(metrics: Clarity) -> dict[str, list[float]]:
    return {k: [round(v, 6) for v in vals] for k, vals in metrics.as_lists().items()}


# ---------------------------------------------------------------------------- one model
def is_convolutional(model: PCN) -> bool:
    """Whether any module of the model is a convolution (Badger's procedure then blurs)."""
    return any(isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d)) for m in model.modules())


def reconstruct_layers(
    config: RunConfig,
    model: PCN,
    inference: Inference,
    images: torch.Tensor,
    inversion: InversionConfig,
    native: InferenceConfig | None,
    perturbation_std: float,
    seed: int,
) -> tuple[list[dict[str, Any]], dict[str, dict[str, torch.Tensor]]]:
    """Reconstruct ``images`` from every layer of ``model`` by every route that applies.

    Routes: ``"gradient"`` -- gradient descent on the input against the layer's feed-forward value
    (layers with a feed-forward path); ``"gradient-relaxed"`` -- gradient descent on the input against
    the layer's value after the model's own relaxation with the image clamped, differentiated through
    the relaxation (layers on the image's generative path: the hybrid's latent, a generative chain's
    layers); ``"pcn"`` -- the PCN's own reconstruction with the layer clamped (:func:`native_reconstruction`).

    Args:
        config: the model's run configuration (input layout and scale).
        model: the network (its parameters are frozen here).
        inference: the model's own relaxation (gives the layer values the PCN route clamps).
        images: ``(N, C, H, W)`` unit-scale test images.
        inversion: the gradient routes' settings.
        native: the PCN route's relaxation (``None``: skip it).
        perturbation_std: input perturbation of ``m_r``, unit scale.
        seed: seed of the start noise and the perturbation (the same for every layer and model).

    Returns:
        ``(rows, pictures)``: one row per (layer, route) with per-image metric lists; and
        ``route -> layer -> (N, C, H, W)`` unit-scale reconstructions.
    """
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    shape = tuple(images.shape[1:])
    to_unit = unit_converter(config, shape)  # type: ignore[arg-type]
    bounds = pixel_range(config)
    x = prepare_images(config, images)
    start = initial_input(tuple(x.shape), inversion, bounds, torch.Generator().manual_seed(seed), x.dtype)
    depths = layer_depths(model)
    generative = generative_layers(model) if has_generative_path(model) else {}
    layers = {**depths, **{n: d for n, d in generative.items() if n not in depths}}
    relaxed = represent(model, x, inference) if native is not None else None
    rows: list[dict[str, Any]] = []
    pictures: dict[str, dict[str, torch.Tensor]] = {"gradient": {}, "gradient-relaxed": {}, "pcn": {}}
    for layer, depth in layers.items():
        feedforward = forward_embedding(model, layer) if layer in depths else None
        relaxed_map = relaxed_embedding(model, layer, inference, differentiable=True) if layer in generative else None
        width = math.prod(model.nodes[layer].shape)
        base = {"layer": layer, "depth": depth, "width": width, "input_size": math.prod(x.shape[1:])}

        def measure(recon: torch.Tensor, route: str, seconds: float, embed) -> None:  # called within this iteration only
            metrics = clarity_metrics(embed, x, recon, to_unit, perturbation_std, bounds, torch.Generator().manual_seed(seed + 1))
            rows.append({**base, "route": route, "seconds": round(seconds, 3), **_summary(metrics)})
            pictures[route][layer] = to_unit(recon).clamp(0, 1).to(torch.float16)

        for route, embed in (("gradient", feedforward), ("gradient-relaxed", relaxed_map)):
            if embed is None:
                continue
            t0 = time.perf_counter()
            with torch.no_grad():
                target = embed(x)
            recon = invert(embed, target, start, inversion, pixel_range=bounds, image_shape=shape)  # type: ignore[arg-type]
            measure(recon, route, time.perf_counter() - t0, embed)
        if native is not None and relaxed is not None:
            t0 = time.perf_counter()
            recon = native_reconstruction(model, layer, relaxed[layer], start, build_inference(native))
            measure(recon, "pcn", time.perf_counter() - t0, relaxed_map or feedforward)
    return rows, pictures


def model_trial(params: dict[str, Any], out: Path) -> dict[str, Any]:
    """A ``"model"`` trial (see the module docstring); returns per-layer metrics and the model's facts."""
    started, cpu = time.perf_counter(), time.process_time()
    config, run, path, selection = obtain_model(params, out)
    torch.manual_seed(params["seed"])
    images = test_images(config, params["images"], params["seed"])
    native = InferenceConfig(**params["native"]) if params.get("native") else None
    procedure = params.get("procedure", "pclab")
    inversion = procedure_config(procedure, InversionConfig.from_dict(params["inversion"]), is_convolutional(run.model))
    train_cpu = time.process_time() - cpu
    rows, pictures = reconstruct_layers(config, run.model, run.inference, images, inversion, native,
                                        params["perturbation_std"], params["seed"])
    save_torch(out / "artifacts" / trial_id(params) / "reconstructions.pt",
               {"targets": images.to(torch.float16), "labels": params.get("label"), **pictures})
    metrics = evaluate(run)
    return {
        "model": params["label"],
        "arch": params.get("arch", config.model.kind),
        "rule": params.get("rule", config.learning.rule) if params["trained"] else "untrained",
        "training_rule": config.learning.rule,
        "trained": params["trained"],
        "kind": config.model.kind,
        "dataset": config.data.dataset,
        "run_dir": path,
        "generative_path": has_generative_path(run.model),
        "layers": [{**r, "procedure": procedure} for r in rows],
        "procedure": procedure,
        "inversion": inversion.to_dict(),
        "test_accuracy": metrics.get("test_accuracy"),
        "recon_mse": metrics.get("recon_mse"),
        "selection": selection,
        "epochs": config.epochs,
        "train_subset": config.data.train_subset,
        "config": to_dict(config),
        "amortiser_change": _amortiser_change(config, run) if params["trained"] else None,
        "trial_seconds": time.perf_counter() - started,
        "cpu_seconds": time.process_time() - cpu,
        "train_cpu_seconds": train_cpu,
    }


def _amortiser_change(config: RunConfig, run: Run) -> float | None:
    """Largest absolute change of an amortiser (encoder) weight from its initial value (``None``: no amortiser).

    PC learning trains amortisers to predict the relaxed latent (:meth:`pclab.core.PCN.amortiser_loss`); a rule
    that trains no amortiser leaves the feed-forward embedding of an amortised latent the untrained encoder's.
    """
    if not run.model.amortisers:
        return None
    initial = prepare(config).model.amortiser_modules.state_dict()
    trained = run.model.amortiser_modules.state_dict()
    return max(float((trained[k] - initial[k]).abs().max()) for k in trained)


# ---------------------------------------------------------------------------- width test
def width_trial(params: dict[str, Any], out: Path) -> dict[str, Any]:
    """A ``"width"`` trial: invert the hidden layer of a chain ``[pixels, width, classes]``, untrained
    (``params["rule"] == "untrained"``) or trained by ``params["train"]`` to its best validation epoch,
    with the procedure ``params["procedure"]``."""
    cpu = time.process_time()
    config = validate(params["train"], f"clarity width test {params['width']}")
    selection = None
    if params["rule"] == "untrained":
        run = prepare(config)
    else:
        run, selection = train_to_best(config, params.get("validation", 0.1))
    train_cpu = time.process_time() - cpu
    images = test_images(config, params["images"], params["seed"])
    native = InferenceConfig(**params["native"]) if params.get("native") else None
    layers, inversions = [], {}
    for i, procedure in enumerate(params["procedures"]):
        inversion = procedure_config(procedure, InversionConfig.from_dict(params["inversion"]), is_convolutional(run.model))
        # the PCN route does not depend on the procedure: run it with the first one only
        rows, _ = reconstruct_layers(config, run.model, run.inference, images, inversion, native if i == 0 else None,
                                     params["perturbation_std"], params["seed"])
        layers += [{**r, "procedure": procedure} for r in rows if r["layer"] == "h1"]
        inversions[procedure] = inversion.to_dict()
    accuracy = evaluate(run).get("test_accuracy") if selection is not None else None
    return {"layers": layers, "cpu_seconds": time.process_time() - cpu, "train_cpu_seconds": train_cpu,
            "selection": selection, "test_accuracy": accuracy, "inversions": inversions}


def run_trial(params: dict[str, Any], out: str) -> dict[str, Any]:
    """Dispatch one trial by ``params["kind"]`` (module level, so Ray workers can import it)."""
    if params["kind"] == "model":
        return model_trial(params, Path(out))
    if params["kind"] == "width":
        return width_trial(params, Path(out))
    raise ValueError(f"unknown clarity trial kind {params['kind']!r}; expected 'model' or 'width'")


__all__ = ["IMAGE", "embedding_layers", "is_convolutional", "model_trial", "obtain_model", "pixel_range", "reconstruct_layers",
           "selection_metric", "split_validation", "train_to_best",
           "run_trial", "test_images", "unit_converter", "width_trial"]
