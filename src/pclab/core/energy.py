"""Node energies: how a value node scores its prediction error.

Every energy is per sample: ``value(z, mu)`` returns a ``(batch,)`` tensor, summed over all
non-batch dimensions. A node's energy is multiplied by its ``precision`` (a scalar weight, the
inverse variance for Gaussian nodes). Precision schedules over inference steps live in
:mod:`pclab.core.precision` and multiply this static precision during relaxation only.

The gradients are written out by hand (they are used on the hot path of relaxation and must
stay differentiable for backprop through inference); tests check them against autograd.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


def _sum_features(t: torch.Tensor) -> torch.Tensor:
    """Sum over every dimension except the first (batch): ``(batch, ...) -> (batch,)``."""
    return t.reshape(t.shape[0], -1).sum(dim=1)


@dataclass(frozen=True)
class Gaussian:
    """Squared-error energy ``precision/2 * ||z - mu||^2`` of a Gaussian node.

    Args:
        precision: inverse variance of the node's prediction error (a positive scalar).
    """

    precision: float = 1.0

    def __post_init__(self) -> None:
        if not (self.precision >= 0.0):
            raise ValueError(f"Gaussian precision must be >= 0, got {self.precision!r}")

    def value(self, z: torch.Tensor, mu: torch.Tensor) -> torch.Tensor:
        """Energy per sample, ``(batch,)``, without the precision factor."""
        return 0.5 * _sum_features((z - mu) ** 2)

    def grad_z(self, z: torch.Tensor, mu: torch.Tensor) -> torch.Tensor:
        """dE/dz per sample (same shape as z), without the precision factor."""
        return z - mu

    def grad_mu(self, z: torch.Tensor, mu: torch.Tensor) -> torch.Tensor:
        """dE/dmu per sample (same shape as mu), without the precision factor."""
        return mu - z

    def released(self, mu: torch.Tensor) -> torch.Tensor:
        """The value a free node takes at its energy's minimum given its prediction."""
        return mu


@dataclass(frozen=True)
class CrossEntropy:
    """Cross-entropy energy ``-precision * sum_k z_k log softmax(mu)_k`` of a label node.

    ``z`` is a distribution over classes (one-hot when clamped to a label); ``mu`` are logits.
    A cross-entropy node is meant to be clamped. Released, it is a read-out: its value is
    ``softmax(mu)`` and it contributes no energy (see :meth:`PCN.energies`).

    Args:
        precision: weight of this energy against the others (e.g. ``lam`` in a
            classification-reconstruction mix).
    """

    precision: float = 1.0

    def __post_init__(self) -> None:
        if not (self.precision >= 0.0):
            raise ValueError(f"CrossEntropy precision must be >= 0, got {self.precision!r}")

    def value(self, z: torch.Tensor, mu: torch.Tensor) -> torch.Tensor:
        return -_sum_features(z * F.log_softmax(mu, dim=1))

    def grad_z(self, z: torch.Tensor, mu: torch.Tensor) -> torch.Tensor:
        return -F.log_softmax(mu, dim=1)

    def grad_mu(self, z: torch.Tensor, mu: torch.Tensor) -> torch.Tensor:
        # d/dmu of -sum z log softmax(mu) = softmax(mu) * sum(z) - z.
        return torch.softmax(mu, dim=1) * z.sum(dim=1, keepdim=True) - z

    def released(self, mu: torch.Tensor) -> torch.Tensor:
        return torch.softmax(mu, dim=1)


Energy = Gaussian | CrossEntropy
"""Any node energy. Both kinds share ``value``, ``grad_z``, ``grad_mu``, ``released``."""
