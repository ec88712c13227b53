"""Shared by the conv-routing tests: a digits ResNet-20 study on one conv_impl, and resume
checkpoints that hold nothing but the fingerprint a resume reads its path from."""

import json
from pathlib import Path


def routing_study(tmp_path: Path, conv_impl: str):
    """A Study (nothing trained, nothing recorded) with model.conv_impl=`conv_impl`."""
    from experiments import cifar10_resnet20
    from lottery_kd.study.study import Study
    config = cifar10_resnet20.get_config()
    config.data.name, config.data.validation_size = "digits", 0
    config.model.conv_impl = conv_impl
    return Study(config, tmp_path, log=lambda *_: None, record=False)


def write_fingerprint(store: Path, fingerprint: dict, step: int = 100) -> None:
    """A resume checkpoint at `step` in `store` whose metadata holds only `fingerprint`."""
    meta = store / str(step) / "meta"
    meta.mkdir(parents=True, exist_ok=True)
    (meta / "metadata").write_text(json.dumps({"fingerprint": fingerprint}))
