"""The in-memory :class:`Dataset` and the small transforms used with it.

A data set lives entirely in two tensors: ``images`` float32 ``(N, C, H, W)`` in [0, 1] and
``labels`` int64 ``(N,)``. Everything the studies need fits in memory (MNIST train: 188 MB).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

import numpy as np
import torch

__all__ = [
    "Dataset",
    "NormaliseKind",
    "normalise",
    "channel_stats",
    "one_hot",
    "stratified_indices",
]

NormaliseKind = Literal["unit", "symmetric", "standard"]


@dataclass(frozen=True, eq=False)
class Dataset:
    """One split of a data set, held in memory.

    Attributes:
        images: float32 ``(N, C, H, W)``, values in [0, 1] (C = 1 for grayscale, 3 for CIFAR-10).
        labels: int64 ``(N,)``, values in ``0..classes-1``.
        name: data set name, e.g. ``"mnist"``.
        split: ``"train"`` or ``"test"``.
        classes: number of classes.
        description: provenance and split, to be quoted wherever a number is reported.
    """

    images: torch.Tensor
    labels: torch.Tensor
    name: str
    split: str
    classes: int
    description: str

    def __post_init__(self) -> None:
        if self.images.dtype != torch.float32 or self.images.ndim != 4:
            raise ValueError(
                f"Dataset.images: expected float32 tensor (N, C, H, W), got {self.images.dtype} "
                f"of shape {tuple(self.images.shape)}"
            )
        if self.labels.dtype != torch.int64 or self.labels.shape != self.images.shape[:1]:
            raise ValueError(
                f"Dataset.labels: expected int64 tensor of shape ({self.images.shape[0]},), got "
                f"{self.labels.dtype} of shape {tuple(self.labels.shape)}"
            )
        low, high = (int(self.labels.min()), int(self.labels.max())) if len(self.labels) else (0, 0)
        if low < 0 or high >= self.classes:
            raise ValueError(
                f"Dataset.labels: expected values in 0..{self.classes - 1}, got range {low}..{high}"
            )

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def __repr__(self) -> str:
        return (
            f"Dataset(name={self.name!r}, split={self.split!r}, n={len(self)}, "
            f"image_shape={self.image_shape}, classes={self.classes})"
        )

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """``(C, H, W)`` of one image."""
        channels, height, width = self.images.shape[1:]
        return int(channels), int(height), int(width)

    def subset(self, n: int, seed: int = 0) -> Dataset:
        """A stratified subset of ``n`` examples, deterministic in ``seed``.

        Each class gets ``n * count_c / N`` examples rounded by largest remainder (ties to the lower
        class), drawn uniformly without replacement with ``numpy.random.default_rng(seed)``; the
        chosen examples keep their original relative order. ``n == len(self)`` returns all of it.
        """
        index = stratified_indices(self.labels.cpu().numpy(), n, seed)
        chosen = torch.from_numpy(index).to(self.labels.device)
        return replace(
            self,
            images=self.images.index_select(0, chosen),
            labels=self.labels.index_select(0, chosen),
            description=f"{self.description}; stratified subset of {n} (seed {seed})",
        )

    def to(self, device: torch.device | str) -> Dataset:
        """The same data set with both tensors on ``device``."""
        return replace(self, images=self.images.to(device), labels=self.labels.to(device))


def stratified_indices(labels: np.ndarray, n: int, seed: int) -> np.ndarray:
    """Sorted indices of a class-stratified sample of size ``n`` from ``labels`` (int, shape (N,)).

    Class quotas are proportional to class counts, rounded by largest remainder (ties broken
    toward the lower class); members are drawn with ``numpy.random.default_rng(seed)``.
    """
    total = len(labels)
    if not 0 <= n <= total:
        raise ValueError(f"subset size n must be in 0..{total}, got {n}")
    values, counts = np.unique(labels, return_counts=True)
    exact = counts * n / total
    quota = np.floor(exact).astype(np.int64)
    remainder_order = np.lexsort((values, -(exact - quota)))
    quota[remainder_order[: n - int(quota.sum())]] += 1
    rng = np.random.default_rng(seed)
    picked = [
        rng.permutation(np.flatnonzero(labels == value))[:k] for value, k in zip(values, quota)
    ]
    return np.sort(np.concatenate(picked)) if picked else np.zeros(0, dtype=np.int64)


def channel_stats(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and (population) std of ``images`` ``(N, C, H, W)``; each of shape ``(C,)``."""
    if images.ndim != 4:
        raise ValueError(f"images: expected (N, C, H, W), got shape {tuple(images.shape)}")
    flat = images.transpose(0, 1).reshape(images.shape[1], -1).double()
    return flat.mean(dim=1).float(), flat.std(dim=1, correction=0).float()


def normalise(
    images: torch.Tensor,
    kind: NormaliseKind,
    stats: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> torch.Tensor:
    """Rescale ``images`` float ``(N, C, H, W)`` with values in [0, 1] (as :func:`load` returns).

    Args:
        images: float tensor ``(N, C, H, W)`` in [0, 1].
        kind: ``"unit"``: unchanged, [0, 1]. ``"symmetric"``: ``2 x - 1``, in [-1, 1] (the range
            used by Rathjens & Wiskott). ``"standard"``: ``(x - mean_c) / std_c`` per channel.
        stats: ``(mean, std)``, each ``(C,)``, for ``"standard"``. Default: computed from
            ``images`` itself. To normalise a test set, pass ``channel_stats(train.images)``.

    Returns a new tensor of the same shape and dtype (``"unit"`` returns ``images`` itself).
    """
    if kind == "unit":
        return images
    if kind == "symmetric":
        return images * 2.0 - 1.0
    if kind == "standard":
        mean, std = channel_stats(images) if stats is None else stats
        mean, std = (_per_channel(v, images, label) for v, label in ((mean, "mean"), (std, "std")))
        return (images - mean) / std.clamp_min(1e-12)
    raise ValueError(f"normalise: kind must be 'unit', 'symmetric' or 'standard', got {kind!r}")


def _per_channel(value: torch.Tensor | float, images: torch.Tensor, label: str) -> torch.Tensor:
    """``value`` (scalar, ``(1,)`` or ``(C,)``) as a ``(1, C, 1, 1)`` tensor matching ``images``."""
    tensor = torch.as_tensor(value, dtype=images.dtype, device=images.device).flatten()
    if tensor.numel() not in (1, images.shape[1]):
        raise ValueError(
            f"normalise: stats {label} expected shape ({images.shape[1]},) or (1,), got "
            f"{tuple(tensor.shape)}"
        )
    return tensor.reshape(1, -1, 1, 1)


def one_hot(labels: torch.Tensor, classes: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """One-hot encode int ``labels`` ``(N,)`` with values in ``0..classes-1``: ``dtype (N, classes)``."""
    if labels.dtype not in (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8):
        raise ValueError(f"one_hot: labels must be an integer tensor, got {labels.dtype}")
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= classes):
        raise ValueError(
            f"one_hot: labels must be in 0..{classes - 1}, got range "
            f"{int(labels.min())}..{int(labels.max())}"
        )
    return torch.nn.functional.one_hot(labels.long(), classes).to(dtype)
