"""batches, one_hot, normalise, Dataset.subset."""

from __future__ import annotations

import pytest
import torch

from pclab.data import Dataset, batches, channel_stats, load, normalise, one_hot


@pytest.fixture(scope="module")
def data() -> Dataset:
    return load("synthetic", "test")  # 200 examples


def _epoch_indices(dataset: Dataset, **kwargs) -> list[int]:
    """Recover the visiting order: labels are replaced by example indices."""
    tagged = (dataset.images, torch.arange(len(dataset)))
    return [int(i) for _, index in batches(tagged, **kwargs) for i in index]


@pytest.mark.parametrize("batch_size", [1, 7, 64, 200, 500])
@pytest.mark.parametrize("shuffle", [True, False])
def test_every_index_is_visited_once_per_epoch(data: Dataset, batch_size: int, shuffle: bool) -> None:
    order = _epoch_indices(data, batch_size=batch_size, shuffle=shuffle, generator=0)
    assert sorted(order) == list(range(len(data)))
    assert (order == list(range(len(data)))) == (not shuffle)


def test_batches_carry_matching_images_and_labels(data: Dataset) -> None:
    seen = 0
    for images, labels in batches(data, 64, generator=3):
        assert images.shape[1:] == (1, 8, 8) and images.shape[0] == labels.shape[0] <= 64
        for image, label in zip(images, labels):
            match = (data.images == image).flatten(1).all(1).nonzero().flatten()
            assert int(data.labels[match[0]]) == int(label)
        seen += len(labels)
    assert seen == len(data)


def test_shuffle_is_deterministic_under_a_seed_and_generator_advances(data: Dataset) -> None:
    assert _epoch_indices(data, batch_size=16, generator=5) == _epoch_indices(data, batch_size=16, generator=5)
    assert _epoch_indices(data, batch_size=16, generator=5) != _epoch_indices(data, batch_size=16, generator=6)
    g1, g2 = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
    first = _epoch_indices(data, batch_size=16, generator=g1)
    assert first == _epoch_indices(data, batch_size=16, generator=g2)
    assert _epoch_indices(data, batch_size=16, generator=g1) != first  # next epoch differs


def test_drop_last_drops_only_the_short_batch(data: Dataset) -> None:
    sizes = [len(y) for _, y in batches(data, 64, shuffle=False, drop_last=True)]
    assert sizes == [64, 64, 64]
    assert [len(y) for _, y in batches(data, 64, shuffle=False)] == [64, 64, 64, 8]


def test_batches_rejects_bad_arguments_immediately(data: Dataset) -> None:
    with pytest.raises(ValueError, match="batch_size must be a positive int, got 0"):
        batches(data, 0)
    with pytest.raises(ValueError, match="share the first dimension, got 200 and 3"):
        batches((data.images, data.labels[:3]), 8)


def test_one_hot() -> None:
    encoded = one_hot(torch.tensor([2, 0]), 3)
    assert encoded.dtype == torch.float32
    assert encoded.tolist() == [[0.0, 0.0, 1.0], [1.0, 0.0, 0.0]]
    with pytest.raises(ValueError, match=r"labels must be in 0..2, got range 0..3"):
        one_hot(torch.tensor([0, 3]), 3)


def test_normalise_kinds(data: Dataset) -> None:
    x = data.images
    assert normalise(x, "unit") is x
    symmetric = normalise(x, "symmetric")
    assert torch.allclose(symmetric, 2 * x - 1) and float(symmetric.min()) >= -1.0
    standard = normalise(x, "standard")
    assert abs(float(standard.mean())) < 1e-5 and abs(float(standard.std(correction=0)) - 1) < 1e-4
    mean, std = channel_stats(x)
    assert mean.shape == (1,) and std.shape == (1,)
    assert torch.allclose(normalise(x[:5], "standard", (mean, std)), (x[:5] - mean) / std)
    with pytest.raises(ValueError, match=r"stats std expected shape \(1,\) or \(1,\), got \(3,\)"):
        normalise(x, "standard", (mean, torch.ones(3)))
    with pytest.raises(ValueError, match="kind must be 'unit', 'symmetric' or 'standard', got 'zscore'"):
        normalise(x, "zscore")  # type: ignore[arg-type]


def test_subset_is_stratified_deterministic_and_ordered(data: Dataset) -> None:
    small = data.subset(50, seed=1)
    assert len(small) == 50 and small.labels.bincount(minlength=10).tolist() == [5] * 10
    again = data.subset(50, seed=1)
    assert torch.equal(small.images, again.images)
    assert not torch.equal(data.subset(50, seed=2).images, small.images)
    assert "stratified subset of 50 (seed 1)" in small.description
    uneven = data.subset(13, seed=0)
    assert len(uneven) == 13 and int(uneven.labels.bincount(minlength=10).max()) == 2
    assert len(data.subset(len(data))) == len(data)
    with pytest.raises(ValueError, match="subset size n must be in 0..200, got 201"):
        data.subset(201)


def test_dataset_validates_its_tensors() -> None:
    with pytest.raises(ValueError, match=r"Dataset.images: expected float32 tensor \(N, C, H, W\), got torch.uint8"):
        Dataset(torch.zeros(2, 1, 2, 2, dtype=torch.uint8), torch.zeros(2, dtype=torch.int64), "x", "train", 2, "")
    with pytest.raises(ValueError, match=r"Dataset.labels: expected values in 0..1, got range 0..5"):
        Dataset(torch.zeros(2, 1, 2, 2), torch.tensor([0, 5]), "x", "train", 2, "")
