"""Prediction modules with hand-derived vector-Jacobian products, and the activations with their
first and second derivatives (:data:`ACTIVATIONS`, :func:`slope_times`, :data:`CURVATURE`).

Any ``nn.Module`` can be a prediction edge of a :class:`~pclab.core.graph.PCN`; relaxation then
gets ``dE/dz`` from autograd. Modules that also define ``forward_with_vjp`` let relaxation skip
autograd: that is the fast path for the standard layers (tests check it against autograd).
Every hand-derived formula here is built from differentiable torch ops, so backprop through the
unrolled inference works on the fast path too.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

Vjp = Callable[[torch.Tensor], torch.Tensor]


def _gelu_grad(a: torch.Tensor) -> torch.Tensor:
    cdf = 0.5 * (1.0 + torch.erf(a * (1.0 / math.sqrt(2.0))))
    pdf = torch.exp(-0.5 * a * a) * (1.0 / math.sqrt(2.0 * math.pi))
    return cdf + a * pdf


def _sigmoid_grad(a: torch.Tensor) -> torch.Tensor:
    s = torch.sigmoid(a)
    return s * (1.0 - s)


def _silu_grad(a: torch.Tensor) -> torch.Tensor:
    s = torch.sigmoid(a)
    return s * (1.0 + a * (1.0 - s))


# name -> (function, derivative as a function of the pre-activation)
ACTIVATIONS: dict[str, tuple[Callable[[torch.Tensor], torch.Tensor], Callable[[torch.Tensor], torch.Tensor]]] = {
    "identity": (lambda a: a, lambda a: torch.ones_like(a)),
    "tanh": (torch.tanh, lambda a: 1.0 - torch.tanh(a) ** 2),
    "relu": (torch.relu, lambda a: (a > 0).to(a.dtype)),
    "leaky_relu": (
        lambda a: torch.nn.functional.leaky_relu(a, 0.01),
        lambda a: torch.where(a > 0, torch.ones_like(a), torch.full_like(a, 0.01)),
    ),
    "gelu": (torch.nn.functional.gelu, _gelu_grad),
    "sigmoid": (torch.sigmoid, _sigmoid_grad),
    "silu": (torch.nn.functional.silu, _silu_grad),
}


aten = torch.ops.aten


def slope_times(activation: str, x: torch.Tensor, a: torch.Tensor, mu: torch.Tensor) -> torch.Tensor:
    """``f'(a) * x`` (elementwise; ``mu = f(a)``), by PyTorch's fused backward op of the activation
    (what autograd computes)."""
    if activation == "identity":
        return x
    if activation == "tanh":
        return aten.tanh_backward(x, mu)
    if activation == "sigmoid":
        return aten.sigmoid_backward(x, mu)
    if activation == "relu":
        return aten.threshold_backward(x, a, 0)
    if activation == "leaky_relu":
        return aten.leaky_relu_backward(x, a, 0.01, False)
    if activation == "gelu":
        return aten.gelu_backward(x, a)
    if activation == "silu":
        return aten.silu_backward(x, a)
    raise ValueError(f"no hand-written derivative for activation {activation!r}")


def _gelu_curvature(a: torch.Tensor, mu: torch.Tensor) -> torch.Tensor:
    # f = a Phi(a): f'' = 2 phi(a) - a^2 phi(a)
    pdf = torch.exp(-0.5 * a * a) * (1.0 / math.sqrt(2.0 * math.pi))
    return pdf * (2.0 - a * a)


def _silu_curvature(a: torch.Tensor, mu: torch.Tensor) -> torch.Tensor:
    # f = a s(a): f'' = s (1 - s) (2 + a (1 - 2 s))
    s = torch.sigmoid(a)
    return s * (1.0 - s) * (2.0 + a * (1.0 - 2.0 * s))


# ``(factor, through_slope, scale)``: ``f''(a) == scale * factor(a, mu) * f'(a)`` when
# ``through_slope`` (tanh, sigmoid: f'' is a multiple of f', so q = f' (r + scale factor e da)
# takes one slope product), else ``f''(a) == scale * factor(a, mu)``; ``None``: f'' = 0.
CURVATURE: dict[str, tuple[Callable[[torch.Tensor, torch.Tensor], torch.Tensor], bool, float] | None] = {
    "identity": None,
    "relu": None,
    "leaky_relu": None,
    "tanh": (lambda a, mu: mu, True, -2.0),  # f'' = -2 f f'
    "sigmoid": (lambda a, mu: 1.0 - 2.0 * mu, True, 1.0),  # f'' = f' (1 - 2 f)
    "gelu": (_gelu_curvature, False, 1.0),
    "silu": (_silu_curvature, False, 1.0),
}
"""Second derivatives of the activations (the reverse pass of :mod:`pclab.core.fast.chain_adjoint` reads them)."""


SLOPE_FROM_OUTPUT: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "sigmoid": lambda mu: mu * (1.0 - mu),
    "tanh": lambda mu: 1.0 - mu**2,
}
"""``f'(a)`` from ``mu = f(a)`` where that equals :data:`ACTIVATIONS`' derivative bit for bit (the
Dense-chain accelerator reuses the prediction instead of recomputing ``f(a)``)."""


def activation(name: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """The activation function called ``name`` (one of ``ACTIVATIONS``)."""
    if name not in ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; expected one of {sorted(ACTIVATIONS)}")
    return ACTIVATIONS[name][0]


class Dense(nn.Module):
    """``mu = act(z @ W.T + b)``: a fully-connected prediction.

    Shapes: input ``(batch, in_features)``, output ``(batch, out_features)``.

    Args:
        in_features: width of the presynaptic node.
        out_features: width of the predicted node.
        activation: name of the elementwise nonlinearity applied to the prediction.
        bias: whether to learn an additive bias.
    """

    def __init__(self, in_features: int, out_features: int, activation: str = "identity", bias: bool = True):
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {activation!r}; expected one of {sorted(ACTIVATIONS)}")
        self.linear = nn.Linear(in_features, out_features, bias=bias)
        self.activation = activation
        self._f, self._df = ACTIVATIONS[activation]

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self._f(self.linear(z))

    def forward_with_vjp(self, z: torch.Tensor) -> tuple[torch.Tensor, Vjp]:
        """The prediction and a function mapping ``g = dE/dmu`` to ``dE/dz``."""
        a = self.linear(z)
        mu = self._f(a)
        weight = self.linear.weight
        if self.activation == "identity":
            return mu, lambda g: g @ weight
        # without a graph, the same slope (bit for bit) from mu instead of computing f(a) again; with one
        # (backprop through inference) the slope's own derivative is taken through f(a), as it always was
        from_output = None if a.requires_grad else SLOPE_FROM_OUTPUT.get(self.activation)
        slope = from_output(mu) if from_output is not None else self._df(a)
        return mu, lambda g: (g * slope) @ weight

    def extra_repr(self) -> str:
        return f"activation={self.activation!r}"


class Stack(nn.Module):
    """Prediction modules applied in turn, as one edge, with the composed VJP.

    Use it where several layers predict a node without value nodes between them (e.g. a decoder
    whose hidden layers should not be inferred). Every layer must define ``forward_with_vjp``
    (as :class:`Dense` does) so the stack keeps relaxation's fast path.

    Shapes: input ``(batch, *input of the first layer)``, output ``(batch, *output of the last)``.
    """

    def __init__(self, layers: list[nn.Module]):
        super().__init__()
        if not layers or not all(hasattr(layer, "forward_with_vjp") for layer in layers):
            raise TypeError("Stack takes a non-empty list of modules that define forward_with_vjp (e.g. Dense)")
        self.layers = nn.ModuleList(layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            z = layer(z)
        return z

    def forward_with_vjp(self, z: torch.Tensor) -> tuple[torch.Tensor, Vjp]:
        vjps = []
        for layer in self.layers:
            z, vjp = layer.forward_with_vjp(z)
            vjps.append(vjp)

        def back(g: torch.Tensor) -> torch.Tensor:
            for vjp in reversed(vjps):
                g = vjp(g)
            return g

        return z, back
