"""Read-outs: what a (trained) PCN says about a batch.

Each function names the nodes it uses; defaults follow pclab's builders (``x`` image, ``y`` label).
"""

from __future__ import annotations

import torch

from .graph import PCN
from .relax import Inference, relax


def classify(model: PCN, x: torch.Tensor, inference: Inference | None = None, image: str = "x", label: str = "y") -> torch.Tensor:
    """Logits ``(batch, classes)`` of ``label`` given ``image``.

    With ``inference=None`` this is the feed-forward prediction; otherwise the prediction after
    relaxing with only the image clamped (the label released).
    """
    with torch.no_grad():
        if inference is None:
            values = model.initial_state({image: x}, "forward")
        else:
            values = relax(model, {image: x}, inference).values
        return model.predictions(values)[label]


def reconstruct(model: PCN, x: torch.Tensor, inference: Inference, image: str = "x") -> torch.Tensor:
    """The image predicted from the latents inferred with ``image`` clamped: ``(batch, *image.shape)``."""
    with torch.no_grad():
        values = relax(model, {image: x}, inference).values
        return model.predictions(values)[image]


def generate(model: PCN, clamp: dict[str, torch.Tensor], inference: Inference, image: str = "x") -> torch.Tensor:
    """The value of ``image`` after relaxing with ``clamp`` (e.g. a one-hot label) fixed."""
    if image in clamp:
        raise ValueError(f"generate() infers node {image!r}; do not clamp it")
    with torch.no_grad():
        return relax(model, clamp, inference).values[image]
