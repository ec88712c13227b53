"""Classification data sets held in host memory as uint8 NHWC images and int32 labels.

`load_dataset` is the single entry point for in-memory data sets: it reads a data set from a
source ("local" official files or "tfds"), makes the fixed train/validation split, optionally
keeps a train subset, and records the per-channel mean/std the trainer normalises with (the
training images' own, or fixed constants; None for per-image standardisation).
ImageNet is too large for memory and is streamed instead (lottery_kd.data.imagenet).
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import numpy as np

from lottery_kd.data import cifar, digits
from lottery_kd.data.errors import DataError

__all__ = [
    "DATASET_NAMES",
    "NORMALIZATIONS",
    "SOURCES",
    "DataError",
    "Dataset",
    "channel_mean_std",
    "load_dataset",
    "train_validation_indices",
]

DATASET_NAMES = ("digits", "cifar10", "cifar100", "imagenet2012")
IN_MEMORY_NAMES = ("digits", "cifar10", "cifar100")
STREAMED_NAMES = ("imagenet2012",)
SOURCES = ("auto", "local", "tfds")  # auto: local when a directory is given, else tfds
CIFAR10_TRAIN_SIZE = cifar.RECORDS_PER_FILE * len(cifar.TRAIN_FILES)
VALIDATION_SPLIT_SEED = 0  # fixed so the validation split never depends on the run seed
# How images are normalised: per channel with the training images' statistics, per channel with
# the constants of the KD-ticket release (CIFAR-10 only), or each image to mean 0 and std 1.
NORMALIZATIONS = ("train_statistics", "cifar10_constants", "per_image")
# The KD-ticket release's CIFAR-10 normalisation (torchvision Normalize), in uint8 pixel units.
CIFAR10_CONSTANTS_MEAN = tuple(255 * m for m in (0.4914, 0.4822, 0.4465))
CIFAR10_CONSTANTS_STD = tuple(255 * s for s in (0.2023, 0.1994, 0.2010))


# eq=False: field-wise == on numpy arrays is ambiguous
@dataclasses.dataclass(frozen=True, eq=False)
class Dataset:
    """A classification dataset held in host memory as uint8 images (NHWC) and int32 labels."""

    name: str
    train_images: np.ndarray  # uint8 [N, H, W, C]
    train_labels: np.ndarray  # int32 [N]
    val_images: np.ndarray  # uint8 [M, H, W, C]; M may be 0 (no validation split)
    val_labels: np.ndarray  # int32 [M]
    test_images: np.ndarray
    test_labels: np.ndarray
    num_classes: int
    # per-channel mean and std the images are normalised with, in uint8 pixel units (by default
    # the TRAIN images' own); None: each image is standardised by its own mean and std
    mean: Optional[tuple[float, ...]]
    std: Optional[tuple[float, ...]]
    augment: bool  # True: the trainer applies pad-4 random crop + horizontal flip


def _read_cifar(name: str, source: str, directory: str, tfds_data_dir: str, tfds_download: bool,
                verify_checksums: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(train_images, train_labels, test_images, test_labels) of CIFAR-10/100 in official order."""
    if source == "tfds":
        from lottery_kd.data import tfds_source
        return tfds_source.load_cifar(name, data_dir=tfds_data_dir or None, download=tfds_download)
    fmt = cifar.get_format(name)
    if not directory:
        raise DataError(
            "data.source='local' needs data.dir: set --config.data.dir=PATH to a folder holding "
            f"the official {name} binary files "
            f"({', '.join(fmt.train_files + fmt.test_files)}), or use data.source='tfds'.")
    cifar.check_local(directory, name, verify_checksums=verify_checksums)
    train_images, train_labels = cifar.load_local(directory, "train", name)
    test_images, test_labels = cifar.load_local(directory, "test", name)
    return train_images, train_labels, test_images, test_labels


def resolve_source(source: str, directory: str) -> str:
    """'auto' means the official files in `directory` when one is given, tfds otherwise."""
    if source == "auto":
        return "local" if directory else "tfds"
    return source


def _allowed(values: tuple[str, ...]) -> str:
    return ", ".join(repr(value) for value in values)


def train_validation_indices(num_train: int, validation_size: int,
                             split: str = "random") -> tuple[np.ndarray, np.ndarray]:
    """Split range(num_train) into (train, validation) index arrays, each sorted ascending.

    split="first": the validation set is the first `validation_size` images (the KD-ticket
    release's dev split). split="random": the last `validation_size` entries of a permutation
    drawn with a fixed seed. Either way the split is the same for every run seed, and the
    official order is kept within each part.
    """
    if not 0 <= validation_size < num_train:
        raise DataError(
            f"data.validation_size={validation_size} is out of range; allowed: "
            f"0 <= data.validation_size < {num_train}."
        )
    if validation_size == 0:
        return np.arange(num_train), np.arange(0)
    if split == "first":
        return np.arange(validation_size, num_train), np.arange(validation_size)
    if split != "random":
        raise DataError(f"data.validation_split={split!r}; allowed: 'first', 'random'.")
    order = np.random.default_rng(VALIDATION_SPLIT_SEED).permutation(num_train)
    return np.sort(order[:-validation_size]), np.sort(order[-validation_size:])


def channel_mean_std(images: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and (population) std of uint8 NHWC images, in pixel units.

    Works from a histogram of pixel values, so it is exact in float64 and never builds a float copy
    of the images (which for CIFAR-10 would take over a gigabyte).
    """
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[0] == 0:
        raise ValueError("expected non-empty uint8 [N, H, W, C] images, got "
                         f"{images.dtype} {images.shape}")
    pixel_values = np.arange(256, dtype=np.float64)
    means, stds = [], []
    for channel in range(images.shape[-1]):
        counts = np.bincount(images[..., channel].ravel(), minlength=256).astype(np.float64)
        total = counts.sum()
        mean = float(counts @ pixel_values / total)
        variance = float(counts @ (pixel_values - mean) ** 2 / total)
        means.append(mean)
        stds.append(float(np.sqrt(variance)))
    return tuple(means), tuple(stds)


def _check_arguments(name: str, source: str, normalization: str, train_subset: int) -> None:
    """DataError for a setting load_dataset cannot honour, before anything is read."""
    if name not in DATASET_NAMES:
        raise DataError(f"Unknown data.name={name!r}; allowed values: {_allowed(DATASET_NAMES)}.")
    if name in STREAMED_NAMES:
        raise DataError(f"data.name={name!r} is streamed, not held in memory: use "
                        "lottery_kd.data.inputs.input_data_from_config.")
    if source not in SOURCES:
        raise DataError(f"Unknown data.source={source!r}; allowed values: {_allowed(SOURCES)}.")
    if normalization not in NORMALIZATIONS:
        raise DataError(f"Unknown data.normalization={normalization!r}; allowed values: "
                        f"{_allowed(NORMALIZATIONS)}.")
    if train_subset < 0:
        raise DataError(f"data.train_subset={train_subset} is negative; "
                        "use 0 for all train images.")


def _cifar_splits(name: str, source: str, directory: str, validation_size: int,
                  validation_split: str, tfds_data_dir: str, tfds_download: bool,
                  verify_checksums: bool) -> tuple[np.ndarray, ...]:
    """(train x, y, validation x, y, test x, y) of CIFAR-10/100, the validation images taken from
    the training split as `validation_split` says."""
    if not 0 <= validation_size < CIFAR10_TRAIN_SIZE:  # checked before reading anything
        raise DataError(
            f"data.validation_size={validation_size} is out of range for {name}; "
            f"allowed: 0 <= data.validation_size < {CIFAR10_TRAIN_SIZE}."
        )
    all_train_x, all_train_y, test_x, test_y = _read_cifar(
        name, source, directory, tfds_data_dir, tfds_download, verify_checksums)
    if validation_size >= len(all_train_y):  # a smaller copy (e.g. tfds mock data)
        raise DataError(f"data.validation_size={validation_size} leaves no training images "
                        f"of the {len(all_train_y)} in this {name}.")
    train_index, val_index = train_validation_indices(len(all_train_y), validation_size,
                                                      validation_split)
    if validation_size == 0:
        train_x, train_y = all_train_x, all_train_y
    else:
        train_x, train_y = all_train_x[train_index], all_train_y[train_index]
    val_x, val_y = all_train_x[val_index], all_train_y[val_index]
    return train_x, train_y, val_x, val_y, test_x, test_y


def _normalization_stats(train_x: np.ndarray, normalization: str):
    """(mean, std) per channel for `normalization`: the training images' own, the KD-ticket
    CIFAR-10 constants, or (None, None) where each image is standardised on its own."""
    if normalization == "cifar10_constants":
        return CIFAR10_CONSTANTS_MEAN, CIFAR10_CONSTANTS_STD
    if normalization == "per_image":
        return None, None
    return channel_mean_std(train_x)


def load_dataset(
    name: str,
    *,
    source: str = "local",
    directory: str = "",
    validation_size: int = 0,
    validation_split: str = "random",
    normalization: str = "train_statistics",
    train_subset: int = 0,
    tfds_data_dir: str = "",
    tfds_download: bool = True,
    verify_checksums: bool = True,
) -> Dataset:
    """Load data set `name` into host memory with its fixed splits.

    - "digits": scikit-learn's bundled 8x8 digits; fixed 1257/180/360 train/val/test split
      (`directory` and `validation_size` are ignored), no augmentation.
    - "cifar10", "cifar100": from `source`: "local" (the official binary files in `directory`,
      checked against the official SHA-256s with `verify_checksums`) or "tfds" (tfds.load from
      `tfds_data_dir`, downloading if allowed; records put back in official order). The last
      `validation_size` of a fixed-seed permutation of the 50,000 train images become validation
      (`validation_split="random"`), or the first `validation_size` (`"first"`).
    `normalization` (NORMALIZATIONS) decides the mean/std recorded for the trainer: the training
    images' own (after the split and subset), the KD-ticket CIFAR-10 constants, or None (each
    image standardised on its own). `train_subset` > 0 keeps the first `train_subset` train
    images (0 keeps all). No split depends on the study's seed (each uses a fixed one), so runs
    with different seeds compare fairly.
    """
    _check_arguments(name, source, normalization, train_subset)
    source = resolve_source(source, directory)
    if name == "digits":
        train_x, train_y, val_x, val_y, test_x, test_y = digits.load_digits_splits()
        num_classes, augment = 10, False
    else:
        train_x, train_y, val_x, val_y, test_x, test_y = _cifar_splits(
            name, source, directory, validation_size, validation_split, tfds_data_dir,
            tfds_download, verify_checksums)
        num_classes, augment = cifar.get_format(name).num_classes, True

    if train_subset > len(train_y):
        raise DataError(
            f"data.train_subset={train_subset} is larger than the {name} train set; "
            f"maximum {len(train_y)}."
        )
    if train_subset:
        # copy, so the full train arrays can be freed rather than kept alive behind a view
        train_x, train_y = train_x[:train_subset].copy(), train_y[:train_subset].copy()

    mean, std = _normalization_stats(train_x, normalization)
    return Dataset(
        name=name,
        train_images=train_x,
        train_labels=train_y,
        val_images=val_x,
        val_labels=val_y,
        test_images=test_x,
        test_labels=test_y,
        num_classes=num_classes,
        mean=mean,
        std=std,
        augment=augment,
    )
