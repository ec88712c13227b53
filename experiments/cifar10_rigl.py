"""RigL (dynamic sparse training) on CIFAR-10 ResNets, optionally with KD from a dense teacher.

    python -m experiments.cifar10_rigl --config.data.dir=PATH/TO/cifar-10-batches-bin \
        --config.model.name=resnet56 --config.dynamic.sparsity=0.9 --config.dynamic.distill=True

The dense network is trained first (level 0: the teacher, and the baseline row); then one RigL run
from init at dynamic.sparsity with ERK layer densities, masks updated every 100 steps (drop
fraction 0.3, cosine-decayed, updates until 75% of training). The training recipe is the KD-ticket
release's CIFAR one (lottery_kd.config.defaults: 182 epochs, batch 128, lr 0.1, x0.1 after epochs
90 and 135, 45k/5k train/validation); no paper's protocol is named (`protocol=""`). Any model by
--config.model.name; SET by --config.dynamic.method=set; sparse-aware init by
--config.dynamic.init=sparse; gradual magnitude pruning (dense at first, pruned on a cubic schedule
between 25% and 75% of training) by --config.dynamic.method=gmp.
"""

from __future__ import annotations

import ml_collections

from lottery_kd.config import protocols


def with_rigl(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """`config` set to RigL's CIFAR dynamic sparse recipe: 90 % ERK, masks every 100 steps,
    drop fraction 0.3 cosine-decayed, no updates after 75 % of training, no distillation."""
    config.dynamic.method = "rigl"
    config.dynamic.sparsity = 0.9
    config.dynamic.distribution = "erk"
    config.dynamic.delta_t = 100
    config.dynamic.alpha = 0.3
    config.dynamic.end_fraction = 0.75
    config.dynamic.distill = False
    return config


def get_config() -> ml_collections.ConfigDict:
    return with_rigl(protocols.experiment_config(protocols.NONE, dataset="cifar10",
                                                 network="resnet20"))


if __name__ == "__main__":
    from experiments.launch import main_for
    main_for(get_config, "runs/cifar10_rigl")
