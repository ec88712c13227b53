"""The whole KD-ticket pipeline in minutes on a laptop CPU, offline: 8x8 digits, a small convnet.

    python -m experiments.quickstart --workdir /tmp/quickstart

Dense training, then 3 iterative levels (20% of the remaining conv weights each) of six retrain
variants, KD from the dense teacher included.
"""

from __future__ import annotations

import ml_collections

from experiments.configs import default


def get_config() -> ml_collections.ConfigDict:
    config = default.get_config()
    config.model.name = "digits_convnet"
    config.data.name = "digits"
    config.data.validation_size = 0      # digits has its own fixed 180-image validation split
    config.data.eval_batch_size = 360
    config.train.epochs = 12
    config.train.batch_size = 64
    config.train.lr = 0.05
    config.train.weight_decay = 5e-4
    config.kd.temperature = 4.0
    config.kd.alpha = 0.9
    config.kd.reduction = "batchmean"
    config.prune.levels = 3
    config.lottery.variants = "lt,weight_rewind,lr_rewind,finetune,kd,kd_rewind"
    config.lottery.rewind = "1ep"
    return config


if __name__ == "__main__":
    from experiments.launch import main_for
    main_for(get_config, "runs/quickstart")
