"""lottery_kd.data: digits splits, the CIFAR-10 binary reader, load_dataset and its errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from lottery_kd.data import (
    DATASET_NAMES,
    SOURCES,
    DataError,
    Dataset,
    channel_mean_std,
    load_dataset,
    train_validation_indices,
)
from lottery_kd.data import cifar, digits

CIFAR10_DIR = Path(__file__).resolve().parents[1].parent / "shared/data/cifar10"
ALL_CIFAR_FILES = cifar.TRAIN_FILES + cifar.TEST_FILES

needs_cifar10 = pytest.mark.skipif(
    not CIFAR10_DIR.is_dir(), reason=f"real CIFAR-10 binary files not found at {CIFAR10_DIR}"
)


def make_fake_cifar_dir(folder: Path, sizes: dict[str, int] | None = None) -> Path:
    """Write sparse all-zero CIFAR-10 files (official size unless `sizes` overrides one)."""
    folder.mkdir(parents=True, exist_ok=True)
    sizes = sizes or {}
    for file_name in ALL_CIFAR_FILES:
        with open(folder / file_name, "wb") as f:
            f.truncate(sizes.get(file_name, cifar.FILE_BYTES))
    return folder


@pytest.fixture(scope="module")
def fake_cifar_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_fake_cifar_dir(tmp_path_factory.mktemp("fake_cifar10"))


@pytest.fixture(scope="module")
def cifar_train() -> tuple[np.ndarray, np.ndarray]:
    if not CIFAR10_DIR.is_dir():
        pytest.skip(f"real CIFAR-10 binary files not found at {CIFAR10_DIR}")
    return cifar.load_local(CIFAR10_DIR, "train")


@pytest.fixture(scope="module")
def cifar_with_validation() -> Dataset:
    if not CIFAR10_DIR.is_dir():
        pytest.skip(f"real CIFAR-10 binary files not found at {CIFAR10_DIR}")
    return load_dataset("cifar10", directory=str(CIFAR10_DIR), validation_size=5000)


# ---------------------------------------------------------------- digits


def test_digits_shapes_dtypes_and_split_sizes() -> None:
    ds = load_dataset("digits")
    assert ds.name == "digits" and ds.num_classes == 10 and ds.augment is False
    for images, labels, size in [
        (ds.train_images, ds.train_labels, 1257),
        (ds.val_images, ds.val_labels, 180),
        (ds.test_images, ds.test_labels, 360),
    ]:
        assert images.shape == (size, 8, 8, 1) and images.dtype == np.uint8
        assert labels.shape == (size,) and labels.dtype == np.int32
        assert labels.min() == 0 and labels.max() == 9
        assert images.max() == 16  # raw 0..16 values, not rescaled


def test_digits_splits_are_disjoint_and_cover_everything() -> None:
    train, val, test = digits.digits_split_indices(1797)
    assert (len(train), len(val), len(test)) == (1257, 180, 360)
    combined = np.concatenate([train, val, test])
    assert np.array_equal(np.sort(combined), np.arange(1797))


def test_digits_is_deterministic_and_ignores_validation_size() -> None:
    first = load_dataset("digits")
    second = load_dataset("digits", validation_size=999, directory="/nonexistent")
    for field in ("train_images", "train_labels", "val_images", "val_labels", "test_images",
                  "test_labels"):
        assert np.array_equal(getattr(first, field), getattr(second, field)), field


def test_digits_split_matches_sklearn_order() -> None:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    train, val, test = digits.digits_split_indices(len(bunch.target))
    ds = load_dataset("digits")
    assert np.array_equal(ds.test_labels, bunch.target[test])
    assert np.array_equal(ds.val_images[..., 0], bunch.images[val].astype(np.uint8))
    assert np.array_equal(ds.train_labels, bunch.target[train])


def test_mean_std_are_train_statistics() -> None:
    ds = load_dataset("digits", train_subset=100)
    assert ds.train_images.shape[0] == 100
    pixels = ds.train_images.astype(np.float64).reshape(-1, 1)
    np.testing.assert_allclose(ds.mean, pixels.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(ds.std, pixels.std(axis=0), rtol=1e-12)
    assert all(type(value) is float for value in ds.mean + ds.std)


def test_channel_mean_std_multichannel() -> None:
    images = np.random.default_rng(1).integers(0, 256, size=(7, 5, 4, 3), dtype=np.uint8)
    mean, std = channel_mean_std(images)
    flat = images.reshape(-1, 3).astype(np.float64)
    np.testing.assert_allclose(mean, flat.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(std, flat.std(axis=0), rtol=1e-12)


# ---------------------------------------------------------------- validation split


def test_train_validation_indices() -> None:
    train, val = train_validation_indices(50000, 5000)
    assert len(train) == 45000 and len(val) == 5000
    assert np.all(np.diff(train) > 0) and np.all(np.diff(val) > 0)  # sorted, no repeats
    assert np.intersect1d(train, val).size == 0
    assert np.array_equal(np.sort(np.concatenate([train, val])), np.arange(50000))
    again_train, again_val = train_validation_indices(50000, 5000)
    assert np.array_equal(train, again_train) and np.array_equal(val, again_val)
    all_train, no_val = train_validation_indices(50000, 0)
    assert np.array_equal(all_train, np.arange(50000)) and no_val.size == 0


@pytest.mark.parametrize("validation_size", [-1, 50000])
def test_validation_size_out_of_range(validation_size: int, fake_cifar_dir: Path) -> None:
    with pytest.raises(DataError, match="data.validation_size"):
        load_dataset("cifar10", directory=str(fake_cifar_dir), validation_size=validation_size)


# ---------------------------------------------------------------- CIFAR-10 on real files


@needs_cifar10
def test_cifar_check_local_accepts_real_files() -> None:
    cifar.check_local(CIFAR10_DIR)


def test_cifar_train_split(cifar_train: tuple[np.ndarray, np.ndarray]) -> None:
    images, labels = cifar_train
    assert images.shape == (50000, 32, 32, 3) and images.dtype == np.uint8
    assert labels.shape == (50000,) and labels.dtype == np.int32
    assert labels[:10].tolist() == [6, 9, 9, 4, 1, 1, 2, 7, 8, 3]
    assert np.bincount(labels, minlength=10).tolist() == [5000] * 10


@needs_cifar10
def test_cifar_test_split() -> None:
    images, labels = cifar.load_local(CIFAR10_DIR, "test")
    assert images.shape == (10000, 32, 32, 3) and images.dtype == np.uint8
    assert labels.dtype == np.int32
    assert np.bincount(labels, minlength=10).tolist() == [1000] * 10


def test_cifar_pixels_match_raw_bytes(cifar_train: tuple[np.ndarray, np.ndarray]) -> None:
    images, labels = cifar_train
    raw = np.fromfile(CIFAR10_DIR / "data_batch_1.bin", dtype=np.uint8,
                      count=2 * cifar.RECORD_BYTES)
    assert labels[0] == raw[0]
    for channel in range(3):
        plane = raw[1 + 1024 * channel : 1 + 1024 * (channel + 1)].reshape(32, 32)
        assert np.array_equal(images[0, :, :, channel], plane), channel
    second_record = raw[cifar.RECORD_BYTES :]
    assert labels[1] == second_record[0]
    assert np.array_equal(images[1, :, :, 2], second_record[1 + 2048 :].reshape(32, 32))
    # First record of the second file lands at index 10000.
    raw_batch2 = np.fromfile(CIFAR10_DIR / "data_batch_2.bin", dtype=np.uint8,
                             count=cifar.RECORD_BYTES)
    assert labels[10000] == raw_batch2[0]
    assert np.array_equal(images[10000, :, :, 0], raw_batch2[1:1025].reshape(32, 32))


def test_cifar_load_dataset_with_validation(
    cifar_with_validation: Dataset, cifar_train: tuple[np.ndarray, np.ndarray]
) -> None:
    ds = cifar_with_validation
    assert ds.name == "cifar10" and ds.num_classes == 10 and ds.augment is True
    assert ds.train_images.shape == (45000, 32, 32, 3) and ds.train_labels.shape == (45000,)
    assert ds.val_images.shape == (5000, 32, 32, 3) and ds.val_labels.shape == (5000,)
    assert ds.test_images.shape == (10000, 32, 32, 3) and ds.test_labels.shape == (10000,)
    counts = np.bincount(ds.train_labels, minlength=10) + np.bincount(ds.val_labels, minlength=10)
    assert counts.tolist() == [5000] * 10
    # The split is exactly the one train_validation_indices describes, in official order.
    all_images, all_labels = cifar_train
    train_index, val_index = train_validation_indices(50000, 5000)
    assert np.array_equal(ds.val_labels, all_labels[val_index])
    assert np.array_equal(ds.val_images, all_images[val_index])
    assert np.array_equal(ds.train_labels, all_labels[train_index])
    assert np.array_equal(ds.train_images[-1], all_images[train_index[-1]])
    # Known CIFAR-10 train statistics (full train set: 125.3, 123.0, 113.9 / 63.0, 62.1, 66.7).
    np.testing.assert_allclose(ds.mean, (125.3, 123.0, 113.9), atol=0.5)
    np.testing.assert_allclose(ds.std, (63.0, 62.1, 66.7), atol=0.5)


@needs_cifar10
def test_cifar_split_does_not_depend_on_the_subset(cifar_with_validation: Dataset) -> None:
    other = load_dataset("cifar10", directory=str(CIFAR10_DIR), validation_size=5000,
                         train_subset=5000)
    assert other.train_images.shape == (5000, 32, 32, 3) and other.train_labels.shape == (5000,)
    assert np.array_equal(other.train_labels, cifar_with_validation.train_labels[:5000])
    assert np.array_equal(other.train_images, cifar_with_validation.train_images[:5000])
    assert np.array_equal(other.val_labels, cifar_with_validation.val_labels)
    assert np.array_equal(other.val_images, cifar_with_validation.val_images)
    assert np.array_equal(other.test_labels, cifar_with_validation.test_labels)


# ---------------------------------------------------------------- CIFAR-10 on fake files


def test_fake_correct_size_files_load_as_zeros(fake_cifar_dir: Path) -> None:
    cifar.check_local(fake_cifar_dir)
    images, labels = cifar.load_local(fake_cifar_dir, "test")
    assert images.shape == (10000, 32, 32, 3) and not images.any()
    assert labels.dtype == np.int32 and not labels.any()


def test_fake_load_dataset_and_subset(fake_cifar_dir: Path) -> None:
    ds = load_dataset("cifar10", directory=str(fake_cifar_dir), validation_size=1000,
                      train_subset=300, verify_checksums=False)
    assert ds.train_images.shape == (300, 32, 32, 3)
    assert ds.val_images.shape == (1000, 32, 32, 3) and ds.test_labels.shape == (10000,)
    assert ds.mean == (0.0, 0.0, 0.0) and ds.std == (0.0, 0.0, 0.0)
    full = load_dataset("cifar10", directory=str(fake_cifar_dir), verify_checksums=False)
    assert full.train_images.shape == (50000, 32, 32, 3) and full.val_images.shape == (0, 32, 32, 3)
    assert full.val_labels.shape == (0,) and full.val_labels.dtype == np.int32


def test_bad_labels_are_rejected(tmp_path: Path) -> None:
    folder = make_fake_cifar_dir(tmp_path / "bad_labels")
    with open(folder / "test_batch.bin", "r+b") as f:
        f.seek(cifar.RECORD_BYTES * 5)
        f.write(bytes([10]))
    with pytest.raises(DataError, match="labels outside 0..9"):
        cifar.load_local(folder, "test")


# ---------------------------------------------------------------- errors


def test_empty_directory_lists_every_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DataError) as info:
        cifar.check_local(tmp_path)
    message = str(info.value)
    assert "data.dir" in message and str(tmp_path) in message
    for file_name in ALL_CIFAR_FILES:
        assert file_name in message
    assert "missing (6)" in message


def test_nonexistent_directory(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="not an existing folder"):
        load_dataset("cifar10", directory=str(tmp_path / "nope"))


def test_wrong_size_file_is_named_with_both_sizes(tmp_path: Path) -> None:
    folder = make_fake_cifar_dir(tmp_path / "cifar", sizes={"data_batch_3.bin": 1234})
    (folder / "test_batch.bin").unlink()
    with pytest.raises(DataError) as info:
        cifar.check_local(folder)
    message = str(info.value)
    assert "data_batch_3.bin has 1,234 bytes, expected 30,730,000 bytes" in message
    assert "missing (1): test_batch.bin" in message
    assert "data_batch_1.bin" not in message.split("Set data.dir")[0]  # good files are not listed
    assert "data.dir" in message
    # load_local checks only the files of the split it reads.
    with pytest.raises(DataError, match="data_batch_3.bin"):
        cifar.load_local(folder, "train")


def test_empty_directory_setting() -> None:
    with pytest.raises(DataError) as info:
        load_dataset("cifar10", directory="")
    assert "data.dir" in str(info.value) and "--config.data.dir=PATH" in str(info.value)


def test_unknown_name_source_and_split(fake_cifar_dir: Path) -> None:
    with pytest.raises(DataError) as info:
        load_dataset("mnist")
    assert "data.name" in str(info.value) and "'mnist'" in str(info.value)
    assert all(repr(name) in str(info.value) for name in DATASET_NAMES)

    with pytest.raises(DataError) as info:
        load_dataset("cifar10", source="hub", directory=str(fake_cifar_dir))
    assert "data.source" in str(info.value) and "'hub'" in str(info.value)
    assert all(repr(source) in str(info.value) for source in SOURCES)

    with pytest.raises(DataError) as info:
        cifar.load_local(fake_cifar_dir, "validation")
    assert all(name in str(info.value) for name in ("'validation'", "'train'", "'test'"))


def test_train_subset_limits(fake_cifar_dir: Path) -> None:
    with pytest.raises(DataError, match=r"data\.train_subset=1258.*maximum 1257"):
        load_dataset("digits", train_subset=1258)
    with pytest.raises(DataError, match=r"data\.train_subset=45001.*maximum 45000"):
        load_dataset("cifar10", directory=str(fake_cifar_dir), validation_size=5000,
                     train_subset=45001, verify_checksums=False)
    with pytest.raises(DataError, match=r"data\.train_subset"):
        load_dataset("digits", train_subset=-1)
    assert load_dataset("digits", train_subset=1257).train_images.shape[0] == 1257


def test_data_error_is_a_value_error() -> None:
    assert issubclass(DataError, ValueError)


def test_right_size_but_wrong_content_fails_the_official_checksum(fake_cifar_dir: Path) -> None:
    with pytest.raises(DataError) as error:
        load_dataset("cifar10", directory=str(fake_cifar_dir))
    message = str(error.value)
    for name in cifar.TRAIN_FILES + cifar.TEST_FILES:
        assert f"{name} has sha256 " in message
        assert cifar.CIFAR10.sha256[name] in message
    assert "data.dir" in message


def test_real_files_pass_the_official_checksums() -> None:
    if not CIFAR10_DIR.is_dir():
        pytest.skip(f"real CIFAR-10 not found at {CIFAR10_DIR}")
    cifar.check_local(CIFAR10_DIR, verify_checksums=True)


def test_cifar100_binary_layout_uses_the_fine_label(tmp_path: Path) -> None:
    folder = tmp_path / "cifar-100-binary"
    folder.mkdir()
    for name, count in (("train.bin", 50000), ("test.bin", 10000)):
        records = np.zeros((count, 3074), np.uint8)
        records[:, 0] = np.arange(count) % 20          # coarse label
        records[:, 1] = np.arange(count) % 100         # fine label
        records[:, 2] = 7                               # first red pixel
        records.tofile(folder / name)
    ds = load_dataset("cifar100", source="local", directory=str(folder), validation_size=5000)
    assert ds.num_classes == 100
    assert sorted(set(ds.train_labels.tolist()) | set(ds.val_labels.tolist())) == list(range(100))
    assert ds.test_labels[:3].tolist() == [0, 1, 2]
    assert np.all(ds.test_images[:, 0, 0, 0] == 7)
    with pytest.raises(DataError, match="train.bin has 100 bytes, expected 153,700,000 bytes"):
        (folder / "train.bin").write_bytes(b"0" * 100)
        load_dataset("cifar100", source="local", directory=str(folder))


def test_auto_source_means_local_with_a_directory_else_tfds() -> None:
    from lottery_kd.data import resolve_source
    assert resolve_source("auto", "/some/dir") == "local"
    assert resolve_source("auto", "") == "tfds"
    assert resolve_source("tfds", "/some/dir") == "tfds"
