"""Rewinding against the KD ticket on CIFAR-10 with ResNet-20, in Renda et al.'s protocol.

    python -m experiments.cifar10_resnet20 --config.data.dir=PATH/TO/cifar-10-batches-bin

Protocol `renda` (lottery_kd.config.protocols; ResNet-20 is in Renda et al.'s tables, not in the
KD-ticket release): basic blocks; 182 epochs, batch 128, lr 0.1 (x0.1 after epochs 91 and 136),
momentum 0.9, weight decay 2e-4; the full 50,000 training images (no validation split, test
accuracy at the end); per-image standardisation; IMP, 20% of the remaining conv weights per level
(1x1 projection shortcuts and fc dense), 10 levels; KD with the release's T=5, alpha=0.9, `mean`
reduction; rewinding to epoch 33. `--config.protocol=kd_ticket` switches to the KD-ticket
release's settings. Shrink a run with --config.data.train_subset=5000 --config.train.epochs=2
--config.train.milestones=1 --config.prune.levels=1 --config.lottery.variants=lt,kd
--config.lottery.rewind=1ep
"""

from __future__ import annotations

import ml_collections

from lottery_kd.config import protocols


def get_config(protocol: str = "renda") -> ml_collections.ConfigDict:
    return protocols.experiment_config(protocol, dataset="cifar10", network="resnet20")


if __name__ == "__main__":
    from experiments.launch import main_for
    main_for(get_config, "runs/cifar10_resnet20")
