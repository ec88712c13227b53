"""CIFAR-10 and CIFAR-100 from the official binary files (cifar-10-batches-bin, cifar-100-binary).

A record is the label byte(s) then a 32x32 image as 1024 red, 1024 green, 1024 blue bytes (each
plane row-major). CIFAR-100 records carry two label bytes, coarse then fine; the fine label is the
class. `check_local` verifies presence and exact sizes (and, for CIFAR-10, the official SHA-256 of
every file, carried here) and reports every problem of a folder in one error.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from lottery_kd.data.errors import DataError

IMAGE_SIZE = 32
NUM_CHANNELS = 3
IMAGE_BYTES = NUM_CHANNELS * IMAGE_SIZE * IMAGE_SIZE


@dataclasses.dataclass(frozen=True)
class CifarFormat:
    """The layout of one CIFAR binary distribution."""

    name: str
    folder: str                       # the folder name inside the official archive
    archive: str                      # the official archive the files come from
    train_files: tuple[str, ...]
    test_files: tuple[str, ...]
    records: Mapping[str, int]        # records per file
    label_bytes: int                  # 1 (CIFAR-10) or 2 (CIFAR-100: coarse, fine)
    num_classes: int
    sha256: Mapping[str, str]         # official checksums; empty where none is carried

    @property
    def record_bytes(self) -> int:
        return self.label_bytes + IMAGE_BYTES

    def file_bytes(self, file_name: str) -> int:
        return self.records[file_name] * self.record_bytes

    def split_files(self, split: str) -> tuple[str, ...]:
        if split not in ("train", "test"):
            raise DataError(f"Unknown {self.name} split {split!r}; "
                            "allowed values: 'train', 'test'.")
        return self.train_files if split == "train" else self.test_files


_CIFAR10_TRAIN = tuple(f"data_batch_{i}.bin" for i in range(1, 6))
CIFAR10 = CifarFormat(
    name="cifar10", folder="cifar-10-batches-bin", archive="cifar-10-binary.tar.gz",
    train_files=_CIFAR10_TRAIN, test_files=("test_batch.bin",),
    records={f: 10000 for f in _CIFAR10_TRAIN + ("test_batch.bin",)}, label_bytes=1,
    num_classes=10,
    # The official files' SHA-256 (they match the published md5s too).
    sha256={
        "data_batch_1.bin": "cee916563c9f80d84e3cc88e17fdc0941787f1244f00a67874d45b261883ada5",
        "data_batch_2.bin": "a591ca11fa1708a91ee40f54b3da4784ccd871ecf2137de63f51ada8b3fa57ed",
        "data_batch_3.bin": "bbe8596564c0f86427f876058170b84dac6670ddf06d79402899d93ceea26f67",
        "data_batch_4.bin": "014e562d6e23c72197cc727519169a60359f5eccd8945ad5a09d710285ff4e48",
        "data_batch_5.bin": "755304fc0b379caeae8c14f0dac912fbc7d6cd469eb67a1029a08a39453a9add",
        "test_batch.bin": "8e2eb146ae340b09e24670f29cabc6326dba54da8789dab6768acf480273f65b",
    })
CIFAR100 = CifarFormat(
    name="cifar100", folder="cifar-100-binary", archive="cifar-100-binary.tar.gz",
    train_files=("train.bin",), test_files=("test.bin",),
    records={"train.bin": 50000, "test.bin": 10000}, label_bytes=2, num_classes=100,
    sha256={})  # no per-file checksum is carried for CIFAR-100: sizes are checked
FORMATS: Mapping[str, CifarFormat] = {"cifar10": CIFAR10, "cifar100": CIFAR100}

# CIFAR-10 names kept at module level (the issue-2 API).
TRAIN_FILES = CIFAR10.train_files
TEST_FILES = CIFAR10.test_files
SPLIT_FILES = {"train": TRAIN_FILES, "test": TEST_FILES}
NUM_CLASSES = CIFAR10.num_classes
RECORD_BYTES = CIFAR10.record_bytes            # 3073
RECORDS_PER_FILE = 10000
FILE_BYTES = RECORD_BYTES * RECORDS_PER_FILE   # 30,730,000


def get_format(name: str) -> CifarFormat:
    if name not in FORMATS:
        raise DataError(f"Unknown CIFAR data set {name!r}; allowed values: "
                        f"{', '.join(map(repr, FORMATS))}.")
    return FORMATS[name]


def sha256_of(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def _check_files(directory: str | os.PathLike, file_names: Sequence[str], fmt: CifarFormat,
                 verify_checksums: bool) -> None:
    """One DataError listing every missing, wrong-size or (optionally) wrong-checksum file."""
    folder = Path(directory)
    missing: list[str] = []
    wrong: list[str] = []
    for file_name in file_names:
        path = folder / file_name
        if not path.is_file():
            missing.append(file_name)
            continue
        actual, expected = path.stat().st_size, fmt.file_bytes(file_name)
        if actual != expected:
            wrong.append(f"{file_name} has {actual:,} bytes, expected {expected:,} bytes")
        elif verify_checksums and file_name in fmt.sha256:
            digest = sha256_of(path)
            if digest != fmt.sha256[file_name]:
                wrong.append(f"{file_name} has sha256 {digest}, expected the official "
                             f"{fmt.sha256[file_name]} (corrupt or not the official file)")
    if not missing and not wrong:
        return
    lines = [f"The {fmt.name} files in data.dir={str(folder)!r} are not the official binary "
             "version."]
    if not folder.is_dir():
        lines.append(f"  {str(folder)!r} is not an existing folder.")
    if missing:
        lines.append(f"  missing ({len(missing)}): {', '.join(missing)}")
    if wrong:
        lines.append(f"  wrong size or checksum ({len(wrong)}):")
        lines.extend(f"    {entry}" for entry in wrong)
    lines.append(
        f"Set data.dir (--config.data.dir=PATH) to the folder unpacked from {fmt.archive} "
        f"({fmt.folder}), which holds {', '.join(fmt.train_files + fmt.test_files)}.")
    raise DataError("\n".join(lines))


def check_local(directory: str | os.PathLike, name: str = "cifar10", *,
                verify_checksums: bool = False) -> None:
    """Verify every official file of data set `name` in `directory`: present, exact size, and
    with `verify_checksums` the official SHA-256 (CIFAR-10). One DataError names every problem."""
    fmt = get_format(name)
    _check_files(directory, fmt.train_files + fmt.test_files, fmt, verify_checksums)


def _read_file(path: Path, fmt: CifarFormat, images_out: np.ndarray,
               labels_out: np.ndarray) -> None:
    """Parse one binary file into `images_out` (uint8 [n, 32, 32, 3], HWC) and `labels_out`."""
    count = fmt.records[path.name]
    records = np.fromfile(path, dtype=np.uint8)
    if records.size != count * fmt.record_bytes:
        raise DataError(f"{path} holds {records.size:,} bytes, not {count:,} records of "
                        f"{fmt.record_bytes} bytes; set data.dir to a folder with the official "
                        f"{fmt.name} binary files.")
    records = records.reshape(count, fmt.record_bytes)
    labels = records[:, fmt.label_bytes - 1]   # CIFAR-100: the fine label (second byte)
    if labels.max() >= fmt.num_classes:
        raise DataError(f"{path} has labels outside 0..{fmt.num_classes - 1} "
                        f"(max {labels.max()}): not {fmt.name}.")
    labels_out[:] = labels
    images_out[:] = records[:, fmt.label_bytes:].reshape(
        -1, NUM_CHANNELS, IMAGE_SIZE, IMAGE_SIZE).transpose(0, 2, 3, 1)


def load_local(directory: str | os.PathLike, split: str,
               name: str = "cifar10") -> tuple[np.ndarray, np.ndarray]:
    """Load one split ("train" or "test") of CIFAR-10/100 from the official binary files.

    Returns uint8 images [N, 32, 32, 3] (HWC) and int32 labels [N], in the official record order.
    """
    fmt = get_format(name)
    file_names = fmt.split_files(split)
    _check_files(directory, file_names, fmt, verify_checksums=False)
    total = sum(fmt.records[f] for f in file_names)
    images = np.empty((total, IMAGE_SIZE, IMAGE_SIZE, NUM_CHANNELS), dtype=np.uint8)
    labels = np.empty((total,), dtype=np.int32)
    start = 0
    for file_name in file_names:
        rows = slice(start, start + fmt.records[file_name])
        _read_file(Path(directory) / file_name, fmt, images[rows], labels[rows])
        start = rows.stop
    return images, labels
