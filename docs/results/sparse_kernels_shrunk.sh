#!/usr/bin/env bash
# Do tickets trained on the masked-convolution kernels (model.conv_impl=sparse, which skip the
# pruned weights) learn what the dense kernels learn? (issue 20) ResNet-20 in the renda protocol
# shrunk to 4 epochs on the first 10,000 CIFAR-10 training images (lr x0.1 after epochs 2 and 3),
# one-shot global magnitude pruning to level 10 (density 0.1074, 89.26 % sparse), the ticket
# retrained with lt and kd; seeds $SEEDS (default 0 1), each on the dense kernels (native) and on
# the sparse kernels. Tabulate with: python docs/results/sparse_kernels_table.py
set -euo pipefail
DATA=${DATA:-../shared/data/cifar10}
OUT=${OUT:-runs/sparse_kernels_shrunk}
SEEDS=${SEEDS:-0 1}
mkdir -p "$OUT"
for seed in $SEEDS; do
  for impl in native sparse; do
    python -m experiments.cifar10_resnet20 --workdir "$OUT/${impl}_seed$seed" \
      --config.seed="$seed" --config.model.conv_impl="$impl" --config.data.dir="$DATA" \
      --config.data.train_subset=10000 --config.train.epochs=4 --config.train.milestones=2,3 \
      --config.prune.schedule=oneshot --config.prune.levels=10 --config.prune.only_levels=10 \
      --config.lottery.variants=lt,kd --config.lottery.rewind=1ep \
      --config.log.progress=lines --config.log.tensorboard=false
  done
done
