"""Optimisers of the latent values during relaxation.

Relaxation needs optimisers that are *functions of their state* so that the unrolled inference
can be backpropagated (``bp-through-inference``): ``update(z, grad, state, step)`` returns new
tensors and never writes in place when ``differentiable`` is set. The three here cover what the
literature uses (plain SGD, SGD with heavy-ball or Nesterov momentum, Adam); any
``torch.optim.Optimizer`` class can also drive relaxation through :class:`TorchOptimizer` (not
differentiable).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Protocol

import torch

OptState = dict[str, Any]


class LatentOptimizer(Protocol):
    """An update rule for one latent tensor."""

    def init(self, z: torch.Tensor) -> OptState:
        """Fresh optimiser state for a latent ``z``."""
        ...

    def update(self, z: torch.Tensor, grad: torch.Tensor, state: OptState, differentiable: bool) -> tuple[torch.Tensor, OptState]:
        """The next ``z`` and state, given ``grad = dE/dz``."""
        ...


@dataclass(frozen=True)
class SGD:
    """``v <- momentum * v + g``; ``z <- z - lr * (g + momentum * v if nesterov else v)``.

    Args:
        lr: step size of the latent updates.
        momentum: heavy-ball coefficient (0: plain gradient descent).
        nesterov: use Nesterov's look-ahead form.
    """

    lr: float = 0.1
    momentum: float = 0.0
    nesterov: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.lr, bool) or not (0 < self.lr < math.inf):
            raise ValueError(f"latent SGD lr: expected a finite number > 0, got {self.lr!r}")
        if not (0.0 <= self.momentum < 1.0):
            raise ValueError(f"latent SGD momentum must be in [0, 1), got {self.momentum!r}")
        if self.nesterov and self.momentum == 0.0:
            raise ValueError("Nesterov momentum needs momentum > 0")

    def init(self, z: torch.Tensor) -> OptState:
        return {"velocity": None}

    def update(self, z, grad, state, differentiable):
        if self.momentum == 0.0:
            if differentiable:
                return torch.add(z, grad, alpha=-self.lr), state
            return z.sub_(grad, alpha=self.lr), state
        v = state["velocity"]
        if differentiable:  # new tensors only (the unrolled graph keeps the old ones)
            v = grad if v is None else torch.add(grad, v, alpha=self.momentum)
            step = torch.add(grad, v, alpha=self.momentum) if self.nesterov else v
            return torch.add(z, step, alpha=-self.lr), {"velocity": v}
        v = grad.clone() if v is None else v.mul_(self.momentum).add_(grad)
        step = grad.add(v, alpha=self.momentum) if self.nesterov else v
        return z.sub_(step, alpha=self.lr), {"velocity": v}


@dataclass(frozen=True)
class Adam:
    """Adam on the latents (bias-corrected moments)."""

    lr: float = 0.1
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8

    def __post_init__(self) -> None:
        if isinstance(self.lr, bool) or not (0 < self.lr < math.inf):
            raise ValueError(f"latent Adam lr: expected a finite number > 0, got {self.lr!r}")
        if not all(0.0 <= b < 1.0 for b in self.betas):
            raise ValueError(f"latent Adam betas must be in [0, 1), got {self.betas!r}")

    def init(self, z: torch.Tensor) -> OptState:
        return {"m": torch.zeros_like(z), "v": torch.zeros_like(z), "t": 0}

    def update(self, z, grad, state, differentiable):
        b1, b2 = self.betas
        t = state["t"] + 1
        m = b1 * state["m"] + (1 - b1) * grad
        v = b2 * state["v"] + (1 - b2) * grad * grad
        m_hat = m / (1 - b1**t)
        v_hat = v / (1 - b2**t)
        step = self.lr * m_hat / (_sqrt(v_hat, differentiable) + self.eps)
        z = z - step if differentiable else z.sub_(step)
        return z, {"m": m, "v": v, "t": t}


def _sqrt(v: torch.Tensor, differentiable: bool) -> torch.Tensor:
    """``v.sqrt()``. Differentiated, its derivative at ``v == 0`` is 0 instead of inf (there every
    gradient so far was 0, so Adam's step is 0 whatever the root): without this, backprop through
    a step with a zero latent gradient gives ``0 * inf = nan``. The value is unchanged."""
    if not differentiable:
        return v.sqrt()
    positive = v > 0
    return torch.where(positive, torch.where(positive, v, torch.ones_like(v)).sqrt(), torch.zeros_like(v))


class TorchOptimizer:
    """Relax with any ``torch.optim.Optimizer`` class (not differentiable).

    Example: ``TorchOptimizer(torch.optim.RMSprop, lr=0.01)``.
    """

    def __init__(self, cls: type[torch.optim.Optimizer], **kwargs: Any):
        self.cls, self.kwargs = cls, kwargs

    def init(self, z: torch.Tensor) -> OptState:
        leaf = z.detach().clone()
        return {"leaf": leaf, "opt": self.cls([leaf], **self.kwargs)}

    def update(self, z, grad, state, differentiable):
        if differentiable:
            raise ValueError("TorchOptimizer cannot be differentiated through; use pclab SGD or Adam for bp-through-inference")
        leaf = state["leaf"]
        leaf.grad = grad
        state["opt"].step()
        return leaf, state

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.kwargs.items())
        return f"TorchOptimizer({self.cls.__name__}, {args})"
