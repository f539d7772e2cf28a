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

import math
import time
from pathlib import Path
from typing import Any

import torch

from ... import models
from ...core import PCN, Inference
from ...data import Dataset, load
from ...io import save_torch
from ...sweep import trial_id
from ...train import Run, build_inference, load_run, prepare, prepare_images, train, validate
from ...train.config import InferenceConfig, RunConfig, to_dict
from .inversion import Clarity, InversionConfig, clarity_metrics, initial_input, invert
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
    return out / "runs" / f"{config.get('name') or 'run'}-{trial_id(config)}"


def obtain_model(params: dict[str, Any], out: Path) -> tuple[RunConfig, Run, str | None]:
    """The model of a ``"model"`` trial and the run directory it came from.

    ``params["source"]`` is ``{"train": RunConfig dict}`` (trained by this trial into
    ``out/runs/<name>-<id>``, or loaded if that run already finished) or ``{"run": path}``;
    ``params["trained"] = False`` gives the same architecture freshly initialised from its seed.
    """
    source = params["source"]
    if "run" in source:
        path = Path(source["run"])
        config, run = load_run(path)
        if not params["trained"]:
            run = prepare(config)
        return config, run, str(path)
    config = validate(source["train"], "clarity model")
    if not params["trained"]:
        return config, prepare(config), None
    path = _run_dir(out, source["train"])
    if not (path / "results.json").exists():
        train(config, path, progress=False)
    _, run = load_run(path)
    return config, run, str(path)


def test_images(config: RunConfig, count: int, seed: int) -> torch.Tensor:
    """``count`` stratified test images ``(count, C, H, W)`` in [0, 1] of the model's data set."""
    test: Dataset = load(config.data.dataset, "test", root=config.data.root)
    return test.subset(min(count, len(test)), seed=seed).images


def _summary(metrics: Clarity) -> dict[str, list[float]]:
    return {k: [round(v, 6) for v in vals] for k, vals in metrics.as_lists().items()}


# ---------------------------------------------------------------------------- one model
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
    """Reconstruct ``images`` from every layer of ``model`` by both routes.

    Args:
        config: the model's run configuration (input layout and scale).
        model: the network (its parameters are frozen here).
        inference: the model's own relaxation (gives the layer values the PCN route clamps).
        images: ``(N, C, H, W)`` unit-scale test images.
        inversion: the gradient route's settings.
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
    # a model without a feed-forward path (generative) is read at its generative layers
    routes_layers = depths or generative_layers(model)
    relaxed = represent(model, x, inference) if native is not None else None
    rows: list[dict[str, Any]] = []
    pictures: dict[str, dict[str, torch.Tensor]] = {"gradient": {}, "pcn": {}}
    for layer, depth in routes_layers.items():
        embed = forward_embedding(model, layer) if layer in depths else relaxed_embedding(model, layer, inference)
        width = math.prod(model.nodes[layer].shape)
        base = {"layer": layer, "depth": depth, "width": width, "input_size": math.prod(x.shape[1:])}

        def measure(recon: torch.Tensor, route: str, seconds: float) -> None:  # called within this iteration only
            metrics = clarity_metrics(embed, x, recon, to_unit, perturbation_std, bounds, torch.Generator().manual_seed(seed + 1))
            rows.append({**base, "route": route, "seconds": round(seconds, 3), **_summary(metrics)})
            pictures[route][layer] = to_unit(recon).clamp(0, 1).to(torch.float16)

        if layer in depths:
            t0 = time.perf_counter()
            with torch.no_grad():
                target = embed(x)
            recon = invert(embed, target, start, inversion, pixel_range=bounds, image_shape=shape)  # type: ignore[arg-type]
            measure(recon, "gradient", time.perf_counter() - t0)
        if native is not None and relaxed is not None:
            t0 = time.perf_counter()
            recon = native_reconstruction(model, layer, relaxed[layer], start, build_inference(native))
            measure(recon, "pcn", time.perf_counter() - t0)
    return rows, pictures


def model_trial(params: dict[str, Any], out: Path) -> dict[str, Any]:
    """A ``"model"`` trial (see the module docstring); returns per-layer metrics and the model's facts."""
    started, cpu = time.perf_counter(), time.process_time()
    config, run, path = obtain_model(params, out)
    torch.manual_seed(params["seed"])
    images = test_images(config, params["images"], params["seed"])
    native = InferenceConfig(**params["native"]) if params.get("native") else None
    inversion = InversionConfig.from_dict(params["inversion"])
    rows, pictures = reconstruct_layers(config, run.model, run.inference, images, inversion, native,
                                        params["perturbation_std"], params["seed"])
    save_torch(out / "artifacts" / trial_id(params) / "reconstructions.pt",
               {"targets": images.to(torch.float16), "labels": params.get("label"), **pictures})
    accuracy = _accuracy(run)
    return {
        "model": params["label"],
        "arch": params.get("arch", config.model.kind),
        "rule": config.learning.rule if params["trained"] else "untrained",
        "training_rule": config.learning.rule,
        "trained": params["trained"],
        "kind": config.model.kind,
        "dataset": config.data.dataset,
        "run_dir": path,
        "generative_path": has_generative_path(run.model),
        "layers": rows,
        "test_accuracy": accuracy,
        "epochs": config.epochs,
        "train_subset": config.data.train_subset,
        "config": to_dict(config),
        "amortiser_change": _amortiser_change(config, run) if params["trained"] else None,
        "trial_seconds": time.perf_counter() - started,
        "cpu_seconds": time.process_time() - cpu,
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


def _accuracy(run: Run) -> float | None:
    """Feed-forward test accuracy of a classifier or hybrid (``None`` for a generative model)."""
    if "y" not in run.model.nodes:
        return None
    from ...core import classify

    test = run.test
    correct = 0
    for start in range(0, len(test), 1000):
        x = prepare_images(run.config, test.images[start:start + 1000])
        logits = classify(run.model, x)
        correct += int((logits.argmax(1) == test.labels[start:start + 1000]).sum())
    return correct / len(test)


# ---------------------------------------------------------------------------- width test
def width_trial(params: dict[str, Any], out: Path) -> dict[str, Any]:
    """A ``"width"`` trial: invert the hidden layer of an untrained chain ``[pixels, width, classes]``."""
    cpu = time.process_time()
    dataset = load(params["dataset"], "test")
    images = dataset.subset(min(params["images"], len(dataset)), seed=params["seed"]).images
    pixels = math.prod(images.shape[1:])
    torch.manual_seed(params["seed"])
    config = validate({"model": {"kind": "mlp", "widths": [pixels, params["width"], dataset.classes],
                                 "activation": params["activation"]},
                       "data": {"dataset": params["dataset"]}, "seed": params["seed"]})
    torch.manual_seed(params["seed"])
    net = models.mlp(config.model.widths, config.model.activation)
    native = InferenceConfig(**params["native"]) if params.get("native") else None
    rows, _ = reconstruct_layers(config, net, build_inference(config.inference), images, InversionConfig.from_dict(params["inversion"]), native,
                                 params["perturbation_std"], params["seed"])
    return {"layers": [r for r in rows if r["layer"] == "h1"], "cpu_seconds": time.process_time() - cpu}


def run_trial(params: dict[str, Any], out: str) -> dict[str, Any]:
    """Dispatch one trial by ``params["kind"]`` (module level, so Ray workers can import it)."""
    if params["kind"] == "model":
        return model_trial(params, Path(out))
    if params["kind"] == "width":
        return width_trial(params, Path(out))
    raise ValueError(f"unknown clarity trial kind {params['kind']!r}; expected 'model' or 'width'")


__all__ = ["IMAGE", "embedding_layers", "model_trial", "obtain_model", "pixel_range", "reconstruct_layers",
           "run_trial", "test_images", "unit_converter", "width_trial"]
