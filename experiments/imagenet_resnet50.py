"""ResNet-50 on ImageNet (tfds imagenet2012): the standard recipe, with the KD-ticket KD settings.

    python -m experiments.imagenet_resnet50 \
        --config.data.manual_dir=/data/imagenet/tars --config.data.tfds_data_dir=/data/tfds

The first run prepares tfds imagenet2012 from ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar
in data.manual_dir (hours, once); later runs stream it. Defaults: batch 1024, lr 0.4 with a 5-epoch
linear warm-up, x0.1 at epochs 30/60/80, 90 epochs, momentum 0.9, weight decay 1e-4; test accuracy
on the validation split. KD as in the KD-ticket ImageNet code: T=4, alpha=0.9, batchmean reduction,
distillation switched off from epoch 60 ("early-stopped KD"); rewinding to epoch 6.
"""

from __future__ import annotations

import ml_collections

from experiments.configs import default


def get_config() -> ml_collections.ConfigDict:
    config = default.get_config()
    config.model.name = "resnet50"
    config.data.name = "imagenet2012"
    config.data.source = "tfds"
    config.data.validation_size = 0     # the validation split is the test set
    config.data.eval_batch_size = 1000
    config.data.image_size = 224
    config.train.epochs = 90
    config.train.batch_size = 1024
    config.train.lr = 0.4
    config.train.warmup_epochs = 5
    config.train.milestones = "30,60,80"
    config.train.weight_decay = 1e-4
    config.kd.temperature = 4.0
    config.kd.alpha = 0.9
    config.kd.reduction = "batchmean"
    config.kd.stop_epoch = 60
    config.prune.levels = 5
    config.lottery.variants = "weight_rewind,kd,kd_rewind"
    config.lottery.rewind = "6ep"
    return config


if __name__ == "__main__":
    from experiments.launch import main_for
    main_for(get_config, "runs/imagenet_resnet50")
