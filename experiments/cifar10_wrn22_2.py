"""RigL on CIFAR-10 with WideResNet-22-2, in RigL's CIFAR recipe (Evci et al. 2020).

    python -m experiments.cifar10_wrn22_2 --config.data.dir=PATH/TO/cifar-10-batches-bin

The recipe of RigL's `rigl/cifar_resnet/resnet_train_eval.py` and `data_helper.py`: the
pre-activation WRN-22-2 (`wrn22_2`, 1.08M parameters); all 50,000 training images, test accuracy
at the end (no validation split); per-image standardisation, pad-4 random crops and horizontal
flips; batch 128 for 250 epochs (RigL: 97,656 steps; here 250 x 390 = 97,500); SGD momentum
0.9, weight decay 5e-4, lr 0.1 divided by 5 at steps 30k, 60k and 90k (here after epochs 77, 154
and 231: steps 30,030, 60,060 and 90,090). RigL at 90 % sparsity with ERK layer densities, masks
updated every 100 steps, drop fraction 0.3 cosine-decayed, no updates in the last 25 % of
training (RigL's code: after step 75,000, 77 %). The dense network is trained first (level 0:
the baseline row, and the teacher with --config.dynamic.distill=True). RigL's published
accuracies for this network (50/80/90/95 % sparsity) are in
lottery_kd/published/rigl2020_cifar10_wrn22_2.json (`lottery_kd.published.load`); the report
does not plot them yet.

Where this differs from RigL's code: momentum is heavy-ball, not Nesterov; no dropout (RigL's
blocks drop 0.3 between their convs); He fan-out conv initialisation, not Glorot uniform; crops
pad with zeros, not by reflection; prune.scope=conv_fc prunes the stem conv too, which RigL
keeps dense (prune_first_layer=False) - at 90 % sparsity ERK gives the 432-weight stem density 1
anyway. No paper's protocol is named (`protocol=""`). Other sparsities by
--config.dynamic.sparsity=0.8; SET by --config.dynamic.method=set; gradual magnitude pruning
(RigL's `Pruning` baseline) by --config.dynamic.method=gmp. Shrink a run with
--config.data.train_subset=5000 --config.train.epochs=2 --config.train.milestones=1
"""

from __future__ import annotations

import ml_collections

from experiments.cifar10_rigl import with_rigl
from lottery_kd.config import protocols


def get_config() -> ml_collections.ConfigDict:
    config = protocols.experiment_config(protocols.NONE, dataset="cifar10", network="wrn22_2")
    config.data.validation_size = 0          # RigL trains on all 50k, reports test accuracy
    config.data.normalization = "per_image"  # tf.image.per_image_standardization
    config.train.epochs = 250
    config.train.batch_size = 128
    config.train.lr = 0.1
    config.train.momentum = 0.9
    config.train.weight_decay = 5e-4
    config.train.lr_decay = 0.2              # 0.1 / 5^i
    config.train.milestones = "77,154,231"   # RigL: steps 30k, 60k, 90k at 390 steps/epoch
    config.prune.scope = "conv_fc"           # every conv and the fc (RigL: prune_last_layer)
    return with_rigl(config)


if __name__ == "__main__":
    from experiments.launch import main_for
    main_for(get_config, "runs/cifar10_wrn22_2")
