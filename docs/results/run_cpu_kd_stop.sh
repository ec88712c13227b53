#!/usr/bin/env bash
# Follow-up to run_cpu.sh: is the KD ticket capped by its 15-epoch teacher? The same study (seed
# 0, levels 2 and 3) with distillation switched off at the first LR drop (kd.stop_epoch=7: steps
# 0..2456 use the KD loss, plain cross-entropy from step 2457 = 7 x 351 on), the CIFAR analogue of
# the KD-ticket release's early-stopped KD on ImageNet. Only the distilled variants are retrained;
# their undistilled twins are seed 0's rows of run_cpu.sh, which share this study's dense
# network, masks and data order (the dense run here retrains bit for bit the same network: same
# seed and settings, and kd.stop_epoch does not touch it).
#
# Resumes where it stopped, like run_cpu.sh; run it after run_cpu.sh has finished.
set -euo pipefail
DATA=${DATA:-../shared/data/cifar10}
OUT=${OUT:-runs/repro_cpu}

python -m experiments.cifar10_resnet20 --workdir "$OUT/resnet20_15ep_kdstop7_seed0" \
  --config.seed=0 \
  --config.data.dir="$DATA" \
  --config.train.epochs=15 \
  --config.prune.schedule=oneshot --config.prune.fraction=0.5904 --config.prune.levels=3 \
  --config.prune.first_level=2 \
  --config.lottery.variants=kd,kd_rewind \
  --config.lottery.rewind=955it \
  --config.kd.stop_epoch=7 \
  --config.model.norm_impl=flax \
  --config.protocol= --config.train.milestones= \
  --config.data.validation_split=random --config.data.normalization=train_statistics \
  --config.log.progress=lines
