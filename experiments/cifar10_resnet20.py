"""KD ticket vs rewinding for ResNet-20 on CIFAR-10, with the paper's recipe as defaults.

    python -m experiments.cifar10_resnet20 --config.data.dir=PATH/TO/cifar-10-batches-bin

182 epochs, batch 128, lr 0.1 (x0.1 at epochs 91 and 136), momentum 0.9, weight decay 2e-4,
KD with T=5, alpha=0.9; 45k/5k train/validation split; rewinding to epoch 33. Shrink a run with
--config.data.train_subset=5000 --config.train.epochs=2 --config.prune.levels=1
--config.lottery.variants=lt,kd --config.lottery.rewind=1ep
"""

from __future__ import annotations

import ml_collections

from experiments.configs import default


def get_config() -> ml_collections.ConfigDict:
    config = default.get_config()
    config.model.name = "resnet20"
    return config


if __name__ == "__main__":
    from experiments.launch import main_for
    main_for(get_config, "runs/cifar10_resnet20")
