"""Precision schedules over inference steps (Qi, Forasassi, Lukasiewicz & Salvatori 2025).

A schedule gives the precision multiplier of an error node at relaxation step ``t``. Layers are
indexed ``l = 0 .. N-1`` from the input side by the order in which a feed-forward pass reaches
them (``PCN.layer_index``); ``N`` is the number of error-bearing layers. With a feed-forward
initialisation the error starts at the output (``l = N-1``) at ``t = 0`` and moves down one layer
per step, so layer ``l`` first sees error at ``t = N - l - 1``: the spike follows that front.

A schedule multiplies the node's static precision during relaxation only; learning rules use the
static precision (the schedule is a device for the relaxation phase).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol, runtime_checkable


@runtime_checkable
class PrecisionSchedule(Protocol):
    """Precision multiplier of layer ``layer`` (of ``num_layers``) at inference step ``step``."""

    def __call__(self, step: int, layer: int, num_layers: int) -> float: ...

    @property
    def is_constant(self) -> bool: ...


@dataclass(frozen=True)
class Constant:
    """The same multiplier at every step and layer (1.0: plain PC)."""

    value: float = 1.0

    def __call__(self, step: int, layer: int, num_layers: int) -> float:
        return self.value

    @property
    def is_constant(self) -> bool:
        return True


@dataclass(frozen=True)
class Spiking:
    """``pi_l(t) = 1`` if ``t == N - l - 1`` else ``alpha``: a unit spike walking down the layers."""

    alpha: float = 1e-3

    def __post_init__(self) -> None:
        if not (0.0 <= self.alpha <= 1.0):
            raise ValueError(f"Spiking alpha must be in [0, 1], got {self.alpha!r}")

    def __call__(self, step: int, layer: int, num_layers: int) -> float:
        return 1.0 if step == num_layers - layer - 1 else self.alpha

    @property
    def is_constant(self) -> bool:
        return False


@dataclass(frozen=True)
class Decaying:
    """0 before the error front reaches layer ``l``, 1 when it arrives, then ``exp(-k i)``
    ``i`` steps later."""

    k: float = 1.0

    def __post_init__(self) -> None:
        if not (self.k >= 0.0):
            raise ValueError(f"Decaying rate k must be >= 0, got {self.k!r}")

    def __call__(self, step: int, layer: int, num_layers: int) -> float:
        arrival = num_layers - layer - 1
        if step < arrival:
            return 0.0
        return math.exp(-self.k * (step - arrival))

    @property
    def is_constant(self) -> bool:
        return False


def schedule(name: str, **kwargs: float) -> PrecisionSchedule:
    """A schedule by name: ``constant`` (value), ``spiking`` (alpha) or ``decaying`` (k)."""
    kinds = {"constant": Constant, "spiking": Spiking, "decaying": Decaying}
    if name not in kinds:
        raise ValueError(f"unknown precision schedule {name!r}; expected one of {sorted(kinds)}")
    return kinds[name](**kwargs)
