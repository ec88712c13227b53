"""Reader for the official CIFAR-10 binary files (cifar-10-batches-bin) held in a local folder."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from lottery_kd.data.errors import DataError

TRAIN_FILES = tuple(f"data_batch_{i}.bin" for i in range(1, 6))
TEST_FILES = ("test_batch.bin",)
SPLIT_FILES = {"train": TRAIN_FILES, "test": TEST_FILES}
IMAGE_SIZE = 32
NUM_CHANNELS = 3
NUM_CLASSES = 10
RECORD_BYTES = 1 + NUM_CHANNELS * IMAGE_SIZE * IMAGE_SIZE  # 3073: one label byte, then R, G, B planes
RECORDS_PER_FILE = 10000
FILE_BYTES = RECORD_BYTES * RECORDS_PER_FILE  # 30,730,000


def _check_files(directory: str | os.PathLike, file_names: Sequence[str]) -> None:
    """Raise one DataError listing every missing or wrong-size file among `file_names` in `directory`."""
    folder = Path(directory)
    missing: list[str] = []
    wrong_size: list[str] = []
    for file_name in file_names:
        path = folder / file_name
        if not path.is_file():
            missing.append(file_name)
            continue
        actual = path.stat().st_size
        if actual != FILE_BYTES:
            wrong_size.append(f"{file_name} has {actual:,} bytes, expected {FILE_BYTES:,} bytes")
    if not missing and not wrong_size:
        return
    lines = [f"The CIFAR-10 files in data.dir={str(folder)!r} are not the official binary version."]
    if not folder.is_dir():
        lines.append(f"  {str(folder)!r} is not an existing folder.")
    if missing:
        lines.append(f"  missing ({len(missing)}): {', '.join(missing)}")
    if wrong_size:
        lines.append(f"  wrong size ({len(wrong_size)}):")
        lines.extend(f"    {entry}" for entry in wrong_size)
    lines.append(
        "Set data.dir (--config.data.dir=PATH) to the folder unpacked from cifar-10-binary.tar.gz "
        f"(cifar-10-batches-bin), which holds {', '.join(TRAIN_FILES + TEST_FILES)}."
    )
    raise DataError("\n".join(lines))


def check_local(directory: str | os.PathLike) -> None:
    """Verify that all six CIFAR-10 binary files exist in `directory` with the official size.

    Raises DataError with one message naming every missing file and every file of the wrong size,
    so a user fixes the whole folder in one go rather than one file per run.
    """
    _check_files(directory, TRAIN_FILES + TEST_FILES)


def _read_file(path: Path, images_out: np.ndarray, labels_out: np.ndarray) -> None:
    """Parse one binary batch file into `images_out` (uint8 [10000, 32, 32, 3], HWC) and `labels_out`."""
    records = np.fromfile(path, dtype=np.uint8)
    if records.size != FILE_BYTES:
        raise DataError(
            f"{path} holds {records.size:,} bytes, not {RECORDS_PER_FILE:,} records of {RECORD_BYTES} bytes; "
            "set data.dir to a folder with the official CIFAR-10 binary files."
        )
    records = records.reshape(RECORDS_PER_FILE, RECORD_BYTES)
    labels = records[:, 0]
    if labels.max() >= NUM_CLASSES:
        raise DataError(f"{path} has labels outside 0..{NUM_CLASSES - 1} (max {labels.max()}): not CIFAR-10.")
    labels_out[:] = labels
    images_out[:] = records[:, 1:].reshape(-1, NUM_CHANNELS, IMAGE_SIZE, IMAGE_SIZE).transpose(0, 2, 3, 1)


def load_local(directory: str | os.PathLike, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Load one CIFAR-10 split ("train": 50,000 or "test": 10,000) from the official binary files.

    Returns uint8 images [N, 32, 32, 3] (HWC) and int32 labels [N], in the official record order.
    """
    if split not in SPLIT_FILES:
        raise DataError(f"Unknown CIFAR-10 split {split!r}; allowed values: {', '.join(map(repr, SPLIT_FILES))}.")
    file_names = SPLIT_FILES[split]
    _check_files(directory, file_names)
    total = RECORDS_PER_FILE * len(file_names)
    images = np.empty((total, IMAGE_SIZE, IMAGE_SIZE, NUM_CHANNELS), dtype=np.uint8)
    labels = np.empty((total,), dtype=np.int32)
    for index, file_name in enumerate(file_names):
        rows = slice(index * RECORDS_PER_FILE, (index + 1) * RECORDS_PER_FILE)
        _read_file(Path(directory) / file_name, images[rows], labels[rows])
    return images, labels
