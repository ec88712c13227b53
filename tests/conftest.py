"""Shared fixtures: a tiny digits config and the location of the real CIFAR-10 files."""

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CIFAR10_DIR = REPO.parent / "shared" / "data" / "cifar10"


def make_tiny_config():
    """The quickstart shrunk to seconds: 2 epochs, 2 levels, all eight variants."""
    from experiments import quickstart
    config = quickstart.get_config()
    config.train.epochs = 2
    config.prune.levels = 2
    config.lottery.variants = "lt,reinit,weight_rewind,lr_rewind,finetune,kd,kd_rewind,kd_lr_rewind"
    config.lottery.rewind = "1ep"
    config.log.progress = "lines"
    config.log.tensorboard = False
    return config


@pytest.fixture
def tiny_config():
    return make_tiny_config()
