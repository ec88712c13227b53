"""Shared fixtures: a tiny digits config, the location of the real CIFAR-10 files and the digits
studies the analysis tests read (test_report, test_overlap, test_lmc, test_bootstrap).

The session shares one JAX compilation cache (a temporary folder, also handed to the test's
subprocesses through the environment): most tests build the same few models afresh, and a
compiled step found in the cache costs milliseconds instead of seconds. A cache the caller set
up already is left alone.
"""

import os
import shutil
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CIFAR10_DIR = REPO.parent / "shared" / "data" / "cifar10"


def pytest_configure(config):
    if "JAX_COMPILATION_CACHE_DIR" in os.environ:
        return
    folder = tempfile.mkdtemp(prefix="lottery_kd_jax_cache_")
    config._lottery_kd_jax_cache = folder
    os.environ["JAX_COMPILATION_CACHE_DIR"] = folder
    os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
    os.environ["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "0"
    import jax  # reads the environment when first imported; set it here too if it was earlier
    jax.config.update("jax_compilation_cache_dir", folder)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


def pytest_unconfigure(config):
    folder = getattr(config, "_lottery_kd_jax_cache", None)
    if folder:
        shutil.rmtree(folder, ignore_errors=True)


def make_tiny_config():
    """The quickstart shrunk to seconds: 2 epochs, 2 iterative levels, all eight variants."""
    from experiments import quickstart
    config = quickstart.get_config()
    config.train.epochs = 2
    config.prune.schedule = "iterative"  # the tests follow chains of 20 % per level
    config.prune.fraction = 0.2
    config.prune.levels = 2
    config.prune.first_level = 1
    config.lottery.variants = "lt,reinit,weight_rewind,lr_rewind,finetune,kd,kd_rewind,kd_lr_rewind"
    config.lottery.rewind = "1ep"
    config.log.progress = "lines"
    config.log.tensorboard = False
    return config


@pytest.fixture
def tiny_config():
    return make_tiny_config()


@pytest.fixture(scope="session")
def studies(tmp_path_factory):
    """Two seeds of a quickstart-shaped study (2 levels), plus one with another protocol.

    Trained once per session (about a minute) for the analysis test modules that share it; the
    analysis tools write nothing into a study, and a test that appends to one appends a torn line
    that every reader skips."""
    from lottery_kd.study import lottery
    from tests.analysis_helpers import _study
    root = tmp_path_factory.mktemp("analysis")
    other = make_tiny_config()
    other.train.epochs = 1
    other.prune.levels = 1
    other.lottery.variants = "lt"
    lottery.run(other, root / "other", log=lambda *_: None)
    return [_study(root, 0), _study(root, 1)], root / "other"
