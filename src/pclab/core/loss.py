"""The task loss of the backprop rules: MSE and cross-entropy terms on a state's predictions."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from .graph import PCN, State

Batch = Mapping[str, torch.Tensor]


@dataclass(frozen=True)
class TaskLoss:
    """A task loss on the predictions of a state, averaged over the batch.

    ``reconstruct``: node -> weight of ``MSE(mu_node, target)`` (mean over elements).
    ``classify``: node -> weight of ``CE(mu_node, target)``; the target is class indices
    ``(batch,)`` or class probabilities ``(batch, classes)``.
    """

    reconstruct: Mapping[str, float] = field(default_factory=dict)
    classify: Mapping[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.reconstruct and not self.classify:
            raise ValueError("a TaskLoss needs at least one reconstruct or classify term")
        for kind, terms in (("reconstruct", self.reconstruct), ("classify", self.classify)):
            for node, weight in terms.items():
                if not (weight >= 0):
                    raise ValueError(f"TaskLoss {kind} weight of node {node!r} must be >= 0, got {weight!r}")

    @classmethod
    def mix(cls, lam: float, image: str = "x", label: str = "y") -> TaskLoss:
        """``(1 - lam) * MSE(image) + lam * CE(label)``: the classification-reconstruction mix."""
        if not (0.0 <= lam <= 1.0):
            raise ValueError(f"lam must be in [0, 1], got {lam!r}")
        return cls(reconstruct={image: 1.0 - lam}, classify={label: lam})

    @property
    def targets(self) -> set[str]:
        return set(self.reconstruct) | set(self.classify)

    def __call__(self, model: PCN, values: State, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        """``(loss, parts)`` for the predictions at ``values``; parts are per-term floats."""
        mu = {node: model._prediction(node, values) for node in self.targets}  # only those the loss uses
        loss = None
        parts: dict[str, float] = {}
        for node, weight in self.reconstruct.items():
            term = F.mse_loss(mu[node], batch[node])
            parts[f"mse_{node}"] = float(term.detach())
            loss = weight * term if loss is None else loss + weight * term
        for node, weight in self.classify.items():
            term = F.cross_entropy(mu[node], batch[node])
            parts[f"ce_{node}"] = float(term.detach())
            loss = weight * term if loss is None else loss + weight * term
        assert loss is not None
        return loss, parts
