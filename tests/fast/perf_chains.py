"""Random Dense chains and the reference computations the fast paths are compared with."""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch

from pclab.core import PCN, CrossEntropy, Dense, Gaussian, Inference, Node

F64 = torch.float64


def names(depth: int) -> list[str]:
    """``x, h1, ..., y``: node names of a chain with ``depth`` layers."""
    return ["x", *[f"h{i}" for i in range(1, depth)], "y"]


def chain(
    widths: Sequence[int],
    activations: Sequence[str] | str = "tanh",
    output: Gaussian | CrossEntropy | None = None,
    precisions: Sequence[float] | None = None,
    dtype: torch.dtype = F64,
    seed: int = 0,
    bias: bool = True,
) -> PCN:
    """A feed-forward chain ``x -> h1 -> ... -> y`` of :class:`Dense` layers (last one linear
    unless ``activations`` says otherwise)."""
    depth = len(widths) - 1
    if isinstance(activations, str):
        activations = [activations] * (depth - 1) + ["identity"]
    precisions = list(precisions) if precisions is not None else [1.0] * depth
    ns = names(depth)
    nodes = [Node(ns[0], (widths[0],))]
    for l in range(1, depth + 1):
        energy = output if (l == depth and output is not None) else Gaussian(precisions[l - 1])
        nodes.append(Node(ns[l], (widths[l],), energy))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        edges = [(ns[l], ns[l + 1], Dense(widths[l], widths[l + 1], activations[l], bias=bias)) for l in range(depth)]
        model = PCN(nodes, edges).to(dtype)
    return model


def randn(*shape: int, seed: int, dtype: torch.dtype = F64) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=torch.float64).to(dtype)


def reference(inference: Inference) -> Inference:
    """The same inference on the general graph code (hand-derived VJPs, no chain fast path)."""
    return Inference(**{**inference.__dict__, "method": "manual"})


def autograd(inference: Inference) -> Inference:
    """The same inference with latent gradients from autograd."""
    return Inference(**{**inference.__dict__, "method": "autograd"})


def twin(model: PCN) -> PCN:
    return copy.deepcopy(model)


def max_rel(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    """Largest relative difference over the entries of two states (norm-wise per entry)."""
    assert a.keys() == b.keys(), (sorted(a), sorted(b))
    worst = 0.0
    for k in a:
        scale = max(float(b[k].norm()), 1e-30)
        worst = max(worst, float((a[k] - b[k]).norm()) / scale)
    return worst
