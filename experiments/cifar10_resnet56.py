"""The KD ticket (Ma et al. 2021) on CIFAR-10 with ResNet-56: the KD-ticket release's experiment.

    python -m experiments.cifar10_resnet56 --config.data.dir=PATH/TO/cifar-10-batches-bin

Protocol `kd_ticket` (lottery_kd.config.protocols): the release's bottleneck ResNet-56;
182 epochs, batch 128, lr 0.1 (x0.1 after epochs 90 and 135), momentum 0.9, weight decay 2e-4;
the first 5,000 training images for validation; one-shot global magnitude pruning of every conv
kernel of the trained dense network to 1-0.8^k, k = 1..16; KD with T=5, alpha=0.9, the `mean`
reduction; rewinding to epoch 33. `--config.protocol=renda` switches to Renda et al.'s protocol
(basic blocks, IMP). Shrink a run with --config.data.train_subset=5000
--config.train.epochs=2 --config.train.milestones=1 --config.prune.levels=1
--config.lottery.variants=lt,kd --config.lottery.rewind=1ep
"""

from __future__ import annotations

import ml_collections

from lottery_kd.config import protocols


def get_config(protocol: str = "kd_ticket") -> ml_collections.ConfigDict:
    return protocols.experiment_config(protocol, dataset="cifar10", network="resnet56")


if __name__ == "__main__":
    from experiments.launch import main_for
    main_for(get_config, "runs/cifar10_resnet56")
