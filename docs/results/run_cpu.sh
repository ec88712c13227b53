#!/usr/bin/env bash
# The CPU-scale reproduction behind docs/results.md: ResNet-20 on the real CIFAR-10 (45k/5k split),
# 15 epochs (LR x0.1 after epochs 7 and 11: 50% and 75%, rounded down), one-shot magnitude
# pruning of the trained dense network to 59.0%, 83.2% and 93.1% sparsity (prune.fraction=0.5904
# = 1-0.8^4, so levels 1, 2, 3 are 1-0.4096^L: the sparsities of 4, 8 and 12 IMP rounds at 20%),
# and six retrain variants. Rewinding to iteration 955 = 18.1% of the 15 x 351 = 5265 steps, as
# 33 of 182 epochs in the KD-ticket recipe. Seed 0 runs all three sparsities; further seeds the
# two highest (prune.first_level=2), which the seed-to-seed comparison needs most.
#
# model.norm_impl=flax: these studies started before the fused BatchNorm existed (and became the
# default); all their runs keep Flax's BatchNorm, so the seeds stay one protocol. They also began
# before protocols existed (experiments.cifar10_resnet20 now runs Renda et al.'s): protocol ''
# (none), the LR drops at 50% and 75% of training (train.milestones ''), the seeded random 5k
# validation split and the training images' channel statistics keep what they ran.
#
# Every command resumes where it stopped (rerun it after a crash, a kill or a new sitting); a
# finished study is skipped. DATA defaults to ../shared/data/cifar10 (official binary files).
set -euo pipefail
DATA=${DATA:-../shared/data/cifar10}
OUT=${OUT:-runs/repro_cpu}
SEEDS=${SEEDS:-"0 1"}

for seed in $SEEDS; do
  first_level=$([ "$seed" = 0 ] && echo 1 || echo 2)
  python -m experiments.cifar10_resnet20 --workdir "$OUT/resnet20_15ep_seed$seed" \
    --config.seed="$seed" \
    --config.data.dir="$DATA" \
    --config.train.epochs=15 \
    --config.prune.schedule=oneshot --config.prune.fraction=0.5904 --config.prune.levels=3 \
    --config.prune.first_level="$first_level" \
    --config.lottery.variants=lt,reinit,weight_rewind,lr_rewind,kd,kd_rewind \
    --config.lottery.rewind=955it \
    --config.model.norm_impl=flax \
    --config.protocol= --config.train.milestones= \
    --config.data.validation_split=random --config.data.normalization=train_statistics \
    --config.log.progress=lines
done
