"""The whole KD-ticket pipeline in about a minute on a laptop CPU, offline: 8x8 digits, a convnet.

    python -m experiments.quickstart --workdir /tmp/quickstart

Dense training, then one-shot pruning of the trained network to densities 1.6 and 0.8 percent
(0.5^k, k = 6, 7), each retrained by seven variants, KD from the dense teacher included. At
these sparsities the variants separate: see the README for what to look for. No paper's protocol
(`protocol=""`): its own small settings.
"""

from __future__ import annotations

import ml_collections

from lottery_kd.config import protocols


def get_config() -> ml_collections.ConfigDict:
    config = protocols.experiment_config(protocols.NONE, dataset="digits",
                                         network="digits_convnet")
    config.data.validation_size = 0      # digits has its own fixed 180-image validation split
    config.data.normalization = "train_statistics"
    config.data.eval_batch_size = 360
    config.train.epochs = 12
    config.train.milestones = ""         # 50% and 75% of training
    config.train.batch_size = 64
    config.train.lr = 0.05
    config.train.weight_decay = 5e-4
    config.kd.temperature = 4.0
    config.kd.alpha = 0.9
    config.kd.reduction = "batchmean"
    config.prune.schedule = "oneshot"    # every level prunes the dense network, in one shot
    config.prune.fraction = 0.5
    config.prune.levels = 7
    config.prune.first_level = 6         # 98.4 and 99.2 % sparsity
    config.lottery.variants = "lt,reinit,weight_rewind,lr_rewind,finetune,kd,kd_rewind"
    config.lottery.rewind = "1ep"
    return config


if __name__ == "__main__":
    from experiments.launch import main_for
    main_for(get_config, "runs/quickstart")
