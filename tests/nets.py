"""Small networks and numerical helpers shared by the tests of the core (``tests/core``) and of its
accelerators (``tests/fast``).

Everything here is deterministic: each builder takes a seed and draws from its own RNG scope,
so a test never depends on the order in which other tests ran. Networks are float64 unless a
``dtype`` says otherwise.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable, Iterator, Sequence

import torch
from hypothesis import settings
from torch import nn

from pclab.core import PCN, CrossEntropy, Dense, Gaussian, Inference, Node

F64 = torch.float64
SMOOTH = ("identity", "tanh", "sigmoid", "gelu", "silu")
ALL_ACTIVATIONS = ("identity", "tanh", "sigmoid", "gelu", "silu", "leaky_relu", "relu")


def examples(count: int) -> settings:
    """Hypothesis settings of the core tests: ``count`` examples, no deadline, a fixed example
    sequence (derandomised, so every run checks the same cases) and no example database."""
    return settings(max_examples=count, deadline=None, derandomize=True, database=None)


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Run a block under ``torch.manual_seed(seed)`` without touching the caller's RNG state."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def randn(*shape: int, seed: int, dtype: torch.dtype = F64) -> torch.Tensor:
    """Standard normal tensor from its own generator (drawn in float64, then cast to ``dtype``)."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=F64).to(dtype)


def one_hot(labels: torch.Tensor, classes: int) -> torch.Tensor:
    return torch.nn.functional.one_hot(labels, classes).to(F64)


def chain_names(layers: int) -> list[str]:
    """``x, h1, ..., h_{layers-1}, y``: the nodes of a chain with ``layers`` weight layers."""
    return ["x", *[f"h{i}" for i in range(1, layers)], "y"]


def chain(
    widths: Sequence[int],
    activations: Sequence[str] | str = "tanh",
    output: Gaussian | CrossEntropy | None = None,
    hidden_precision: Sequence[float] | None = None,
    seed: int = 0,
    dtype: torch.dtype = F64,
    bias: bool = True,
) -> PCN:
    """Feed-forward chain ``x -> h1 -> ... -> y`` of :class:`Dense` edges.

    Args:
        widths: node widths, ``len(widths) = layers + 1``.
        activations: one name for every layer (the output's too), or one per weight layer.
        output: energy of ``y`` (Gaussian(1) by default).
        hidden_precision: Gaussian precision of each hidden node.
        dtype: the parameters' dtype.
        bias: the layers have biases.
    """
    layers = len(widths) - 1
    if isinstance(activations, str):
        activations = [activations] * layers
    names = chain_names(layers)
    nodes = [Node("x", (widths[0],))]
    for i in range(1, layers):
        precision = 1.0 if hidden_precision is None else hidden_precision[i - 1]
        nodes.append(Node(names[i], (widths[i],), Gaussian(precision)))
    nodes.append(Node("y", (widths[-1],), output if output is not None else Gaussian()))
    with seeded(seed):
        edges = [(names[i], names[i + 1], Dense(widths[i], widths[i + 1], activations[i], bias=bias)) for i in range(layers)]
        return PCN(nodes, edges).to(dtype)


def mlp(
    widths: Sequence[int],
    activations: Sequence[str] | str = "tanh",
    output: Gaussian | CrossEntropy | None = None,
    precisions: Sequence[float] | None = None,
    dtype: torch.dtype = F64,
    seed: int = 0,
    bias: bool = True,
) -> PCN:
    """:func:`chain` as an MLP: one activation name applies to the hidden layers, the output layer is
    linear; ``precisions``: the Gaussian precision of every node after ``x`` (the output's unless
    ``output`` is given)."""
    layers = len(widths) - 1
    if isinstance(activations, str):
        activations = [activations] * (layers - 1) + ["identity"]
    precisions = list(precisions) if precisions is not None else [1.0] * layers
    output = output if output is not None else Gaussian(precisions[-1])
    return chain(widths, activations, output, precisions[:-1], seed=seed, dtype=dtype, bias=bias)


def reference(inference: Inference) -> Inference:
    """The same inference on the general graph code (hand-derived VJPs, no accelerator)."""
    return Inference(**{**inference.__dict__, "method": "manual"})


def autograd(inference: Inference) -> Inference:
    """The same inference with latent gradients from autograd."""
    return Inference(**{**inference.__dict__, "method": "autograd"})


def twin(model: PCN) -> PCN:
    """An independent copy of ``model`` (same weights)."""
    return copy.deepcopy(model)


def max_rel(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    """Largest relative difference over the entries of two states (norm-wise per entry)."""
    assert a.keys() == b.keys(), (sorted(a), sorted(b))
    worst = 0.0
    for k in a:
        scale = max(float(b[k].norm()), 1e-30)
        worst = max(worst, float((a[k] - b[k]).norm()) / scale)
    return worst


def hybrid(image: int = 6, latent: int = 3, classes: int = 4, seed: int = 0) -> PCN:
    """Hybrid model: image ``x``, latent ``z`` (amortised by an encoder ``x -> z``), label ``y`` (CE).

    Decoder ``z -> x``, classification head ``z -> y``.
    """
    nodes = [Node("x", (image,)), Node("z", (latent,)), Node("y", (classes,), CrossEntropy())]
    with seeded(seed):
        return PCN(
            nodes,
            edges=[("z", "x", Dense(latent, image, "tanh")), ("z", "y", Dense(latent, classes))],
            amortisers=[("x", "z", Dense(image, latent, "tanh"))],
        ).to(F64)


class AutogradVjp(nn.Module):
    """Wraps any module and supplies ``forward_with_vjp`` from autograd.

    Lets the hand-written (manual) gradient path of :class:`PCN` run on conv edges, so its
    plumbing (sums over edges, multi-dimensional nodes) can be checked there too.
    """

    def __init__(self, module: nn.Module):
        super().__init__()
        self.module = module

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.module(z)

    def forward_with_vjp(self, z: torch.Tensor):
        with torch.enable_grad():
            leaf = z.detach().requires_grad_(True)
            mu = self.module(leaf)
        return mu, lambda g: torch.autograd.grad(mu, leaf, g, retain_graph=True)[0]


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """``||a - b|| / ||b||`` (absolute error when ``b`` is zero)."""
    a, b = a.detach(), b.detach()
    diff = float((a - b).norm())
    scale = float(b.norm())
    return diff / scale if scale > 0 else diff


def flat(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    return torch.cat([t.reshape(-1) for t in tensors])


def central_difference(f: Callable[[], torch.Tensor], tensor: torch.Tensor, index: tuple[int, ...], h: float = 1e-6) -> float:
    """``df/dtensor[index]`` by central differences; ``tensor`` is perturbed in place and restored."""
    with torch.no_grad():
        old = tensor[index].item()
        tensor[index] = old + h
        up = float(f())
        tensor[index] = old - h
        down = float(f())
        tensor[index] = old
    return (up - down) / (2 * h)


def some_indices(shape: Sequence[int], count: int, seed: int) -> list[tuple[int, ...]]:
    """``count`` distinct entries of a tensor of ``shape`` (all of them if it has fewer)."""
    total = 1
    for s in shape:
        total *= s
    g = torch.Generator().manual_seed(seed)
    flat_ids = torch.randperm(total, generator=g)[:count].tolist()
    out = []
    for k in flat_ids:
        idx = []
        for s in reversed(shape):
            idx.append(k % s)
            k //= s
        out.append(tuple(reversed(idx)))
    return out


def backprop_grads(model: PCN, x: torch.Tensor, target: torch.Tensor, kind: str) -> list[torch.Tensor]:
    """Backprop gradient of the feed-forward loss, batch mean of per-sample losses.

    ``kind="mse"``: ``0.5 * ||target - f(x)||^2``; ``kind="ce"``: cross-entropy of the logits
    ``f(x)`` against the distribution ``target``.
    """
    values = model.initial_state({"x": x}, "forward")
    out = model.predictions(values)["y"]
    if kind == "mse":
        loss = 0.5 * ((target - out) ** 2).sum(dim=1).mean()
    else:
        loss = -(target * torch.log_softmax(out, dim=1)).sum(dim=1).mean()
    return list(torch.autograd.grad(loss, list(model.parameters())))
