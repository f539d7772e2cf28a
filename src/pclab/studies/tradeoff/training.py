"""One run of the trade-off study: build the hybrid model, train it one of three ways, measure it.

The three ways share the Rathjens-Wiskott family (:func:`pclab.models.rathjens_wiskott`), as a
PCN whose only value nodes are image ``x``, latent ``z`` and label ``y`` (:func:`bottleneck`):

* ``"bp"``   -- (a) their feed-forward model: ``z = enc(x)``, loss ``(1 - lam) MSE + lam CE`` on
  ``dec(z)`` and ``head(z)``, backprop (:class:`pclab.core.Backprop`).
* ``"bpti"`` -- (b) the hybrid PCN: ``z`` starts at ``enc(x)`` and relaxes ``T`` steps on the image
  energy (label released); the same loss on the relaxed state, backpropagated through the unrolled
  relaxation (:class:`pclab.core.BPThroughInference`).
* ``"pc"``   -- (c) the hybrid PCN trained by PC learning: image and label clamped, relax, one
  local weight step; the encoder (an amortiser, outside the energy) learns to predict the relaxed
  latent (:class:`AmortisedPCLearning`).

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

from ... import models
from torch import nn

from ...core import PCN, CrossEntropy, Dense, Gaussian, Node, PCLearning, Relaxed, relax
from ...data import Dataset, batches, load
from ...train import DivergenceError, Run, build_inference, build_rule, evaluate, make_batch, prepare_images, validate
from .probes import decoder_probe_mse, linear_probe_accuracy

WAYS = {"bp": "bp", "bpti": "bp-through-inference", "pc": "pc"}
"""Training way of the study -> ``learning.rule`` of :mod:`pclab.train`."""

WAY_LABELS = {"bp": "(a) feed-forward, backprop", "bpti": "(b) PCN, backprop through inference", "pc": "(c) PCN, PC learning"}


# ---------------------------------------------------------------------------------------------- model
class AmortisedPCLearning(PCLearning):
    """PC learning of a hybrid PCN whose latent is initialised by an amortiser (the encoder).

    The edges learn the usual local rule, ``dE/dtheta`` at the relaxed state. The amortiser is
    outside the energy, so plain PC learning never changes it; here it descends its own local
    energy ``1/2 ||z* - enc(x)||^2`` (batch mean), ``z*`` the relaxed latent (amortised inference
    as in hybrid predictive coding). Without this the encoder would stay at its random
    initialisation and only the relaxation would carry information from the image into ``z``.
    """

    def amortiser_energy(self, relaxed: Relaxed) -> torch.Tensor:
        """``mean_batch 1/2 ||z* - amortiser(source)||^2`` summed over the amortised nodes."""
        total = None
        for target, edge in self.model.amortisers.items():
            guess = self.model.amortiser_modules[edge.key](relaxed.values[edge.source].detach())
            term = 0.5 * ((relaxed.values[target].detach() - guess) ** 2).flatten(1).sum(1).mean()
            total = term if total is None else total + term
        assert total is not None, "AmortisedPCLearning needs a model with an amortiser"
        return total

    def step(self, batch):
        relaxed = relax(self.model, batch, self.inference)
        self.optimizer.zero_grad(set_to_none=True)
        energy = self.weight_energy(relaxed)
        amortiser = self.amortiser_energy(relaxed)
        (energy + amortiser).backward()  # disjoint parameters: each gets only its own term
        self._apply()
        return {"energy": float(energy.detach()), "amortiser_energy": float(amortiser.detach())}


class Chain(nn.Module):
    """Dense layers applied in turn, with the composed hand-derived VJP (relaxation's fast path).

    Shapes: input ``(batch, in_features of the first layer)``, output ``(batch, out_features of the
    last)``.
    """

    def __init__(self, layers: list[Dense]):
        super().__init__()
        if not layers or not all(isinstance(layer, Dense) for layer in layers):
            raise TypeError("Chain takes a non-empty list of pclab Dense layers")
        self.layers = nn.ModuleList(layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            z = layer(z)
        return z

    def forward_with_vjp(self, z: torch.Tensor):
        vjps = []
        for layer in self.layers:
            z, vjp = layer.forward_with_vjp(z)
            vjps.append(vjp)

        def back(g: torch.Tensor) -> torch.Tensor:
            for vjp in reversed(vjps):
                g = vjp(g)
            return g

        return z, back


def bottleneck(model: PCN, image_precision: float = 1.0, label_precision: float = 1.0) -> PCN:
    """The hybrid PCN with the latent as its only value node between image and label.

    :func:`pclab.models.rathjens_wiskott` makes every decoder and head layer a value node. Relaxed
    freely, the decoder's hidden nodes (616 units and more for Medium and Large) explain the image
    themselves and carry image information *around* the latent, so reconstructions no longer come
    from ``z``. Here the decoder ``z -> x`` and the head ``z -> y`` are each one edge (a
    :class:`Chain` of the same modules, parameters shared), the encoder stays the amortiser of
    ``z``: nodes ``x`` (Gaussian, ``image_precision``), ``z``, ``y`` (cross-entropy,
    ``label_precision``). For Small the two graphs are identical.
    """
    def chain(target: str) -> Chain:
        layers, node = [], target
        while node != "z":
            (edge,) = model.incoming[node]
            layers.append(model.edge_modules[edge.key])
            node = edge.source
        return Chain(layers[::-1])

    nodes = [Node("x", model.nodes["x"].shape, Gaussian(image_precision)), model.nodes["z"],
             Node("y", model.nodes["y"].shape, CrossEntropy(label_precision))]
    amortiser = model.amortisers["z"]
    return PCN(nodes, [("z", "x", chain("x")), ("z", "y", chain("y"))],
               [(amortiser.source, "z", model.amortiser_modules[amortiser.key])])


def pc_precisions(lam: float, pixels: int, balance: str = "mean") -> tuple[float, float]:
    """``(image, label)`` precisions for PC learning with classification weight ``lam``.

    ``balance="mean"`` (the study's default): the image energy is measured per pixel, so the
    relaxation and learning see ``(1 - lam) * MSE + lam * CE`` -- the very balance of the
    backprop loss of ways (a) and (b): image ``(1 - lam) * 2 / P`` (``P`` pixels), label ``lam``,
    both divided by the larger so the stronger has precision 1 (a common factor only sets the
    latent step size). ``balance="sum"``: :mod:`pclab.train`'s convention, image ``1 - lam`` and
    label ``lam`` on the summed image energy; the image then outweighs the label about ``P / 2``
    to 1 at the same ``lam``.
    """
    if not 0.0 <= lam <= 1.0:
        raise ValueError(f"lam must be in [0, 1], got {lam!r}")
    if balance == "sum":
        return 1.0 - lam, lam
    if balance != "mean":
        raise ValueError(f"balance must be 'mean' or 'sum', got {balance!r}")
    image, label = (1.0 - lam) * 2.0 / pixels, lam
    scale = max(image, label)
    return image / scale, label / scale


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
    }, source=f"tradeoff trial {params}")


def build_run(params: dict[str, Any], data: tuple[Dataset, Dataset]) -> Run:
    """Model and learning rule of a trial, seeded from ``params["seed"]``."""
    config = run_config(params)
    train, test = data
    pixels = math.prod(train.images.shape[1:])
    torch.manual_seed(config.seed)
    layered = models.rathjens_wiskott(params["complexity"], params["latent"], pixels, train.classes)
    precisions = (1.0, 1.0)
    if params["way"] == "pc":
        precisions = pc_precisions(params["lam"], pixels, params.get("pc_balance", "mean"))
    model = bottleneck(layered, *precisions)
    steps_per_epoch = math.ceil(len(train) / config.data.batch_size)
    rule = build_rule(config, model, steps_per_epoch)
    if params["way"] == "pc":
        rule = AmortisedPCLearning(model, rule.inference, rule.optimizer, rule.scheduler)
    return Run(config, train, test, model, rule, build_inference(config.inference))


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
    probe_subset, pc_balance, grid (store reconstructions of the grid images).

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
