"""BatchNorm for PCNs whose running statistics move only in the weight phase (Qi et al. 2025).

A PCN evaluates its edge modules many times per batch: once for the feed-forward initialisation,
once or more per relaxation step, once for the weight update. An ``nn.BatchNorm`` in train mode would
update its running statistics at every one of those calls. :class:`PhasedBatchNorm` normalises with
the current batch's statistics during relaxation *without* touching the running statistics, updates
them exactly once per batch in the weight phase (inside :func:`weight_phase`), and uses them in
eval mode. :class:`WeightPhasePCLearning` is the PC rule that opens the weight phase around its
weight-energy forward pass.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

from .learning import PCLearning
from .relax import Relaxed


class PhasedBatchNorm(nn.Module):
    """Batch normalisation over the channel dimension 1 of ``(batch, C)`` or ``(batch, C, H, W)``.

    * train mode, ``phase == "relax"`` (default): batch statistics, running statistics untouched;
    * train mode, ``phase == "weight"``: batch statistics, running statistics updated (momentum);
    * eval mode: running statistics.

    Args:
        features: number of channels ``C``.
        momentum: running-average factor (as ``nn.BatchNorm``).
        eps: added to the variance.
        affine: learn a per-channel scale and shift.
    """

    def __init__(self, features: int, momentum: float = 0.1, eps: float = 1e-5, affine: bool = True):
        super().__init__()
        self.momentum, self.eps = momentum, eps
        self.weight = nn.Parameter(torch.ones(features)) if affine else None
        self.bias = nn.Parameter(torch.zeros(features)) if affine else None
        self.register_buffer("running_mean", torch.zeros(features))
        self.register_buffer("running_var", torch.ones(features))
        self.register_buffer("num_batches_tracked", torch.zeros((), dtype=torch.long))
        self.phase = "relax"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps)
        if self.phase == "weight":
            self.num_batches_tracked += 1
            return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, True, self.momentum, self.eps)
        if self.phase != "relax":
            raise ValueError(f"PhasedBatchNorm phase must be 'relax' or 'weight', got {self.phase!r}")
        return F.batch_norm(x, None, None, self.weight, self.bias, True, 0.0, self.eps)

    def extra_repr(self) -> str:
        return f"features={self.running_mean.numel()}, momentum={self.momentum}, phase={self.phase!r}"


@contextmanager
def weight_phase(model: nn.Module) -> Iterator[None]:
    """Within this block every :class:`PhasedBatchNorm` of ``model`` updates its running statistics."""
    norms = [m for m in model.modules() if isinstance(m, PhasedBatchNorm)]
    previous = [m.phase for m in norms]
    for m in norms:
        m.phase = "weight"
    try:
        yield
    finally:
        for m, p in zip(norms, previous):
            m.phase = p


class WeightPhasePCLearning(PCLearning):
    """:class:`PCLearning` whose weight-energy pass is the weight phase of the model's
    :class:`PhasedBatchNorm` layers (running statistics move once per batch, never during relaxation)."""

    def weight_energy(self, relaxed: Relaxed) -> torch.Tensor:
        with weight_phase(self.model):
            return super().weight_energy(relaxed)
