"""Prediction modules for deep and residual PCNs, each with a hand-derived VJP (the fast path).

* :class:`Identity`       -- ``mu = z``: the edges of auxiliary nodes on a skip path.
* :class:`ScaledDense`    -- ``mu = scale * (W act(z) + b)``: a pre-activation dense layer with a
  fixed output multiplier (the muPC parameterisation of Innocenti et al. 2025 scales the input
  layer by ``1/sqrt(D)``, residual branches by ``1/sqrt(N L)`` and the read-out by ``1/N``).
* :class:`ResidualDense`  -- ``mu = z + scale * (W act(z) + b)``: a whole residual block as one
  edge (source and target of the skip are the same pair of nodes, so the skip cannot be a second
  edge: a node's prediction is the sum of its incoming edges, one per source).

Tests check every ``forward_with_vjp`` against autograd.
"""

from __future__ import annotations

import torch
from torch import nn

from .layers import ACTIVATIONS, Vjp


class Identity(nn.Module):
    """``mu = z`` (no parameters). Shapes: any ``(batch, *shape)`` to the same."""

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return z

    def forward_with_vjp(self, z: torch.Tensor) -> tuple[torch.Tensor, Vjp]:
        return z, lambda g: g


def _init_weight(linear: nn.Linear, init: str, generator: torch.Generator | None = None) -> None:
    if init == "default":
        return
    if init == "normal":  # muPC: unit-variance weights, the scale lives in the multiplier
        with torch.no_grad():
            linear.weight.copy_(torch.randn(linear.weight.shape, generator=generator))
            if linear.bias is not None:
                linear.bias.zero_()
        return
    raise ValueError(f"weight init must be 'default' (PyTorch's) or 'normal' (N(0, 1)), got {init!r}")


class ScaledDense(nn.Module):
    """``mu = scale * (act(z) @ W.T + b)``: activation on the *input*, a fixed multiplier on the output.

    Shapes: input ``(batch, in_features)``, output ``(batch, out_features)``.

    Args:
        in_features: width of the presynaptic node.
        out_features: width of the predicted node.
        scale: constant output multiplier (not learned).
        activation: nonlinearity applied to the presynaptic value (``identity`` for the input layer).
        bias: learn an additive bias.
        init: ``"default"`` (PyTorch's uniform init) or ``"normal"`` (``N(0, 1)`` weights, muPC).
    """

    def __init__(self, in_features: int, out_features: int, scale: float = 1.0, activation: str = "identity",
                 bias: bool = False, init: str = "default"):
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {activation!r}; expected one of {sorted(ACTIVATIONS)}")
        if not scale > 0:
            raise ValueError(f"scale must be > 0, got {scale!r}")
        self.linear = nn.Linear(in_features, out_features, bias=bias)
        _init_weight(self.linear, init)
        self.scale, self.activation = float(scale), activation
        self._f, self._df = ACTIVATIONS[activation]

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self._branch(z)

    def _branch(self, z: torch.Tensor) -> torch.Tensor:
        return self.scale * self.linear(self._f(z))

    def forward_with_vjp(self, z: torch.Tensor) -> tuple[torch.Tensor, Vjp]:
        """The prediction and ``g = dE/dmu -> dE/dz``."""
        mu = self._branch(z)
        weight = self.linear.weight
        if self.activation == "identity":
            return mu, lambda g: (self.scale * g) @ weight
        slope = self._df(z)
        return mu, lambda g: ((self.scale * g) @ weight) * slope

    def extra_repr(self) -> str:
        return f"scale={self.scale:.4g}, activation={self.activation!r}"


class ResidualDense(ScaledDense):
    """``mu = z + scale * (act(z) @ W.T + b)``: a residual block with an identity skip.

    Shapes: ``(batch, width)`` to ``(batch, width)``.
    """

    def __init__(self, width: int, scale: float = 1.0, activation: str = "relu", bias: bool = False, init: str = "default"):
        super().__init__(width, width, scale, activation, bias, init)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return z + self._branch(z)

    def forward_with_vjp(self, z: torch.Tensor) -> tuple[torch.Tensor, Vjp]:
        branch, vjp = ScaledDense.forward_with_vjp(self, z)
        return z + branch, lambda g: g + vjp(g)
