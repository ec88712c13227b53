"""The KD ticket (Ma et al. 2021) on ImageNet (tfds imagenet2012) with ResNet-50.

    python -m experiments.imagenet_resnet50 \
        --config.data.manual_dir=/data/imagenet/tars --config.data.tfds_data_dir=/data/tfds

The first run prepares tfds imagenet2012 from ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar
in data.manual_dir (hours, once); later runs stream it. Protocol `kd_ticket` (the release's
ImageNet code): batch 512, lr 0.4 with a 5-epoch warm-up, x0.1 after epochs 30/60/80, 90 epochs,
momentum 0.9, weight decay 1e-4; random-resized crops of area 0.1-1 and aspect 0.8-1.25; test
accuracy on the validation split; one-shot pruning of the epoch-90 network to 36/59/74/83/89 %;
KD with T=4, alpha=0.9, `batchmean`, switched off from epoch 60 ("early-stopped KD"); rewinding to
epoch 6. The release trains in apex fp16, this in float32 (lottery_kd.config.protocols: notes).
"""

from __future__ import annotations

import ml_collections

from lottery_kd.config import protocols


def get_config(protocol: str = "kd_ticket") -> ml_collections.ConfigDict:
    config = protocols.experiment_config(protocol, dataset="imagenet2012", network="resnet50")
    config.data.source = "tfds"
    config.data.eval_batch_size = 1000
    config.lottery.variants = "weight_rewind,kd,kd_rewind"
    return config


if __name__ == "__main__":
    from experiments.launch import main_for
    main_for(get_config, "runs/imagenet_resnet50")
