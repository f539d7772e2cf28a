"""Mini-batches from tensors that already live in memory, without DataLoader overhead."""

from __future__ import annotations

from collections.abc import Iterator

import torch

from pclab.data.dataset import Dataset

__all__ = ["batches"]


def batches(
    data: Dataset | tuple[torch.Tensor, torch.Tensor],
    batch_size: int,
    shuffle: bool = True,
    generator: torch.Generator | int | None = None,
    drop_last: bool = False,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Iterate once (one epoch) over ``(images, labels)`` mini-batches.

    Args:
        data: a :class:`Dataset`, or a pair of tensors with equal first dimension N (e.g. images
            ``(N, C, H, W)`` and labels ``(N,)``).
        batch_size: examples per batch; the last batch is smaller unless ``drop_last``.
        shuffle: visit examples in the order of ``torch.randperm(N, generator=generator)``;
            otherwise in order, as zero-copy slices.
        generator: a ``torch.Generator`` (advanced by each epoch), an int seed (same order every
            call), or None (torch's global RNG).
        drop_last: skip a final batch smaller than ``batch_size``.

    Returns an iterator of ``(images[index], labels[index])`` pairs in which every example appears
    exactly once (with ``drop_last``, the ``N % batch_size`` examples at the end of the order are
    skipped). The permutation is drawn when iteration starts. Batches are on the tensors' device;
    arguments are checked at call time.
    """
    images, labels = (data.images, data.labels) if isinstance(data, Dataset) else data
    if images.shape[0] != labels.shape[0]:
        raise ValueError(
            f"batches: images and labels must share the first dimension, got {images.shape[0]} "
            f"and {labels.shape[0]}"
        )
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batches: batch_size must be a positive int, got {batch_size!r}")
    if isinstance(generator, int):
        generator = torch.Generator().manual_seed(generator)
    return _epoch(images, labels, batch_size, shuffle, generator, drop_last)


def _epoch(
    images: torch.Tensor,
    labels: torch.Tensor,
    batch_size: int,
    shuffle: bool,
    generator: torch.Generator | None,
    drop_last: bool,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """The generator behind :func:`batches` (arguments already validated)."""
    total = int(images.shape[0])
    stop = total - total % batch_size if drop_last else total
    if not shuffle:
        for start in range(0, stop, batch_size):
            yield images[start : start + batch_size], labels[start : start + batch_size]
        return
    order = torch.randperm(total, generator=generator)
    image_order, label_order = order.to(images.device), order.to(labels.device)
    for start in range(0, stop, batch_size):
        end = start + batch_size
        yield (
            images.index_select(0, image_order[start:end]),
            labels.index_select(0, label_order[start:end]),
        )
