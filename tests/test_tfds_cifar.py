"""The tfds source: offline preparation from the official files, identical data to the local
source, clear errors, and nothing that looks prepared after a failure."""

import shutil

import numpy as np
import pytest

from lottery_kd.data import DataError, load_dataset, tfds_source
from tests.conftest import CIFAR10_DIR

needs_cifar10 = pytest.mark.skipif(not CIFAR10_DIR.is_dir(),
                                   reason=f"the real CIFAR-10 files are not at {CIFAR10_DIR}")


@pytest.fixture(scope="module")
def prepared_data_dir(tmp_path_factory):
    """tfds cifar10 prepared once, offline, from ../shared/data/cifar10."""
    if not CIFAR10_DIR.is_dir():
        pytest.skip(f"the real CIFAR-10 files are not at {CIFAR10_DIR}")
    data_dir = tmp_path_factory.mktemp("tfds")
    path = tfds_source.prepare_from_local("cifar10", str(CIFAR10_DIR), str(data_dir))
    assert (path / "dataset_info.json").is_file()
    return data_dir


@pytest.mark.slow  # 47 s with the preparation (two thirds of it); errors below run by default
@needs_cifar10
def test_tfds_prepared_cifar10_equals_the_local_source_image_for_image(prepared_data_dir):
    kwargs = dict(validation_size=5000)
    from_tfds = load_dataset("cifar10", source="tfds", tfds_data_dir=str(prepared_data_dir),
                             tfds_download=False, **kwargs)
    local = load_dataset("cifar10", source="local", directory=str(CIFAR10_DIR), **kwargs)
    for field in ("train_images", "train_labels", "val_images", "val_labels", "test_images",
                  "test_labels"):
        np.testing.assert_array_equal(getattr(from_tfds, field), getattr(local, field), field)
    assert from_tfds.mean == local.mean and from_tfds.std == local.std


@pytest.mark.slow  # shares the 28 s preparation
@needs_cifar10
def test_plain_tfds_load_finds_the_offline_preparation(prepared_data_dir):
    import tensorflow_datasets as tfds
    builder = tfds.builder("cifar10", data_dir=str(prepared_data_dir))
    assert builder.is_prepared()
    assert builder.info.splits["train"].num_examples == 50000
    assert builder.info.splits["test"].num_examples == 10000


@pytest.mark.slow  # 18 s
@needs_cifar10
def test_experiment_runs_on_the_tfds_source_offline(prepared_data_dir, tmp_path):
    from experiments import cifar10_resnet20
    from lottery_kd.study import lottery
    config = cifar10_resnet20.get_config()
    config.data.source = "tfds"
    config.data.tfds_data_dir = str(prepared_data_dir)
    config.data.tfds_download = False
    config.data.validation_size = 0
    config.data.train_subset = 256
    config.data.eval_batch_size = 2000
    config.train.batch_size = 64
    config.train.epochs = 1
    config.train.milestones = ""
    config.prune.levels = 0
    config.log.progress = "lines"
    config.log.tensorboard = False
    rows = lottery.run(config, tmp_path, log=lambda *_: None)
    assert [r["variant"] for r in rows] == ["dense"]
    assert 0.0 < rows[0]["test_accuracy"] < 1.0


def test_unprepared_without_download_names_the_setting_and_the_command(tmp_path):
    with pytest.raises(DataError) as error:
        load_dataset("cifar10", source="tfds", tfds_data_dir=str(tmp_path), tfds_download=False)
    message = str(error.value)
    assert "data.tfds_data_dir" in message and "data.tfds_download" in message
    assert "python -m lottery_kd.data.prepare cifar10 --from" in message


def test_offline_download_fails_in_seconds_with_the_prepare_command(tmp_path, monkeypatch):
    def unreachable(url, timeout=5.0):
        raise OSError(f"no route to {url}")
    monkeypatch.setattr(tfds_source, "_check_reachable", unreachable)
    with pytest.raises(DataError) as error:
        load_dataset("cifar10", source="tfds", tfds_data_dir=str(tmp_path))
    assert "could not download 'cifar10'" in str(error.value)
    assert "python -m lottery_kd.data.prepare cifar10" in str(error.value)


@needs_cifar10
def test_corrupt_file_is_refused_before_anything_is_written(tmp_path):
    local = tmp_path / "cifar-10-batches-bin"
    local.mkdir()
    for path in CIFAR10_DIR.glob("*.bin"):
        (local / path.name).symlink_to(path)
    (local / "data_batch_2.bin").unlink()
    corrupt = bytearray((CIFAR10_DIR / "data_batch_2.bin").read_bytes())
    corrupt[12345] ^= 0xFF
    (local / "data_batch_2.bin").write_bytes(bytes(corrupt))
    data_dir = tmp_path / "tfds"
    with pytest.raises(DataError) as error:
        tfds_source.prepare_from_local("cifar10", str(local), str(data_dir))
    message = str(error.value)
    assert "data_batch_2.bin has sha256" in message
    assert "a591ca11fa1708a91ee40f54b3da4784ccd871ecf2137de63f51ada8b3fa57ed" in message
    assert not data_dir.exists()


@needs_cifar10
def test_a_failed_preparation_leaves_nothing_that_looks_prepared(tmp_path, monkeypatch):
    import tensorflow_datasets as tfds
    from tensorflow_datasets.image_classification import cifar as tfds_cifar
    real_load = tfds_cifar._load_data

    def failing_load(path, labels_number=1):
        for index, record in enumerate(real_load(path, labels_number)):
            if index == 50:
                raise IOError("disk full (simulated)")
            yield record

    monkeypatch.setattr(tfds_cifar, "_load_data", failing_load)
    data_dir = tmp_path / "tfds"
    with pytest.raises(Exception, match="disk full"):
        tfds_source.prepare_from_local("cifar10", str(CIFAR10_DIR), str(data_dir))
    assert not tfds.builder("cifar10", data_dir=str(data_dir)).is_prepared()
    assert not list(data_dir.glob("cifar10/*/dataset_info.json"))
    with pytest.raises(DataError, match="not prepared"):
        load_dataset("cifar10", source="tfds", tfds_data_dir=str(data_dir), tfds_download=False)


def test_cifar100_through_tfds_mock_data(monkeypatch, tmp_path):
    import tensorflow_datasets as tfds
    monkeypatch.setattr(tfds_source, "_check_reachable", lambda url: None)
    with tfds.testing.mock_data(num_examples=60):
        dataset = load_dataset("cifar100", source="tfds", tfds_data_dir=str(tmp_path),
                               validation_size=10)
    assert dataset.num_classes == 100 and dataset.augment
    assert dataset.train_images.shape == (50, 32, 32, 3)
    assert dataset.val_images.shape == (10, 32, 32, 3)
    assert dataset.test_images.shape == (60, 32, 32, 3)
    assert dataset.train_images.dtype == np.uint8 and dataset.train_labels.dtype == np.int32
    assert 0 <= dataset.train_labels.min() and dataset.train_labels.max() < 100


def test_prepare_command_line_reports_bad_files(tmp_path, capsys):
    from lottery_kd.data import prepare
    assert prepare.main(["cifar10", "--from", str(tmp_path),
                         "--data-dir", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert "missing (7)" in err and "data_batch_1.bin" in err and "batches.meta.txt" in err
    shutil.rmtree(tmp_path / "x", ignore_errors=True)
