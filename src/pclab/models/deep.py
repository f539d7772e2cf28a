"""Deep and residual PCN builders: plain deep MLPs, residual MLPs with the muPC parameterisation
(Innocenti et al. 2025), auxiliary nodes on skip paths (Qi et al. 2025), and a VGG with
weight-phase BatchNorm.

Depth conventions: ``depth`` counts weight layers (edges along the main path), so a depth-``L``
chain has ``L`` error-bearing layers ``h1 .. h_{L-1}, y`` (``PCN.num_layers == L`` without skip
delays).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from ..core import PCN, CrossEntropy, Gaussian, Node
from ..core.batchnorm import PhasedBatchNorm
from ..core.residual import Identity, ResidualDense, ScaledDense
from .builders import Act, mlp


@dataclass(frozen=True)
class Scalings:
    """Fixed output multipliers of the three kinds of layer of a residual MLP."""

    input: float
    hidden: float
    output: float


def mupc_scalings(input_dim: int, width: int, depth: int) -> Scalings:
    """muPC (Innocenti et al. 2025; jpc's ``param_type="mupc"``): input layer ``1/sqrt(D)``,
    residual branches ``1/sqrt(N L)``, read-out ``1/N``; weights ``N(0, 1)``.

    Args:
        input_dim: ``D``, the input size.
        width: ``N``, the hidden width.
        depth: ``L``, the number of weight layers.
    """
    for name, v in (("input_dim", input_dim), ("width", width), ("depth", depth)):
        if v < 1:
            raise ValueError(f"{name} must be >= 1, got {v}")
    return Scalings(1.0 / math.sqrt(input_dim), 1.0 / math.sqrt(width * depth), 1.0 / width)


def lecun_init(model: nn.Module) -> nn.Module:
    """Re-draw every ``nn.Linear`` weight of ``model`` from ``N(0, 1/fan_in)`` and zero its bias; return ``model``.

    PyTorch's default (``U(+-1/sqrt(fan_in))``, variance ``1/(3 fan_in)``) shrinks the signal by about
    ``sqrt(3)`` per tanh layer, so at depth 15 the input barely reaches the output at initialisation
    and even backprop trains slowly or not at all; unit-variance-preserving weights keep a deep tanh
    chain trainable. Draws from torch's global generator (seeded by the caller).
    """
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.Linear):
                module.weight.normal_(0.0, 1.0 / math.sqrt(module.in_features))
                if module.bias is not None:
                    module.bias.zero_()
    return model


def orthogonal_init(model: nn.Module, gain: float = math.sqrt(2.0)) -> nn.Module:
    """Re-draw every ``nn.Linear`` weight of ``model`` as a (semi-)orthogonal matrix times ``gain``
    (``torch.nn.init.orthogonal_``) and zero its bias; return ``model``.

    The default gain is ReLU's, ``sqrt(2)``: the setting of the ePC authors' deep MLPs (Goemaere et
    al. 2026), whose singular values of one keep a 20-layer GELU chain's signal from vanishing at
    initialisation. Draws from torch's global generator (seeded by the caller).
    """
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.Linear):
                nn.init.orthogonal_(module.weight, gain)
                if module.bias is not None:
                    module.bias.zero_()
    return model


def deep_mlp(input_dim: int, width: int, depth: int, classes: int, activation: str = "tanh", output: str = "gaussian") -> PCN:
    """A plain chain ``x -> h1 -> ... -> h_{depth-1} -> y`` of width-``width`` :class:`Dense` layers."""
    if depth < 2:
        raise ValueError(f"deep_mlp depth must be >= 2, got {depth}")
    return mlp([input_dim, *[width] * (depth - 1), classes], activation, output)


def residual_mlp(
    input_dim: int,
    width: int,
    depth: int,
    classes: int,
    activation: str = "relu",
    parameterisation: str = "mupc",
    skip_delay: int = 0,
    output: str = "gaussian",
    bias: bool = False,
) -> PCN:
    """A residual MLP PCN: ``x -> h1`` (linear), ``depth - 2`` residual blocks
    ``h_{i+1} = h_i + s W_i act(h_i)``, then the read-out ``y = s_out W act(h_{depth-1})``
    (jpc's ``FCResNet``: no skip from the input or into the output).

    Args:
        input_dim, width, classes: sizes ``D``, ``N`` and of the label.
        depth: weight layers ``L`` (>= 3).
        activation: nonlinearity inside each block and before the read-out.
        parameterisation: ``"mupc"`` (:func:`mupc_scalings`, ``N(0,1)`` weights) or ``"standard"``
            (unit multipliers, PyTorch's default init): the same network, two parameterisations.
        skip_delay: ``k`` auxiliary nodes ``a{i}_1 .. a{i}_k`` on each skip path, joined by identity
            edges ``h_i -> a{i}_1 -> ... -> a{i}_k -> h_{i+1}``; the branch ``s W act(h_i)`` stays a
            direct edge. The feed-forward function is unchanged, but during relaxation the error
            of ``h_{i+1}`` reaches ``h_i`` through the skip ``k`` steps later than through the branch.
        output: label energy, ``"gaussian"`` (squared error to a one-hot target) or ``"ce"``.
        bias: learn biases (jpc's muPC example has none).
    """
    if depth < 3:
        raise ValueError(f"residual_mlp depth must be >= 3 (input layer, a block, read-out), got {depth}")
    if skip_delay < 0:
        raise ValueError(f"skip_delay must be >= 0, got {skip_delay}")
    if parameterisation == "mupc":
        s, init = mupc_scalings(input_dim, width, depth), "normal"
    elif parameterisation == "standard":
        s, init = Scalings(1.0, 1.0, 1.0), "default"
    else:
        raise ValueError(f"parameterisation must be 'mupc' or 'standard', got {parameterisation!r}")
    label = CrossEntropy() if output == "ce" else Gaussian() if output == "gaussian" else None
    if label is None:
        raise ValueError(f"output energy must be 'ce' or 'gaussian', got {output!r}")
    hidden = [f"h{i}" for i in range(1, depth)]
    nodes = [Node("x", (input_dim,)), *[Node(h, (width,)) for h in hidden], Node("y", (classes,), label)]
    edges: list[tuple[str, str, nn.Module]] = [("x", "h1", ScaledDense(input_dim, width, s.input, "identity", bias, init))]
    for i in range(1, depth - 1):
        source, target = f"h{i}", f"h{i + 1}"
        if skip_delay == 0:
            edges.append((source, target, ResidualDense(width, s.hidden, activation, bias, init)))
            continue
        edges.append((source, target, ScaledDense(width, width, s.hidden, activation, bias, init)))
        chain = [source, *[f"a{i}_{j}" for j in range(1, skip_delay + 1)], target]
        nodes.extend(Node(a, (width,)) for a in chain[1:-1])
        edges.extend((a, b, Identity()) for a, b in itertools.pairwise(chain))
    edges.append((hidden[-1], "y", ScaledDense(width, classes, s.output, activation, bias, init)))
    return PCN(nodes, edges)


def vgg_bn(
    depth: int = 5,
    image_shape: Sequence[int] = (1, 28, 28),
    classes: int = 10,
    width: int = 32,
    activation: str = "gelu",
    output: str = "ce",
) -> PCN:
    """:func:`pclab.models.vgg` with a :class:`PhasedBatchNorm` after every convolution
    (``conv3x3 -> BN -> act [-> maxpool]``). Train it with
    :class:`~pclab.core.batchnorm.WeightPhasePCLearning` so running statistics move in the weight
    phase only."""
    if depth < 2:
        raise ValueError(f"vgg_bn depth must be >= 2, got {depth}")
    c, h, w = (int(v) for v in image_shape)
    nodes, edges, prev, channels = [Node("x", (c, h, w))], [], "x", width
    for i in range(1, depth):
        pool = min(h, w) >= 4 and (i <= 4 or i % 2 == 0)
        layers: list[nn.Module] = [nn.Conv2d(c, channels, 3, padding=1), PhasedBatchNorm(channels), Act(activation)]
        if pool:
            layers.append(nn.MaxPool2d(2))
            h, w = h // 2, w // 2
        nodes.append(Node(f"h{i}", (channels, h, w)))
        edges.append((prev, f"h{i}", nn.Sequential(*layers)))
        prev, c = f"h{i}", channels
        if pool:
            channels = min(channels * 2, 8 * width)
    label = CrossEntropy() if output == "ce" else Gaussian()
    nodes.append(Node("y", (classes,), label))
    edges.append((prev, "y", nn.Sequential(nn.Flatten(), nn.Linear(c * h * w, classes))))
    return PCN(nodes, edges)
