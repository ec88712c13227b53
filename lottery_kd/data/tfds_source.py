"""tensorflow-datasets as a data source, and offline preparation of tfds CIFAR from the official
binary files.

`tfds.load("cifar10")` downloads the archive on a connected machine. Offline, prepare the same
dataset once from a folder of the official binary files:

    python -m lottery_kd.data.prepare cifar10 --from PATH/cifar-10-batches-bin [--data-dir DIR]

This runs tfds's own `cifar10` builder (same features, same version, same files on disk) with its
download step pointed at the local folder, after checking every file against the official
checksums. tfds writes into an `incomplete.*` folder and renames it when done, so a failed
preparation leaves nothing that looks prepared. TensorFlow is imported only here, lazily.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import tempfile
import urllib.parse
from pathlib import Path
from typing import Any, Optional

import numpy as np

from lottery_kd.data import cifar
from lottery_kd.data.errors import DataError

TFDS_CIFAR_NAMES = ("cifar10", "cifar100")


def _import_tfds():
    """tensorflow_datasets, with TensorFlow kept off accelerators (JAX owns them)."""
    import tensorflow as tf
    try:
        tf.config.set_visible_devices([], "GPU")
    except (RuntimeError, ValueError):  # already initialised; harmless
        pass
    import tensorflow_datasets as tfds
    return tfds


def prepare_command(name: str, data_dir: Optional[str]) -> str:
    target = f" --data-dir {data_dir}" if data_dir else ""
    folder = cifar.get_format(name).folder
    return f"python -m lottery_kd.data.prepare {name} --from PATH/TO/{folder}{target}"


class _LocalFiles:
    """Stands in for tfds's download manager: the 'downloaded and extracted' archive is a local
    folder that contains the official folder name (a symlink to the user's files)."""

    def __init__(self, root: str):
        self.root = root

    def download_and_extract(self, url: Any) -> str:  # noqa: ARG002 - the url is the official archive's
        return self.root


# The label-name files tfds's CIFAR builders open beside the binary files.
LABEL_NAME_FILES = {"cifar10": ("batches.meta.txt",),
                    "cifar100": ("coarse_label_names.txt", "fine_label_names.txt")}


def _builder_from_local_files(name: str, local_dir: str, data_dir: Optional[str]):
    """tfds's own CIFAR builder, registered under its usual name, reading `local_dir`."""
    _import_tfds()
    from tensorflow_datasets.image_classification import cifar as tfds_cifar

    base = {"cifar10": tfds_cifar.Cifar10, "cifar100": tfds_cifar.Cifar100}[name]
    folder = cifar.get_format(name).folder

    class FromLocalFiles(base, skip_registration=True):
        def _split_generators(self, dl_manager):  # noqa: ARG002
            root = tempfile.mkdtemp(prefix="lottery_kd_cifar_")
            self.scratch = root  # prepare_from_local removes it (the symlink, not the files)
            os.symlink(os.path.abspath(local_dir), os.path.join(root, folder))
            return super()._split_generators(_LocalFiles(root))

    FromLocalFiles.name = name
    return FromLocalFiles(data_dir=data_dir or None)


def _check_from(name: str, local_dir: str) -> None:
    """prepare's --from: a folder holding every official file of `name`, each of its exact size
    and (CIFAR-10) official SHA-256. One DataError naming --from and every problem."""
    fmt = cifar.get_format(name)
    files = fmt.train_files + fmt.test_files
    label_names = LABEL_NAME_FILES[name]  # tfds's builder reads them beside the data
    folder = Path(local_dir)
    fix = (f"Give --from the folder unpacked from {fmt.archive} ({fmt.folder}), which holds "
           f"{', '.join(files + label_names)}.")
    if not folder.exists():
        raise DataError(f"--from {local_dir}: no such folder. {fix}")
    if not folder.is_dir():
        archive = local_dir.endswith((".tar.gz", ".tgz", ".tar"))
        raise DataError(f"--from {local_dir} is a file, not a folder"
                        f"{f' (unpack it first: tar xf {local_dir})' if archive else ''}. {fix}")
    missing, wrong = [], []
    for file_name in files:
        path = folder / file_name
        if not path.is_file():
            missing.append(file_name)
            continue
        size, expected = path.stat().st_size, fmt.file_bytes(file_name)
        if size != expected:
            wrong.append(f"{file_name} has {size:,} bytes, expected {expected:,} bytes")
        elif file_name in fmt.sha256:
            digest = cifar.sha256_of(path)
            if digest != fmt.sha256[file_name]:
                wrong.append(f"{file_name} has sha256 {digest}, expected the official "
                             f"{fmt.sha256[file_name]} (corrupt or not the official file)")
    missing += [file_name for file_name in label_names if not (folder / file_name).is_file()]
    if missing or wrong:
        lines = [f"--from {local_dir} does not hold the official {fmt.name} binary files."]
        if missing:
            lines.append(f"  missing ({len(missing)}): {', '.join(missing)}")
        if wrong:
            lines.append(f"  wrong size or checksum ({len(wrong)}):")
            lines.extend(f"    {entry}" for entry in wrong)
        raise DataError("\n".join(lines + [fix]))


def _data_dir_argument(data_dir: Optional[str]) -> tuple[Optional[Path], str]:
    """(the local folder prepare writes into, or None for a URL such as gs://; how to name it
    in a message: prepare's --data-dir)."""
    if data_dir and re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://", data_dir):
        return None, f"--data-dir {data_dir}"
    if data_dir:
        return Path(data_dir), f"--data-dir {data_dir}"
    default = Path(os.environ.get("TFDS_DATA_DIR", "~/tensorflow_datasets")).expanduser()
    return default, f"--data-dir (default: tfds's {default})"


def _check_data_dir(data_dir: Optional[str]) -> None:
    """prepare's --data-dir: a folder that exists or can be made, and can be written."""
    target, which = _data_dir_argument(data_dir)
    if target is None:
        return
    if target.exists() and not target.is_dir():
        raise DataError(f"{which} is a file, not a folder; give --data-dir a folder to prepare "
                        "into")
    try:
        target.mkdir(parents=True, exist_ok=True)
        probe = target / f".write_probe.{os.getpid()}"
        probe.write_text("ok")
        probe.unlink()
    except OSError as error:
        raise DataError(f"{which} cannot be written ({error.strerror or error}); give "
                        "--data-dir a folder you can write to") from None


def prepare_from_local(name: str, local_dir: str, data_dir: Optional[str] = None) -> Path:
    """Prepare tfds `name` (cifar10 | cifar100) under `data_dir` from the official binary files
    (the `python -m lottery_kd.data.prepare` command: its errors name --from and --data-dir).

    Every file is checked first (presence, size, official SHA-256 where carried), then that
    `data_dir` can be written; nothing is written if a file fails. Returns the prepared dataset
    folder. Already prepared: nothing to do.
    """
    if name not in TFDS_CIFAR_NAMES:
        raise DataError(f"Offline preparation supports {', '.join(TFDS_CIFAR_NAMES)}, "
                        f"not {name!r}.")
    _check_from(name, local_dir)
    _check_data_dir(data_dir)
    builder = _builder_from_local_files(name, local_dir, data_dir)
    if not builder.is_prepared():
        tfds = _import_tfds()
        try:
            builder.download_and_prepare(
                download_config=tfds.download.DownloadConfig(try_download_gcs=False))
        except OSError as error:
            raise DataError(
                f"preparing tfds {name!r} into {_data_dir_argument(data_dir)[1]} failed "
                f"({type(error).__name__}: {error}); nothing that looks prepared is left: fix "
                "the cause (e.g. free space) and rerun") from None
        finally:
            if getattr(builder, "scratch", None):
                shutil.rmtree(builder.scratch, ignore_errors=True)
    return Path(builder.data_dir)


def _check_reachable(url: Optional[str], timeout: float = 5.0) -> None:
    """Fail in seconds, not after tfds's minutes of retries, when the archive's host is out of
    reach."""
    if not url:
        return
    parsed = urllib.parse.urlparse(url)
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    with socket.create_connection((parsed.hostname, port), timeout=timeout):
        pass


def load_cifar(name: str, *, data_dir: Optional[str] = None,
               download: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(train_images, train_labels, test_images, test_labels) of tfds `name`, in official order.

    tfds stores records shuffled; its `id` feature ("train_00042") carries the official index, so
    sorting by it gives the order of the official files (and of the `local` source).
    """
    tfds = _import_tfds()
    builder = tfds.builder(name, data_dir=data_dir or None)
    if not builder.is_prepared():
        if not download:
            raise DataError(
                f"tfds dataset {name!r} is not prepared in data.tfds_data_dir="
                f"{data_dir or '(tfds default)'} and data.tfds_download is False. Prepare it once "
                f"from the official files: {prepare_command(name, data_dir)}")
        try:
            _check_reachable(getattr(getattr(builder, "_cifar_info", None), "url", None))
            builder.download_and_prepare()
        except Exception as error:  # network errors come in many types
            raise DataError(
                f"tfds could not download {name!r} into data.tfds_data_dir="
                f"{data_dir or '(tfds default)'} ({type(error).__name__}: {error}). Offline, "
                f"prepare it once from the official files: {prepare_command(name, data_dir)}"
            ) from error
    arrays = []
    for split in ("train", "test"):
        chunks = list(tfds.as_numpy(builder.as_dataset(split=split).batch(5000)))
        ids = np.concatenate([c["id"] for c in chunks])
        order = np.argsort(ids, kind="stable")
        arrays += [np.concatenate([c["image"] for c in chunks])[order].astype(np.uint8),
                   np.concatenate([c["label"] for c in chunks])[order].astype(np.int32)]
    return tuple(arrays)
