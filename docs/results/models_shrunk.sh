#!/usr/bin/env bash
# The registry's other networks on the real CIFAR-10, shrunk (issue 23): each trains 4 epochs on
# the first 10,000 training images (vgg16: 5,000, as it costs twice wrn22_2's 315 MFLOPs per
# image) and is tested on all 10,000 test images at the end.
#   * wrn22_2 and vgg16 under the renda protocol (lr 0.1, x0.1 after epochs 2 and 3): the dense
#     network, one-shot global magnitude pruning to 80 % sparsity (prune.fraction=0.8, one level),
#     the ticket retrained with lt, weight_rewind (to epoch 1) and kd;
#   * wrn22_2 in RigL's CIFAR recipe (experiments.cifar10_wrn22_2: lr /5 at 31, 62 and 92 % of
#     training, here after epochs 1, 2 and 3) with RigL at 80 % ERK sparsity, masks every 10
#     steps (the run is 312 steps long, not RigL's 97,656);
#   * vit_tiny like wrn22_2 with lt and kd, its masks on the attention and MLP kernels only
#     (prune.scope=vit_matmul), at lr 0.05 after a 1-epoch warm-up (SGD at 0.1 is the ResNets'
#     recipe, not a ViT's);
#   * then, in RigL's recipe, RigL's two baselines at 80 % ERK: Static (RigL with no mask update:
#     dynamic.end_fraction=0) and gradual magnitude pruning (dynamic.method=gmp, RigL's "Pruning").
# Each workdir trains its own dense network first. A wrn22_2 or vit_tiny run takes 11-14 min
# on 2 cores (4 epochs with a test pass each); rerun to resume. Tabulate with: python docs/results/models_table.py
set -euo pipefail
DATA=${DATA:-../shared/data/cifar10}
OUT=${OUT:-runs/models_shrunk}
mkdir -p "$OUT"
common=(--config.data.dir="$DATA" --config.train.epochs=4 --config.log.progress=lines
        --config.log.tensorboard=false)
ten=("${common[@]}" --config.data.train_subset=10000)
ticket=(--config.train.milestones=2,3 --config.prune.schedule=oneshot --config.prune.fraction=0.8
        --config.prune.levels=1 --config.lottery.rewind=1ep)
rigl=("${ten[@]}" --config.train.milestones=1,2,3 --config.dynamic.sparsity=0.8
      --config.dynamic.delta_t=10)
python -m experiments.cifar10_resnet20 --workdir "$OUT/wrn22_2" "${ten[@]}" "${ticket[@]}" \
  --config.model.name=wrn22_2 --config.lottery.variants=lt,weight_rewind,kd
python -m experiments.cifar10_wrn22_2 --workdir "$OUT/wrn22_2_rigl80" "${rigl[@]}"
python -m experiments.cifar10_resnet20 --workdir "$OUT/vit_tiny" "${ten[@]}" "${ticket[@]}" \
  --config.model.name=vit_tiny --config.prune.scope=vit_matmul --config.train.lr=0.05 \
  --config.train.warmup_epochs=1 --config.lottery.variants=lt,kd
python -m experiments.cifar10_resnet20 --workdir "$OUT/vgg16" "${common[@]}" "${ticket[@]}" \
  --config.data.train_subset=5000 --config.model.name=vgg16 \
  --config.lottery.variants=lt,weight_rewind,kd
python -m experiments.cifar10_wrn22_2 --workdir "$OUT/wrn22_2_static80" "${rigl[@]}" \
  --config.dynamic.end_fraction=0
python -m experiments.cifar10_wrn22_2 --workdir "$OUT/wrn22_2_gmp80" "${rigl[@]}" \
  --config.dynamic.method=gmp
