"""Protocols: each named protocol against a table of its paper's settings, the experiments'
defaults, switching protocol on the command line, and the settings a protocol brings with it
(the validation split, normalisation, the pruning scope)."""

import math

import jax.numpy as jnp
import numpy as np
import pytest

from experiments import (cifar10_resnet20, cifar10_resnet56, cifar10_resnet110,
                         imagenet_resnet50, quickstart)
from experiments.launch import resolve_protocol, unknown_config_key
from lottery_kd.sparsity import masks as masks_lib
from lottery_kd.config import ConfigError, defaults, protocols, validate
from lottery_kd.data import train_validation_indices
from lottery_kd.data.augment import normalize

# The papers' settings, transcribed from their code (VITA-Group/KD-ticket: CIFAR10/
# cifar_baseline.py, cifar_lt_kd.py, cifar_prune.py, exp_res56_oneshot.sh; ImageNet/kd_ticket.py,
# exp_res50_oneshot.sh; lottery-ticket/rewinding-iclr20-public: vision/gpu-src/official/resnet/
# cifar10_main.py) and Renda et al.'s text, in lottery_kd's keys.
KD_TICKET_CIFAR10 = {
    "train.epochs": 182, "train.batch_size": 128, "train.lr": 0.1, "train.momentum": 0.9,
    "train.weight_decay": 2e-4, "train.milestones": "90,135", "train.lr_decay": 0.1,
    "train.warmup_epochs": 0,
    "data.validation_size": 5000, "data.validation_split": "first",
    "data.normalization": "cifar10_constants",
    "kd.temperature": 5.0, "kd.alpha": 0.9, "kd.reduction": "mean", "kd.stop_epoch": None,
    "prune.method": "magnitude_global", "prune.scope": "conv", "prune.schedule": "oneshot",
    "prune.fraction": 0.2, "prune.levels": 16, "lottery.rewind": "33ep",
}
KD_TICKET_IMAGENET = {
    "train.epochs": 90, "train.batch_size": 512, "train.lr": 0.4, "train.warmup_epochs": 5,
    "train.milestones": "30,60,80", "train.weight_decay": 1e-4, "train.momentum": 0.9,
    "data.validation_size": 0, "data.crop_scale": "0.1,1", "data.crop_ratio": "0.8,1.25",
    "kd.temperature": 4.0, "kd.alpha": 0.9, "kd.reduction": "batchmean", "kd.stop_epoch": 60,
    "prune.method": "magnitude_global", "prune.scope": "conv", "prune.schedule": "oneshot",
    "lottery.rewind": "6ep",
}
RENDA_CIFAR10 = {
    "train.epochs": 182, "train.batch_size": 128, "train.lr": 0.1, "train.momentum": 0.9,
    "train.weight_decay": 2e-4, "train.milestones": "91,136", "train.warmup_epochs": 0,
    "data.validation_size": 0, "data.train_subset": 0, "data.normalization": "per_image",
    "prune.method": "magnitude_global", "prune.scope": "conv_no_shortcut",
    "prune.schedule": "iterative", "prune.fraction": 0.2,
}
# Sparsities: KD-ticket CIFAR 1-0.8^k for k = 1..16; ImageNet 36/59/74/83/89 %.
KD_TICKET_CIFAR10_SPARSITIES = [1 - 0.8 ** k for k in range(1, 17)]
KD_TICKET_IMAGENET_SPARSITIES = [0.36, 0.5904, 0.73785, 0.83222, 0.89262]


def _value(config, key):
    node = config
    for part in key.split("."):
        node = node[part]
    return node


def _oneshot_sparsities(config):
    return [1 - (1 - config.prune.fraction) ** level
            for level in range(1, config.prune.levels + 1)]


@pytest.mark.parametrize("table,protocol,dataset", [
    (KD_TICKET_CIFAR10, "kd_ticket", "cifar10"), (KD_TICKET_IMAGENET, "kd_ticket", "imagenet2012"),
    (RENDA_CIFAR10, "renda", "cifar10")])
def test_each_protocol_holds_its_papers_settings(table, protocol, dataset):
    settings = protocols.get(protocol).settings_for(dataset)
    for key, value in table.items():
        assert settings[key] == value, key


def test_kd_ticket_sparsities_are_the_releases():
    cifar = cifar10_resnet110.get_config()
    assert _oneshot_sparsities(cifar) == pytest.approx(KD_TICKET_CIFAR10_SPARSITIES)
    # the release's scripts repeat --percent 0.94502 at k = 14 (a slip, stated in the notes);
    # the protocol prunes to 1-0.8^14 there, as the scripts' own comment says
    assert _oneshot_sparsities(cifar)[13] == pytest.approx(0.95602, abs=1e-5)
    assert any("0.94502" in note for note in protocols.get("kd_ticket").notes)
    imagenet = imagenet_resnet50.get_config()
    assert _oneshot_sparsities(imagenet) == pytest.approx(KD_TICKET_IMAGENET_SPARSITIES,
                                                          abs=1e-5)


def test_resnet110_runs_the_kd_ticket_experiment():
    config = cifar10_resnet110.get_config()
    assert config.protocol == "kd_ticket"
    assert config.model.name == "resnet110_bottleneck"
    for key, value in KD_TICKET_CIFAR10.items():
        assert _value(config, key) == value, key
    assert protocols.deviations(config) == []
    validate(config)
    assert cifar10_resnet56.get_config().model.name == "resnet56_bottleneck"


def test_imagenet_runs_the_releases_imagenet_protocol():
    config = imagenet_resnet50.get_config()
    for key, value in KD_TICKET_IMAGENET.items():
        assert _value(config, key) == value, key
    assert (config.protocol, config.model.name) == ("kd_ticket", "resnet50")
    assert protocols.deviations(config) == []


def test_resnet20_runs_rendas_protocol_and_the_defaults_are_the_kd_ticket_cifar_settings():
    config = cifar10_resnet20.get_config()
    assert (config.protocol, config.model.name) == ("renda", "resnet20")
    assert protocols.deviations(config) == []
    base = defaults.get_config()
    assert base.protocol == "kd_ticket"
    # the base differs from the protocol only in its network (ResNet-20 is not in the release)
    assert [d.key for d in protocols.deviations(base)] == ["model.name"]


def test_one_setting_switches_the_protocol_and_other_overrides_still_apply():
    parsed = cifar10_resnet110.get_config()
    config = resolve_protocol(cifar10_resnet110.get_config, parsed,
                              {"protocol": "renda", "train.epochs": 30})
    assert config.protocol == "renda"
    assert config.model.name == "resnet110"  # basic blocks under Renda et al.'s protocol
    assert (config.train.milestones, config.prune.schedule) == ("91,136", "iterative")
    assert config.train.epochs == 30
    assert [str(d) for d in protocols.deviations(config)] == ["train.epochs=30 (protocol: 182)"]
    # without a protocol override the parsed config is used as it is
    assert resolve_protocol(cifar10_resnet110.get_config, parsed, {"train.epochs": 3}) is parsed
    with pytest.raises(ConfigError, match="no protocols to switch to"):
        resolve_protocol(quickstart.get_config, quickstart.get_config(), {"protocol": "renda"})
    with pytest.raises(ConfigError, match="kd_ticket, renda"):
        resolve_protocol(cifar10_resnet110.get_config, parsed, {"protocol": "lth"})


def test_describe_names_the_protocol_and_every_setting_that_differs():
    config = cifar10_resnet20.get_config("kd_ticket")
    config.train.epochs = 15
    config.train.milestones = "7,11"
    text = protocols.describe(config)
    assert text.startswith("protocol: kd_ticket (Ma et al. 2021")
    for part in ("3 setting(s) differ", "model.name='resnet20'", "train.epochs=15 (protocol: 182)",
                 "train.milestones='7,11' (protocol: 90,135)"):
        assert part in text, part
    assert protocols.describe(quickstart.get_config()).startswith("protocol: none")
    # a saved config.json from before protocols existed names none
    saved = {key: value for key, value in config.to_dict().items() if key != "protocol"}
    assert protocols.describe(saved).startswith("protocol: none")


def test_a_user_protocol_registers_and_applies():
    mine = protocols.register(protocols.Protocol(
        name="test_short", paper="a test", settings={"cifar10": {"train.epochs": 30,
                                                                 "train.milestones": "15,22"}},
        networks={"cifar10": {"resnet20": "resnet20"}}))
    try:
        config = cifar10_resnet20.get_config("test_short")
        assert (config.train.epochs, config.train.milestones, config.protocol) == \
            (30, "15,22", "test_short")
        validate(config)
    finally:
        protocols._REGISTRY._entries.pop(mine.name)


def test_a_misspelt_key_names_the_closest_one():
    config = cifar10_resnet20.get_config()
    assert unknown_config_key(["prog", "--config.train.epoch=3"], config) == \
        "--config.train.epoch: no such setting; did you mean --config.train.epochs?"
    assert "closest setting is --config." in unknown_config_key(["p", "--config.foo=1"], config)
    assert unknown_config_key(["p", "--config.train.epochs=3", "--workdir=x"], config) is None


def test_the_kd_ticket_validation_split_is_the_first_5000_images():
    train, val = train_validation_indices(50000, 5000, "first")
    assert np.array_equal(val, np.arange(5000)) and np.array_equal(train, np.arange(5000, 50000))
    train, val = train_validation_indices(50000, 5000, "random")  # as before protocols
    assert len(val) == 5000 and val[0] != 0 and not np.array_equal(val, np.arange(5000))
    assert len(np.intersect1d(train, val)) == 0


def test_per_image_standardisation_is_tfs():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (3, 8, 8, 3)).astype(np.uint8)
    images[2] = 7  # a constant image: its std is 0, the floor 1/sqrt(N) applies
    out = np.asarray(normalize(jnp.asarray(images), None, None))
    for image, got in zip(images.astype(np.float64), out):
        floor = 1 / math.sqrt(image.size)
        want = (image - image.mean()) / max(image.std(), floor)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    # the channel path is unchanged
    np.testing.assert_allclose(np.asarray(normalize(jnp.asarray(images), (1, 2, 3), (2, 2, 2))),
                               (images - np.array([1, 2, 3])) / 2, rtol=1e-6)


def test_rendas_scope_leaves_the_projection_shortcuts_and_fc_dense():
    import jax
    from lottery_kd.models import get_model
    from lottery_kd.training.steps import init_variables
    model = get_model("resnet20", 10, conv_impl="xla")
    params, _ = jax.eval_shape(lambda k: init_variables(model, k, (32, 32, 3)),
                               jax.random.key(0))
    renda = masks_lib.prunable_names(params, "conv_no_shortcut")
    everything = masks_lib.prunable_names(params, "conv")
    assert sorted(set(everything) - set(renda)) == [
        "stage2_block1/shortcut_conv/kernel", "stage3_block1/shortcut_conv/kernel"]
    assert "stem_conv/kernel" in renda and not any("fc" in name for name in renda)
    assert len(renda) == 19  # the stem and 18 block convolutions of ResNet-20
