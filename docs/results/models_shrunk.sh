#!/usr/bin/env bash
# The registry's other networks on the real CIFAR-10, shrunk (issue 23): each trains 4 epochs on
# the first 10,000 training images and is tested on all 10,000 test images at the end.
#   * wrn22_2 and vgg16 under the renda protocol (lr 0.1, x0.1 after epochs 2 and 3): the dense
#     network, one-shot global magnitude pruning to 80 % sparsity (prune.fraction=0.8, one level),
#     the ticket retrained with lt, weight_rewind (to epoch 1) and kd;
#   * vit_tiny the same with lt and kd, its masks on the attention and MLP kernels only
#     (prune.scope=vit_matmul), at lr 0.05 after a 1-epoch warm-up (SGD at 0.1 is the ResNets'
#     recipe, not a ViT's);
#   * wrn22_2 in RigL's CIFAR recipe (experiments.cifar10_wrn22_2: lr /5 at 31, 62 and 92 % of
#     training, here after epochs 1, 2 and 3) at 80 % ERK sparsity: RigL (masks every 10 steps,
#     as the run is 312 steps long, not RigL's 97,656), Static (the same with no mask update:
#     dynamic.end_fraction=0) and gradual magnitude pruning (dynamic.method=gmp, RigL's "Pruning").
# Each workdir trains its own dense network first. About 2 h on 2 idle cores; rerun to resume.
# Tabulate with: python docs/results/models_table.py
set -euo pipefail
DATA=${DATA:-../shared/data/cifar10}
OUT=${OUT:-runs/models_shrunk}
mkdir -p "$OUT"
shrunk=(--config.data.dir="$DATA" --config.data.train_subset=10000 --config.train.epochs=4
        --config.log.progress=lines --config.log.tensorboard=false)
ticket=(--config.train.milestones=2,3 --config.prune.schedule=oneshot --config.prune.fraction=0.8
        --config.prune.levels=1 --config.lottery.rewind=1ep)
python -m experiments.cifar10_resnet20 --workdir "$OUT/wrn22_2" "${shrunk[@]}" "${ticket[@]}" \
  --config.model.name=wrn22_2 --config.lottery.variants=lt,weight_rewind,kd
python -m experiments.cifar10_resnet20 --workdir "$OUT/vit_tiny" "${shrunk[@]}" "${ticket[@]}" \
  --config.model.name=vit_tiny --config.prune.scope=vit_matmul --config.train.lr=0.05 \
  --config.train.warmup_epochs=1 --config.lottery.variants=lt,kd
rigl=(--config.train.milestones=1,2,3 --config.dynamic.sparsity=0.8 --config.dynamic.delta_t=10)
python -m experiments.cifar10_wrn22_2 --workdir "$OUT/wrn22_2_rigl80" "${shrunk[@]}" "${rigl[@]}"
python -m experiments.cifar10_wrn22_2 --workdir "$OUT/wrn22_2_static80" "${shrunk[@]}" "${rigl[@]}" \
  --config.dynamic.end_fraction=0
python -m experiments.cifar10_wrn22_2 --workdir "$OUT/wrn22_2_gmp80" "${shrunk[@]}" "${rigl[@]}" \
  --config.dynamic.method=gmp
python -m experiments.cifar10_resnet20 --workdir "$OUT/vgg16" "${shrunk[@]}" "${ticket[@]}" \
  --config.model.name=vgg16 --config.lottery.variants=lt,weight_rewind,kd
