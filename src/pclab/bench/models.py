"""The benchmarks' models: MLPs and a small conv net as PCNs, their backprop twin and nominal FLOPs."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from ..core import PCN, Dense, Node
from ..models import mlp

MODELS = ("mlp128", "mlp512", "conv")
"""The model kinds of the suites: MLP 784-w-w-10 tanh (``mlpW``) and :func:`conv_pcn`."""


def mlp_pcn(widths: Sequence[int], activation: str = "tanh", seed: int = 0, device: torch.device | str = "cpu") -> PCN:
    """Chain ``x -> h1 -> ... -> y`` of Dense layers, the last linear, Gaussian energies, on
    ``device`` (initialised on the CPU: the same weights on every device)."""
    torch.manual_seed(seed)
    return mlp(widths, activation).to(device)


def conv_pcn(seed: int = 0, device: torch.device | str = "cpu") -> PCN:
    """A small conv PCN on 1x28x28 images: conv 5x5/2 (8 ch) -> conv 5x5/2 (16 ch) -> linear 10,
    on ``device`` (initialised on the CPU)."""
    torch.manual_seed(seed)
    nodes = [Node("x", (1, 28, 28)), Node("h1", (8, 12, 12)), Node("h2", (16, 4, 4)), Node("y", (10,))]
    edges = [
        ("x", "h1", nn.Sequential(nn.Conv2d(1, 8, 5, stride=2), nn.Tanh())),
        ("h1", "h2", nn.Sequential(nn.Conv2d(8, 16, 5, stride=2), nn.Tanh())),
        ("h2", "y", nn.Sequential(nn.Flatten(), nn.Linear(256, 10))),
    ]
    return PCN(nodes, edges).to(device)


def as_sequential(model: PCN) -> nn.Sequential:
    """A copy of a chain PCN's edge modules as one feed-forward ``nn.Sequential`` (backprop's model)."""
    layers: list[nn.Module] = []
    for edge in model.edges:
        module = copy.deepcopy(model.edge_modules[edge.key])
        if isinstance(module, Dense):  # plain torch layers, as a minimal backprop loop would use
            layers.append(module.linear)
            if module.activation != "identity":
                layers.append({"tanh": nn.Tanh(), "relu": nn.ReLU(), "gelu": nn.GELU(), "sigmoid": nn.Sigmoid()}[module.activation])
        else:
            layers.append(module)
    return nn.Sequential(*layers)


def mlp_flops(widths: Sequence[int], batch: int, steps: int) -> dict[str, Any]:
    """Nominal matmul FLOPs of one training step on an MLP (2 per multiply-add).

    ``F = 2 B sum_l n_{l-1} n_l`` (one forward pass), ``F1 = 2 B n_0 n_1`` (the input layer, whose
    prediction is constant while the input is clamped).
    """
    f = 2 * batch * sum(a * b for a, b in zip(widths[:-1], widths[1:]))
    f1 = 2 * batch * widths[0] * widths[1]
    t = steps
    return {
        "F": f,
        "F1": f1,
        "bp": {"formula": "3F - F1", "flops": 3 * f - f1},
        "pc": {"formula": "F + 2T(F - F1) + (F - F1) + F", "flops": f + 2 * t * (f - f1) + (f - f1) + f},
        "ipc": {"formula": "F + T(2(F - F1) + F)", "flops": f + t * (2 * (f - f1) + f)},
        "bpti": {"formula": "3(F + 2T(F - F1) + (F - F1))", "flops": 3 * (f + 2 * t * (f - f1) + (f - f1))},
    }


def widths_of(kind: str, depth: int = 3) -> list[int]:
    """``[784, w, ..., w, 10]`` of an ``mlpW`` model with ``depth`` layers."""
    width = int(kind[3:])
    return [784, *([width] * (depth - 1)), 10]


def model_of(kind: str, depth: int = 3, device: torch.device | str = "cpu") -> tuple[PCN, tuple[int, ...]]:
    """The model ``kind`` (one of :data:`MODELS`) on ``device`` and the shape of its input."""
    if kind == "conv":
        return conv_pcn(device=device), (1, 28, 28)
    if kind.startswith("mlp"):
        return mlp_pcn(widths_of(kind, depth), device=device), (784,)
    raise ValueError(f"unknown model {kind!r}; expected mlp128, mlp512 or conv")
