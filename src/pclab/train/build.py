"""From a :class:`~pclab.train.config.RunConfig` to objects: model, inference, learning rule, batches."""

from __future__ import annotations

import math
from typing import Any

import torch

from .. import models
from ..core import (
    PCN,
    SGD,
    Adam,
    Backprop,
    BPThroughInference,
    Constant,
    Decaying,
    IncrementalPC,
    Inference,
    LearningRule,
    PCLearning,
    Spiking,
    TaskLoss,
)
from ..core.batchnorm import WeightPhasePCLearning, weight_phase
from ..core.graph import all_finite
from ..data import DataError, Dataset, normalise, one_hot
from .config import ConfigError, InferenceConfig, RunConfig
from .networks import network, parameter_count

TASKS = {
    "mlp": "classify",
    "vgg": "classify",
    "vgg_bn": "classify",
    "generative_mlp": "generate",
    "deconv_generator": "generate",
    "rathjens_wiskott": "hybrid",
}


def task(config: RunConfig) -> str:
    """``classify`` (image -> label), ``generate`` (latent -> image) or ``hybrid`` (both)."""
    return TASKS[config.model.kind]


def build_model(config: RunConfig, image_shape: tuple[int, ...], classes: int) -> PCN:
    """The network of ``config.model`` for images of ``image_shape = (C, H, W)``, on ``config.device``;
    on the CPU a conv model's weights are channels-last (:func:`pclab.models.conv_channels_last`)."""
    m = config.model
    pixels = math.prod(image_shape)
    if m.kind in ("mlp", "generative_mlp"):
        first, last = (0, -1) if m.kind == "mlp" else (-1, 0)
        if m.widths[first] != pixels:
            raise ConfigError(
                f"model.widths[{first}]: must equal the image size of {config.data.dataset} "
                f"({'x'.join(map(str, image_shape))} = {pixels}), got {m.widths[first]}"
            )
        if m.kind == "mlp" and m.widths[last] != classes:
            raise ConfigError(f"model.widths[-1]: must equal the {classes} classes of {config.data.dataset}, got {m.widths[-1]}")
    check_memory(config, image_shape, classes)
    model = network(config.model, config.learning.rule, config.learning.lam, image_shape, classes)
    dtype = torch.float64 if config.dtype == "float64" else torch.float32
    model = model.to(device=config.device, dtype=dtype)
    if torch.device(config.device).type == "cpu":  # oneDNN's layout; the same values (models.conv_channels_last)
        models.conv_channels_last(model)
    return model


def available_memory(device: str) -> int | None:
    """Bytes of memory available for new tensors on ``device``: ``MemAvailable`` of ``/proc/meminfo`` on the
    CPU (Linux), the free memory of a CUDA device; None where unknown."""
    if device.startswith("cuda") and torch.cuda.is_available():
        return int(torch.cuda.mem_get_info(torch.device(device))[0])
    if device == "cpu":
        try:
            with open("/proc/meminfo") as handle:
                for line in handle:
                    if line.startswith("MemAvailable:"):
                        return int(line.split()[1]) * 1024
        except (OSError, ValueError, IndexError):
            return None
    return None


def check_memory(config: RunConfig, image_shape: tuple[int, ...], classes: int) -> None:
    """ConfigError, before anything is allocated, if training the model of ``config`` needs more memory than
    the device has available: its parameters (counted on the meta device) times 4 -- weights, gradients and
    an optimiser's two moments -- at 4 or 8 bytes each. Activations come on top; this is a lower bound."""
    available = available_memory(config.device)
    if available is None:
        return
    count = parameter_count(config.model, config.learning.rule, config.learning.lam, image_shape, classes)
    needed = count * (8 if config.dtype == "float64" else 4) * 4
    if needed > available:
        raise ConfigError(f"model: expected to fit in the {available / 1e9:.3g} GB available on {config.device}, got {count:.3g} parameters "
                          f"needing at least {needed / 1e9:.3g} GB to train (weights, gradients and two optimiser moments)")


def build_inference(config: InferenceConfig) -> Inference:
    """The :class:`~pclab.core.Inference` of an inference config."""
    if config.optimizer == "adam":
        opt = Adam(config.lr)
    else:
        opt = SGD(config.lr, config.momentum if config.optimizer != "sgd" else 0.0, config.optimizer == "nesterov")
    precision = {
        "constant": Constant(),
        "spiking": Spiking(config.alpha),
        "decaying": Decaying(config.decay),
    }[config.precision]
    # the training loop diagnoses a diverging relaxation itself (step, node, failure.json)
    return Inference(config.steps, opt, config.init, precision, config.tolerance, method=config.method, compile=config.compile,
                     check_finite=False, parametrisation=config.parametrisation)


def _fusable(params: list[torch.nn.Parameter]) -> bool:
    """PyTorch's fused (one kernel per step) optimisers apply: floating-point parameters on the CPU
    or CUDA. On a small CPU fused Adam's step is a fraction of the default per-tensor loop's time,
    which on a small MLP is a noticeable part of a PC step."""
    return bool(params) and all(p.dtype.is_floating_point and p.device.type in ("cpu", "cuda") for p in params)


def _scheduled(config: RunConfig) -> bool:
    return not (config.learning.schedule == "constant" and config.learning.warmup_epochs == 0)


def _optimizer(config: RunConfig, model: PCN) -> torch.optim.Optimizer:
    lc = config.learning
    params = list(model.parameters())
    if lc.frozen_layers:
        if lc.frozen_layers >= len(model.edges):
            raise ConfigError(f"learning.frozen_layers: expected fewer than the model's {len(model.edges)} weight layers, got {lc.frozen_layers}")
        frozen = {id(q) for e in model.edges[: lc.frozen_layers] for q in model.edge_modules[e.key].parameters()}
        params = [q for q in params if id(q) not in frozen]
    fused = _fusable(params) or None  # None: PyTorch's default implementation
    lr: float | torch.Tensor = lc.lr
    if config.inference.compile and _scheduled(config):
        # a tensor rate, which the scheduler updates in place: a compiled PC step can then
        # include the optimiser's step without recompiling for every new rate
        lr = torch.tensor(lc.lr, dtype=torch.float64)
    if lc.optimizer == "adam":
        return torch.optim.Adam(params, lr, weight_decay=lc.weight_decay, fused=fused)
    if lc.optimizer == "adamw":
        return torch.optim.AdamW(params, lr, weight_decay=lc.weight_decay, fused=fused)
    return torch.optim.SGD(params, lr, momentum=lc.momentum, weight_decay=lc.weight_decay, fused=fused)


def _scheduler(config: RunConfig, optimizer: torch.optim.Optimizer, steps_per_epoch: int) -> Any:
    lc = config.learning
    if not _scheduled(config):
        return None
    total = max(1, config.epochs * steps_per_epoch)
    warmup = int(lc.warmup_epochs * steps_per_epoch)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if lc.schedule == "cosine":
            progress = (step - warmup) / max(1, total - warmup)
            return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
        return 1.0

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def task_loss(config: RunConfig) -> TaskLoss:
    """The task loss of the backprop rules for this model."""
    kind = task(config)
    if kind == "hybrid":
        return TaskLoss.mix(config.learning.lam)
    if kind == "generate":
        return TaskLoss(reconstruct={"x": 1.0})
    if config.model.output == "ce":
        return TaskLoss(classify={"y": 1.0})
    return TaskLoss(reconstruct={"y": 1.0})


def inputs(config: RunConfig) -> tuple[str, ...]:
    """The nodes clamped at test time and by the backprop rules (the image)."""
    return ("x",)


def build_rule(config: RunConfig, model: PCN, steps_per_epoch: int) -> LearningRule:
    """The learning rule of ``config.learning`` on ``model``."""
    lc = config.learning
    optimizer = _optimizer(config, model)
    scheduler = _scheduler(config, optimizer, steps_per_epoch)
    inference = build_inference(config.inference)
    if lc.rule == "bp" and task(config) == "generate":
        raise ConfigError("learning.rule: 'bp' needs a feed-forward path from the image; a generative model has none "
                          "(use 'pc' or 'bp-through-inference')")
    if lc.rule == "pc":
        # a vgg_bn's running statistics must move in the weight phase only, never during relaxation
        pc = WeightPhasePCLearning if config.model.kind == "vgg_bn" else PCLearning
        return pc(model, inference, optimizer, scheduler, forward_update=lc.forward_update)
    if lc.rule == "ipc":
        return IncrementalPC(model, inference, optimizer, scheduler)
    if lc.rule == "bp-through-inference":
        return BPThroughInference(model, inference, optimizer, task_loss(config), inputs(config), scheduler, lc.truncate, lc.checkpoint)
    bp = _WeightPhaseBackprop if config.model.kind == "vgg_bn" else Backprop
    return bp(model, optimizer, task_loss(config), inputs(config), scheduler)


class _WeightPhaseBackprop(Backprop):
    """:class:`Backprop` on a network with :class:`~pclab.core.batchnorm.PhasedBatchNorm`: its one
    training forward pass is the weight phase, so running statistics move once per batch, as an
    ordinary BatchNorm's would (otherwise they would never move and evaluation would use the initial ones)."""

    def objective(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        with weight_phase(self.model):
            return super().objective(batch)


def prepare_images(config: RunConfig, images: torch.Tensor) -> torch.Tensor:
    """Images ``(N, C, H, W)`` in [0, 1] -> the model's input layout and range."""
    kind = config.model.kind
    if kind == "rathjens_wiskott":
        images = normalise(images, "symmetric")
    if kind in ("mlp", "generative_mlp", "rathjens_wiskott"):
        images = images.reshape(images.shape[0], -1)
    dtype = torch.float64 if config.dtype == "float64" else torch.float32
    return images.to(device=config.device, dtype=dtype)


def make_batch(config: RunConfig, images: torch.Tensor, labels: torch.Tensor, classes: int) -> dict[str, torch.Tensor]:
    """The batch a learning rule takes: prepared images as ``x``; one-hot labels as ``y`` for PC
    rules, class indices for the backprop rules' cross-entropy (one-hot for squared error)."""
    if not all_finite(images):
        bad = int((~torch.isfinite(images.reshape(len(images), -1)).all(dim=1)).sum())
        raise DataError(f"make_batch: images must be finite, got NaN/Inf in {bad} of {len(images)} samples")
    x = prepare_images(config, images)
    kind = task(config)
    if kind == "generate":
        return {"x": x}
    pc_rule = config.learning.rule in ("pc", "ipc")
    if pc_rule or (kind == "classify" and config.model.output == "gaussian"):
        return {"x": x, "y": one_hot(labels, classes).to(device=x.device, dtype=x.dtype)}
    return {"x": x, "y": labels.to(x.device)}


def data_shape(dataset: Dataset) -> tuple[tuple[int, int, int], int]:
    """``((C, H, W), classes)`` of a dataset."""
    return tuple(dataset.images.shape[1:]), dataset.classes  # type: ignore[return-value]
