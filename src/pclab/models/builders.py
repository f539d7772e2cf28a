"""Builders for the PCNs pclab's studies use. Each returns a plain :class:`~pclab.core.PCN`.

Node names follow one convention: ``x`` the image, ``y`` the label, ``z`` a shared latent,
``h1, h2, ...`` hidden layers of a chain, ``d1, ...`` decoder and ``c1, ...`` head layers of a
hybrid model.
"""

from __future__ import annotations

from collections.abc import Sequence
from math import prod

import torch
from torch import nn

from ..core import PCN, CrossEntropy, Dense, Gaussian, Node, Stack
from ..core.layers import activation as activation_fn


def conv_channels_last(model: nn.Module) -> nn.Module:
    """``model``, its 2-D (transposed) convolutions' weights stored channels-last (NHWC), in place;
    a model without such layers is left as it is.

    oneDNN, which runs PyTorch's CPU convolutions, prefers that layout: their outputs then come out
    channels-last too, so a PCN's feed-forward latents, predictions and errors all keep it, and the
    values are those of the default layout up to float rounding. It made the depth study's VGG-BN
    training steps faster on a CPU (most for convolutions with few input channels); not a rule for
    every net: the small 5 x 5 / stride-2 conv PCN of ``pclab bench`` was slower, so measure your
    own. Inputs may stay NCHW."""
    if any(isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)) for m in model.modules()):
        model.to(memory_format=torch.channels_last)
    return model


def _check_widths(widths: Sequence[int], what: str, minimum: int = 2) -> list[int]:
    widths = [int(w) for w in widths]
    if len(widths) < minimum or any(w < 1 for w in widths):
        raise ValueError(f"{what} must be at least {minimum} positive widths, got {list(widths)}")
    return widths


def _output_energy(output: str, precision: float = 1.0):
    if output == "ce":
        return CrossEntropy(precision)
    if output == "gaussian":
        return Gaussian(precision)
    raise ValueError(f"output energy must be 'ce' or 'gaussian', got {output!r}")


def mlp(widths: Sequence[int], activation: str = "tanh", output: str = "gaussian", output_activation: str = "identity") -> PCN:
    """A discriminative chain ``x -> h1 -> ... -> y`` of :class:`Dense` predictions.

    Args:
        widths: ``[input, hidden..., classes]``, e.g. ``[784, 128, 128, 10]``.
        activation: nonlinearity of every hidden prediction (the output prediction is linear).
        output: energy of the label node: ``"gaussian"`` (squared error against a one-hot
            target) or ``"ce"`` (cross-entropy).
        output_activation: nonlinearity of the label prediction (``"sigmoid"`` with a Gaussian
            output: the squared error of a sigmoid read-out).
    """
    widths = _check_widths(widths, "mlp widths")
    names = ["x", *[f"h{i}" for i in range(1, len(widths) - 1)], "y"]
    nodes = [Node(n, (w,)) for n, w in zip(names[:-1], widths[:-1])]
    nodes.append(Node("y", (widths[-1],), _output_energy(output)))
    edges = []
    for i in range(len(widths) - 1):
        act = output_activation if i == len(widths) - 2 else activation
        edges.append((names[i], names[i + 1], Dense(widths[i], widths[i + 1], act)))
    return PCN(nodes, edges)


def generative_mlp(widths: Sequence[int], activation: str = "tanh", output_activation: str = "sigmoid") -> PCN:
    """A generative chain ``z -> h1 -> ... -> x``: the latent at the top predicts the image.

    Args:
        widths: ``[latent, hidden..., image]``, e.g. ``[32, 256, 784]``.
        activation: nonlinearity of the hidden predictions.
        output_activation: nonlinearity of the image prediction (``sigmoid`` for [0, 1] images).
    """
    widths = _check_widths(widths, "generative_mlp widths")
    names = ["z", *[f"h{i}" for i in range(1, len(widths) - 1)], "x"]
    nodes = [Node(n, (w,)) for n, w in zip(names, widths)]
    edges = []
    for i in range(len(widths) - 1):
        act = output_activation if i == len(widths) - 2 else activation
        edges.append((names[i], names[i + 1], Dense(widths[i], widths[i + 1], act)))
    return PCN(nodes, edges)


# Rathjens & Wiskott (2024), fully-connected family on 28x28 images (REFERENCE 4).
RW_ENCODER_HIDDEN = {"small": [], "medium": [616], "large": [716, 684, 616]}
RW_HEAD_HIDDEN = {"small": [], "medium": [12], "large": [64]}


def rathjens_wiskott(
    complexity: str = "small",
    latent: int = 4,
    image: int = 784,
    classes: int = 10,
    image_precision: float = 1.0,
    label_precision: float = 1.0,
    layered: bool = False,
) -> PCN:
    """The hybrid image/latent/label model of Rathjens & Wiskott's fully-connected family.

    Graph: an amortiser (the encoder ``784 -> ... -> d``, ReLU) gives the latent ``z`` its first
    value; the decoder ``z -> x`` (ReLU hidden layers, ``tanh`` on the image, which lives in
    ``[-1, 1]``) mirrors the encoder; the head ``z -> y`` (ReLU hidden layers) gives logits. The
    same object is trained as their feed-forward model (``Backprop``), by backprop through
    inference, or by PC learning.

    By default the latent is the only value node between image and label: decoder and head are
    each one edge (a :class:`~pclab.core.Stack`). With ``layered=True`` every hidden decoder and
    head layer is a value node of its own (``d1..``, ``c1..``); relaxed freely, those hidden
    nodes can explain the image themselves and carry image information *around* the latent, so
    the shared latent is no longer the bottleneck the trade-off question is about.

    Args:
        complexity: ``"small"``, ``"medium"`` or ``"large"``.
        latent: size ``d`` of the shared latent.
        image: flattened image size.
        classes: number of classes.
        image_precision: precision of the image node.
        label_precision: precision of the cross-entropy label node.
        layered: make hidden decoder and head layers value nodes.
    """
    if complexity not in RW_ENCODER_HIDDEN:
        raise ValueError(f"complexity must be one of {sorted(RW_ENCODER_HIDDEN)}, got {complexity!r}")
    if latent < 1:
        raise ValueError(f"latent size must be >= 1, got {latent}")
    enc = [image, *RW_ENCODER_HIDDEN[complexity], latent]
    encoder_layers: list[nn.Module] = []
    for i in range(len(enc) - 1):
        encoder_layers.append(nn.Linear(enc[i], enc[i + 1]))
        if i < len(enc) - 2:
            encoder_layers.append(nn.ReLU())
    dec = enc[::-1]
    head = [latent, *RW_HEAD_HIDDEN[complexity], classes]
    decoder = [Dense(dec[i], dec[i + 1], "tanh" if i == len(dec) - 2 else "relu") for i in range(len(dec) - 1)]
    classifier = [Dense(head[i], head[i + 1], "identity" if i == len(head) - 2 else "relu") for i in range(len(head) - 1)]
    nodes = [Node("x", (image,), Gaussian(image_precision)), Node("z", (latent,))]
    edges: list[tuple[str, str, nn.Module]] = []
    if layered:
        dec_names = ["z", *[f"d{i}" for i in range(1, len(dec) - 1)], "x"]
        head_names = ["z", *[f"c{i}" for i in range(1, len(head) - 1)], "y"]
        nodes += [Node(n, (w,)) for n, w in zip(dec_names[1:-1], dec[1:-1])]
        nodes += [Node(n, (w,)) for n, w in zip(head_names[1:-1], head[1:-1])]
        edges += [(dec_names[i], dec_names[i + 1], layer) for i, layer in enumerate(decoder)]
        edges += [(head_names[i], head_names[i + 1], layer) for i, layer in enumerate(classifier)]
    else:
        edges += [("z", "x", Stack(decoder)), ("z", "y", Stack(classifier))]
    nodes.append(Node("y", (classes,), CrossEntropy(label_precision)))
    return PCN(nodes, edges, amortisers=[("x", "z", nn.Sequential(*encoder_layers))])


class Act(nn.Module):
    """An activation by name (:func:`pclab.core.activation`) as a module, shown by its name."""

    def __init__(self, name: str):
        super().__init__()
        self.name = name
        self.fn = activation_fn(name)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x)

    def extra_repr(self) -> str:
        return self.name


def vgg(
    depth: int = 5,
    image_shape: tuple[int, int, int] = (1, 28, 28),
    classes: int = 10,
    width: int = 32,
    activation: str = "gelu",
    output: str = "ce",
) -> PCN:
    """A VGG-style discriminative conv PCN with ``depth`` weight layers.

    ``depth - 1`` blocks ``conv3x3 -> activation [-> maxpool 2x2]`` (channels double every pooled
    block from ``width``, capped at ``8 * width``; pooling while the feature map is at least 4
    pixels wide), then a linear read-out to ``classes``. Every block output is a value node.
    """
    if depth < 2:
        raise ValueError(f"vgg depth must be >= 2 (at least one conv and the read-out), got {depth}")
    c, h, w = image_shape
    nodes = [Node("x", (c, h, w))]
    edges = []
    prev = "x"
    channels = width
    for i in range(1, depth):
        pool = min(h, w) >= 4 and (i <= 4 or i % 2 == 0)
        layers: list[nn.Module] = [nn.Conv2d(c, channels, 3, padding=1), Act(activation)]
        if pool:
            layers.append(nn.MaxPool2d(2))
            h, w = h // 2, w // 2
        name = f"h{i}"
        nodes.append(Node(name, (channels, h, w)))
        edges.append((prev, name, nn.Sequential(*layers)))
        prev, c = name, channels
        if pool:
            channels = min(channels * 2, 8 * width)
    nodes.append(Node("y", (classes,), _output_energy(output)))
    edges.append((prev, "y", nn.Sequential(nn.Flatten(), nn.Linear(c * h * w, classes))))
    return PCN(nodes, edges)


def deconv_generator(
    latent: int = 16,
    image_shape: tuple[int, int, int] = (1, 28, 28),
    channels: int = 32,
    activation: str = "relu",
) -> PCN:
    """A generative conv PCN ``z -> h1 -> h2 -> x`` with transposed convolutions.

    ``z (latent) -> h1 (channels, H/4, W/4)`` by a linear map, then two stride-2 transposed
    convolutions up to the image (sigmoid output, images in [0, 1]). ``H`` and ``W`` must be
    divisible by 4.
    """
    c, h, w = image_shape
    if h % 4 or w % 4:
        raise ValueError(f"deconv_generator needs image height and width divisible by 4, got {image_shape}")
    s1 = (channels, h // 4, w // 4)
    s2 = (channels // 2, h // 2, w // 2)
    nodes = [Node("z", (latent,)), Node("h1", s1), Node("h2", s2), Node("x", (c, h, w))]
    edges = [
        ("z", "h1", nn.Sequential(nn.Linear(latent, prod(s1)), Act(activation), nn.Unflatten(1, s1))),
        ("h1", "h2", nn.Sequential(nn.ConvTranspose2d(channels, channels // 2, 4, stride=2, padding=1), Act(activation))),
        ("h2", "x", nn.Sequential(nn.ConvTranspose2d(channels // 2, c, 4, stride=2, padding=1), nn.Sigmoid())),
    ]
    return PCN(nodes, edges)
