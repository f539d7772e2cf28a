"""A run config's network, built from its model section: used to build a run and, on PyTorch's meta device,
to count its parameters while validating a config (so :mod:`pclab.train.config` imports this module, and
this module imports nothing of :mod:`pclab.train`)."""

from __future__ import annotations

import math

import torch
from pydantic import BaseModel

from .. import models
from ..core import PCN
from ..models.deep import lecun_init, orthogonal_init, vgg_bn


def hybrid_precisions(lam: float, pixels: int) -> tuple[float, float]:
    """``(image, label)`` precisions that weight a hybrid PCN's energy like the backprop loss
    ``(1 - lam) * MSE + lam * CE``.

    The image energy ``1/2 ||x - mu||^2`` sums over ``P = pixels`` while MSE averages, so the image
    precision is ``(1 - lam) * 2 / P`` against the label's ``lam``; both are divided by the larger,
    so the stronger energy has precision 1 (a common factor only rescales the latent step size).
    ``lam = 0``: no label energy; ``lam = 1``: no image energy.
    """
    if not 0.0 <= lam <= 1.0:
        raise ValueError(f"lam must be in [0, 1], got {lam!r}")
    image, label = (1.0 - lam) * 2.0 / pixels, lam
    scale = max(image, label)
    return image / scale, label / scale


def network(m: BaseModel, rule: str, lam: float, image_shape: tuple[int, ...], classes: int, initialise: bool = True) -> PCN:
    """The bare network of a run config's model section ``m`` (on the current default device, default dtype)
    for learning rule ``rule`` with classification weight ``lam`` (they set a hybrid PCN's precisions);
    ``initialise=False`` skips a custom weight init (when only shapes matter)."""
    pixels = math.prod(image_shape)
    if m.kind == "mlp":
        model = models.mlp(m.widths, m.activation, m.output, m.output_activation)
        if m.init == "lecun" and initialise:
            lecun_init(model)
        elif m.init == "orthogonal" and initialise:
            orthogonal_init(model)
    elif m.kind == "generative_mlp":
        model = models.generative_mlp(m.widths, m.activation)
    elif m.kind == "rathjens_wiskott":
        image_precision, label_precision = 1.0, 1.0
        if rule in ("pc", "ipc"):  # lam enters PC learning through the energy
            image_precision, label_precision = hybrid_precisions(lam, pixels)
        model = models.rathjens_wiskott(m.complexity, m.latent, pixels, classes, image_precision, label_precision, m.layered)
    elif m.kind == "vgg":
        model = models.vgg(m.depth, tuple(image_shape), classes, m.width, m.activation, m.output)
    elif m.kind == "vgg_bn":
        model = vgg_bn(m.depth, tuple(image_shape), classes, m.width, m.activation, m.output)
    else:
        model = models.deconv_generator(m.latent, tuple(image_shape), m.width, m.activation)
    return model


def parameter_count(m: BaseModel, rule: str, lam: float, image_shape: tuple[int, ...], classes: int) -> int:
    """Number of parameters of :func:`network`, counted without allocating them
    (the network is built on PyTorch's ``meta`` device: shapes only)."""
    with torch.device("meta"):
        return sum(p.numel() for p in network(m, rule, lam, image_shape, classes, initialise=False).parameters())
