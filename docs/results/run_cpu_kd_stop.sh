#!/usr/bin/env bash
# Follow-up to run_cpu.sh: is the KD ticket capped by its 15-epoch teacher? The same study (seed
# 0, levels 2 and 3) with distillation switched off at the first LR drop (kd.stop_epoch=7: steps
# 0..2456 use the KD loss, plain cross-entropy from step 2457 = 7 x 351 on): early-stopped KD as the
# KD-ticket release runs it on ImageNet, where it stops at the second LR drop (epoch 60 of 90), not
# the first. It trains its own undistilled twins
# (lt, weight_rewind) beside the distilled variants, so that every difference pairs within this
# study (same dense network, masks and data order). Its dense run has seed 0's settings but does
# not retrain seed 0's network bit for bit: bit-identical results hold on one CPU only, and since
# seed 0 ran, conv_impl=auto computes the 1x1 shortcuts as a matmul (kernels/conv3x3.py).
# tables.py --follow-up says whether the two dense networks are identical.
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
  --config.lottery.variants=lt,weight_rewind,kd,kd_rewind \
  --config.lottery.rewind=955it \
  --config.kd.stop_epoch=7 \
  --config.model.norm_impl=flax \
  --config.protocol= --config.train.milestones= \
  --config.data.validation_split=random --config.data.normalization=train_statistics \
  --config.log.progress=lines
