#!/usr/bin/env bash
# Structured tickets against their unstructured twins on the real CIFAR-10, shrunk (issue 22):
# ResNet-20 in the renda protocol cut to 4 epochs on the first 10,000 training images (lr 0.1,
# x0.1 after epochs 2 and 3; test accuracy on all 10,000 test images at the end), everything at
# 50 % sparsity (what 2:4 fixes):
#   * one-shot magnitude pruning of the dense network with prune.structure = unstructured, 2:4
#     and block:16, each ticket retrained with lt, weight_rewind (epoch 1) and kd;
#   * gradual magnitude pruning (dynamic.method=gmp, uniform layers, masks every 10 steps from
#     25 % to 75 % of training) unstructured and block:16, with and without KD.
# Each workdir trains its own dense network (same seed, so the same network). About 40 min on
# 2 busy cores; rerun to resume. Tabulate with: python docs/results/structured_table.py
set -euo pipefail
DATA=${DATA:-../shared/data/cifar10}
OUT=${OUT:-runs/structured_shrunk}
mkdir -p "$OUT"
common=(--config.data.dir="$DATA" --config.data.train_subset=10000 --config.train.epochs=4
        --config.train.milestones=2,3 --config.log.progress=lines --config.log.tensorboard=false)
for structure in unstructured 2:4 block:16; do
  python -m experiments.cifar10_resnet20 --workdir "$OUT/oneshot_${structure/:/_}" "${common[@]}" \
    --config.prune.structure="$structure" --config.prune.schedule=oneshot \
    --config.prune.fraction=0.5 --config.prune.levels=1 \
    --config.lottery.variants=lt,weight_rewind,kd --config.lottery.rewind=1ep
done
for structure in unstructured block:16; do
  for distill in false true; do
    python -m experiments.cifar10_resnet20 --workdir "$OUT/gmp_${structure/:/_}_kd_$distill" \
      "${common[@]}" --config.prune.structure="$structure" --config.dynamic.method=gmp \
      --config.dynamic.sparsity=0.5 --config.dynamic.distribution=uniform \
      --config.dynamic.delta_t=10 --config.dynamic.distill="$distill"
  done
done
