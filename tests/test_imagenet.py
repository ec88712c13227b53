"""ImageNet models (resnet18/50) and the tf.data input, on a tfds-mocked imagenet2012
(lottery_kd.data.imagenet_mock: small fake splits, example i of a split has label i)."""

from __future__ import annotations

import hashlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lottery_kd.sparsity import masks
from lottery_kd.models import MODEL_NAMES, get_model

tf = pytest.importorskip("tensorflow")
tfds = pytest.importorskip("tensorflow_datasets")

from lottery_kd.data import imagenet, imagenet_mock  # noqa: E402  (after the importorskip guards)

SPLIT_SHARDS = {"train": (30, 18), "validation": (21,)}  # examples per shard
SIZE = 32  # image_size used throughout
BATCH = 8  # global train batch: 48 // 8 = 6 steps per epoch


@pytest.fixture(scope="module")
def fake_imagenet(tmp_path_factory):
    """(data_dir for imagenet2012's metadata with small splits, {split: encoded examples})."""
    examples = {split: imagenet_mock.encoded_examples(split, sum(shards))
                for split, shards in SPLIT_SHARDS.items()}
    return str(tmp_path_factory.mktemp("tfds")), examples


@pytest.fixture
def mocked(fake_imagenet):
    """tfds mocked to serve the fake splits; yields the data_dir to pass (the mock forces it)."""
    data_dir, examples = fake_imagenet
    with imagenet_mock.mock_imagenet(data_dir, SPLIT_SHARDS, examples):
        yield data_dir


def _train(data_dir, **kwargs):
    return imagenet.ImageNetTrainInput(data_dir=data_dir, image_size=SIZE, **kwargs)


def _hashes(images, labels):
    return {(int(label), hashlib.sha1(image.tobytes()).hexdigest())
            for image, label in zip(images, labels)}


# ----------------------------------------------------------------------------- input pipeline


def test_train_batches_have_the_documented_shapes_and_types(mocked):
    data = _train(mocked)
    assert (data.num_examples, data.num_classes, data.image_shape) == (48, 1000, (SIZE, SIZE, 3))
    images, labels = data.batch(0, BATCH)
    assert images.shape == (BATCH, SIZE, SIZE, 3) and images.dtype == np.uint8
    assert labels.shape == (BATCH,) and labels.dtype == np.int32
    assert np.all((labels >= 0) & (labels < 48)) and images.std() > 0


def test_batch_at_a_step_is_the_same_sequentially_or_by_jumping(mocked):
    sequential = _train(mocked, seed=3)
    expected = [sequential.batch(step, BATCH) for step in range(8)]  # crosses epoch 0 -> 1
    for step in (3, 7, 2, 6):  # a fresh object jumps: forward, across the epoch, back
        images, labels = _train(mocked, seed=3).batch(step, BATCH)
        np.testing.assert_array_equal(images, expected[step][0])
        np.testing.assert_array_equal(labels, expected[step][1])
    resumed = _train(mocked, seed=3)
    resumed.batch(4, BATCH)
    np.testing.assert_array_equal(resumed.batch(5, BATCH)[0], expected[5][0])  # continues


def test_seeds_and_epochs_change_the_batches(mocked):
    data = _train(mocked, seed=0)
    epochs = [[data.batch(epoch * 6 + step, BATCH) for step in range(6)] for epoch in range(2)]
    labels = [np.concatenate([b[1] for b in epoch]) for epoch in epochs]
    # each epoch is a permutation of the split; the two epochs order it differently
    assert sorted(labels[0]) == sorted(labels[1]) == list(range(48))
    assert not np.array_equal(labels[0], labels[1])
    other_images, other_labels = _train(mocked, seed=1).batch(0, BATCH)
    assert not np.array_equal(other_labels, epochs[0][0][1])
    assert not np.array_equal(other_images, epochs[0][0][0])


def test_processes_read_disjoint_equal_shares(mocked):
    shares = [_train(mocked, process_index=i, process_count=2) for i in range(2)]
    first = [share.batch(0, BATCH) for share in shares]
    assert all(images.shape == (BATCH // 2, SIZE, SIZE, 3) for images, _ in first)
    assert all(labels.shape == (BATCH // 2,) for _, labels in first)
    assert not _hashes(*first[0]) & _hashes(*first[1])
    # over an epoch each process sees only its own half of the split (even_splits: 24 + 24)
    seen = [np.concatenate([share.batch(step, BATCH)[1] for step in range(6)]) for share in shares]
    assert set(seen[0]) <= set(range(24)) and set(seen[1]) <= set(range(24, 48))
    assert len(set(seen[0])) == len(set(seen[1])) == 24


def test_batch_size_must_divide_over_processes(mocked):
    data = _train(mocked, process_count=2)
    with pytest.raises(ValueError, match=r"train\.batch_size=7.*process_count=2"):
        data.batch(0, 7)
    with pytest.raises(ValueError, match=r"train\.batch_size=64"):
        data.batch(0, 64)  # larger than the split


def test_eval_batches_cover_the_split_once_with_a_fixed_shape(mocked):
    data = imagenet.ImageNetEvalInput(data_dir=mocked, image_size=SIZE, batch_size=8)
    batches = list(data.batches())
    assert data.num_examples == 21 and len(batches) == 3
    for images, labels, valid in batches:
        assert images.shape == (8, SIZE, SIZE, 3) and images.dtype == np.uint8
        assert labels.dtype == np.int32 and valid.dtype == bool and valid.shape == (8,)
    labels = np.concatenate([b[1] for b in batches])
    valid = np.concatenate([b[2] for b in batches])
    assert valid.sum() == 21 and sorted(labels[valid]) == list(range(21))
    assert not batches[-1][0][~batches[-1][2]].any()  # padding rows are zeros
    again = list(data.batches())
    np.testing.assert_array_equal(again[1][0], batches[1][0])  # deterministic


def test_eval_shares_of_two_processes_cover_the_split(mocked):
    shares = [imagenet.ImageNetEvalInput(data_dir=mocked, image_size=SIZE, batch_size=8,
                                         process_index=i, process_count=2) for i in range(2)]
    batches = [list(share.batches()) for share in shares]
    assert len(batches[0]) == len(batches[1]) == 3  # ceil(11 / 4): same count on every process
    valid_labels = [label for share in batches for _, labels, valid in share
                    for label in labels[valid]]
    assert sorted(valid_labels) == list(range(21))
    with pytest.raises(ValueError, match=r"data\.eval_batch_size=9"):
        imagenet.ImageNetEvalInput(data_dir=mocked, batch_size=9, process_count=2)


def test_missing_dataset_names_the_config_keys_and_files(tmp_path):
    from lottery_kd.data import DataError
    with pytest.raises(DataError) as error:
        imagenet.ImageNetTrainInput(data_dir=str(tmp_path), download=False)
    message = str(error.value)
    for needle in ("data.tfds_data_dir", "data.manual_dir", "ILSVRC2012_img_train.tar",
                   "ILSVRC2012_img_val.tar", "tfds build imagenet2012"):
        assert needle in message


def test_an_unprepared_imagenet_without_manual_dir_is_refused_before_tfds_tries(tmp_path):
    from lottery_kd.data import DataError
    with pytest.raises(DataError) as error:
        imagenet.ImageNetTrainInput(data_dir=str(tmp_path), download=True)
    message = str(error.value)
    for needle in ("data.tfds_download=True", "data.manual_dir", "data.tfds_data_dir",
                   "ILSVRC2012_img_train.tar"):
        assert needle in message


def test_normalisation_constants_are_torchvisions_in_pixel_units():
    np.testing.assert_allclose(imagenet.MEAN_RGB, (123.675, 116.28, 103.53))
    np.testing.assert_allclose(imagenet.STD_RGB, (58.395, 57.12, 57.375))


# ----------------------------------------------------------------------------- models


@pytest.mark.parametrize("name, expected", [("resnet18", 11_689_512), ("resnet50", 25_557_032)])
def test_parameter_counts_match_torchvision(name, expected):
    assert name in MODEL_NAMES
    model = get_model(name, 1000)
    variables = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 64, 64, 3))))
    count = sum(leaf.size for leaf in jax.tree.leaves(variables["params"]))
    assert abs(count - expected) <= 0.01 * expected


@pytest.mark.slow  # 8 s; the ImageNet norm test runs by default
def test_resnet18_forward_pass_at_64px():
    model = get_model("resnet18", 10)
    variables = model.init(jax.random.key(0), jnp.zeros((2, 64, 64, 3)))
    images = jax.random.normal(jax.random.key(1), (2, 64, 64, 3))
    logits, updates = model.apply(variables, images, train=True, mutable=["batch_stats"])
    assert logits.shape == (2, 10) and np.all(np.isfinite(logits))
    assert jax.tree.structure(updates["batch_stats"]) == jax.tree.structure(
        variables["batch_stats"])
    eval_logits = model.apply(variables, images, train=False)
    assert eval_logits.shape == (2, 10) and np.all(np.isfinite(eval_logits))


def test_imagenet_resnets_run_the_batch_norm_they_are_given():
    """model.norm_impl reaches every BatchNorm of the ImageNet ResNets (stem and blocks), as
    get_model documents; both give the same network, in variables and (within float error)
    in logits."""
    images = jax.random.normal(jax.random.key(1), (2, 64, 64, 3))
    outputs = {}
    for norm_impl in ("flax", "fused"):
        model = get_model("resnet18", 10, norm_impl=norm_impl)
        assert model.norm_impl == norm_impl
        variables = jax.jit(model.init)(jax.random.key(0), jnp.zeros((2, 64, 64, 3)))
        lowered = jax.jit(lambda v, x, m=model: m.apply(v, x, train=True,
                                                        mutable=["batch_stats"])
                          ).lower(variables, images)  # one compile, not op-by-op dispatch
        outputs[norm_impl] = (variables, lowered.compile()(variables, images)[0],
                              lowered.as_text())
    flax_vars, flax_logits, flax_hlo = outputs["flax"]
    fused_vars, fused_logits, fused_hlo = outputs["fused"]
    assert jax.tree.structure(flax_vars) == jax.tree.structure(fused_vars)
    np.testing.assert_allclose(fused_logits, flax_logits, rtol=2e-3, atol=2e-3)
    assert flax_hlo != fused_hlo  # the two are different computations of the same function


@pytest.mark.parametrize("name, convs, shortcuts", [("resnet18", 1 + 16, 3),
                                                    ("resnet50", 1 + 48, 4)])
def test_conv_scope_has_stem_and_shortcuts_but_not_fc(name, convs, shortcuts):
    model = get_model(name, 1000)
    params = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 64, 64, 3))))
    names = masks.prunable_names(params["params"], "conv")
    assert "stem_conv/kernel" in names and "fc/kernel" not in names
    assert "fc/kernel" in masks.prunable_names(params["params"], "conv_fc")
    assert sum("shortcut_conv" in n for n in names) == shortcuts
    assert len(names) == convs + shortcuts


# Slow (~25 s): the pipeline's pieces are tested above; this runs the whole experiment.
@pytest.mark.slow
def test_the_imagenet_experiment_runs_end_to_end_on_mock_data(mocked, tmp_path):
    """The lottery driver streams ImageNet: dense, then KD with early stop and rewinding."""
    from experiments import imagenet_resnet50
    from lottery_kd.study import lottery

    config = imagenet_resnet50.get_config()
    assert (config.train.batch_size, config.train.lr, config.train.warmup_epochs,
            config.train.milestones, config.train.epochs) == (512, 0.4, 5, "30,60,80", 90)
    assert (config.kd.temperature, config.kd.alpha, config.kd.reduction, config.kd.stop_epoch,
            config.lottery.rewind) == (4.0, 0.9, "batchmean", 60, "6ep")
    config.model.name = "resnet18"
    config.data.tfds_data_dir = mocked
    config.data.tfds_download = False
    config.data.image_size = SIZE
    config.data.eval_batch_size = 7
    config.train.batch_size = BATCH
    config.train.epochs, config.train.warmup_epochs, config.train.milestones = 3, 1, "1"
    config.kd.stop_epoch = 2  # kd_rewind distils from its rewind point (1ep) to 2ep, then CE
    config.prune.levels = 1
    config.lottery.variants = "kd_rewind"
    config.lottery.rewind = "1ep"
    config.log.progress = "lines"
    config.log.tensorboard = False
    rows = lottery.run(config, tmp_path, log=lambda *_: None)
    assert [(r["level"], r["variant"]) for r in rows] == [(0, "dense"), (1, "kd_rewind")]
    assert rows[1]["start_step"] == 48 // BATCH and rows[1]["steps"] == 2 * (48 // BATCH)
    assert all(0.0 <= r["test_accuracy"] <= 1.0 for r in rows)


def test_an_eval_batch_the_devices_cannot_split_is_a_config_error_before_training(
        mocked, tmp_path, monkeypatch):
    """ImageNet's streamed evaluation does not round its batch up to the device count as the
    in-memory splits do: data.eval_batch_size=7 on two devices is named, as a config error,
    when the study starts, not as a traceback."""
    from experiments import imagenet_resnet50
    from lottery_kd.config import ConfigError
    from lottery_kd.runtime.parallel import DataParallel
    from lottery_kd.study import lottery

    monkeypatch.setattr(DataParallel, "device_count", property(lambda self: 2))
    config = imagenet_resnet50.get_config()
    config.model.name = "resnet18"
    config.data.tfds_data_dir, config.data.tfds_download = mocked, False
    config.data.image_size, config.data.eval_batch_size = SIZE, 7
    config.train.batch_size, config.train.epochs = BATCH, 2
    config.train.warmup_epochs, config.train.milestones, config.kd.stop_epoch = 1, "1", None
    config.lottery.rewind = "1ep"
    with pytest.raises(ConfigError, match=r"data.eval_batch_size=7 is not divisible by the 2 "
                                          r"devices"):
        lottery.LotteryRun(config, tmp_path, log=lambda *_: None)
