"""The base config: every key documented, at the KD-ticket release's CIFAR-10 settings.

The values are those of the `kd_ticket` protocol on CIFAR-10 (lottery_kd.config.protocols; a test
holds them equal), with ResNet-20 as the model. Experiments start from here and apply their
protocol. Override any key on the command line: --config.train.epochs=30
--config.lottery.variants=lt,kd
"""

from __future__ import annotations

import ml_collections
from ml_collections import config_dict


def get_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.seed = 0                      # init, data order, augmentation, random pruning
    config.protocol = "kd_ticket"        # the paper whose settings these are (lottery_kd.config.
                                         # protocols); "" for none. Runs name it and list every
                                         # setting that differs from it

    config.model = ml_collections.ConfigDict()
    config.model.name = "resnet20"       # lottery_kd.models.MODEL_NAMES
    config.model.basis = ""              # "" | dct | random: train conv kernels as coefficients
                                         # in that orthonormal basis (masks act on coefficients)
    config.model.conv_impl = "auto"      # auto | xla | native: how CIFAR ResNets run 3x3 convs;
                                         # auto = the native CPU kernel on CPU when it builds,
                                         # else XLA
    config.model.norm_impl = "fused"     # fused | flax: CIFAR ResNets' BatchNorm + residual + ReLU
                                         # as one op with a hand-written backward pass (the native
                                         # CPU kernel on one CPU device), or nn.BatchNorm
                                         # (same math; speeds in the README's CPU table)

    config.data = ml_collections.ConfigDict()
    config.data.name = "cifar10"         # cifar10 | cifar100 | imagenet2012 | digits
    config.data.source = "auto"          # local (official binary files in data.dir) | tfds |
                                         # auto: local when data.dir is set, else tfds
    config.data.dir = ""                 # source=local: --config.data.dir=PATH/cifar-10-batches-bin
    config.data.verify_checksums = True  # source=local: official SHA-256 of every CIFAR-10 file
    config.data.tfds_data_dir = ""       # source=tfds: tfds data_dir ("": tfds default)
    config.data.tfds_download = True     # source=tfds: download if not prepared (needs network)
    config.data.manual_dir = ""          # imagenet2012: folder with ILSVRC2012_img_{train,val}.tar
    config.data.image_size = 224         # imagenet2012: training/eval crop size
    config.data.validation_size = 5000   # 45k/5k train/validation (KD-ticket); 0: full 50k train
    config.data.validation_split = "first"  # first: the first N training images (KD-ticket) |
                                         # random: a fixed-seed random N (the split before
                                         # protocols existed)
    config.data.normalization = "cifar10_constants"  # cifar10_constants (KD-ticket: mean
                                         # (0.4914, 0.4822, 0.4465), std (0.2023, 0.1994,
                                         # 0.2010)) | train_statistics (per channel, of the
                                         # training images) | per_image (each image to mean 0,
                                         # std 1: Renda et al.'s TF code)
    config.data.crop_scale = "0.08,1"    # imagenet2012: random-resized-crop area range
    config.data.crop_ratio = "3/4,4/3"   # imagenet2012: random-resized-crop aspect ratio range
    config.data.train_subset = 0         # >0: train on the first N training images (shrunk runs)
    config.data.eval_batch_size = 1000

    config.train = ml_collections.ConfigDict()
    config.train.epochs = 182
    config.train.batch_size = 128
    config.train.lr = 0.1
    config.train.momentum = 0.9
    config.train.weight_decay = 2e-4
    config.train.milestones = "90,135"   # LR drops after these many epochs (KD-ticket: 90,135;
                                         # Renda et al.: 91,136); "": 50% and 75% of epochs
    config.train.lr_decay = 0.1          # LR factor at each milestone
    config.train.warmup_epochs = 0       # linear warm-up

    config.kd = ml_collections.ConfigDict()
    config.kd.temperature = 5.0
    config.kd.alpha = 0.9                # weight of the distillation term
    config.kd.reduction = "mean"         # as the KD-ticket CIFAR code (torch KLDivLoss's
                                         # default); or batchmean
    config.kd.stop_epoch = config_dict.placeholder(int)  # plain CE from this epoch on; unset: never

    config.prune = ml_collections.ConfigDict()
    config.prune.method = "magnitude_global"  # lottery_kd.pruning.names()
    config.prune.scope = "conv"          # conv (stem + 1x1 shortcuts included) | conv_no_shortcut
                                         # (Renda et al.) | conv_fc
    config.prune.fraction = 0.2          # of the remaining weights, per level
    config.prune.schedule = "oneshot"    # oneshot (level L prunes the dense network to sparsity
                                         # 1-(1-fraction)^L) | iterative (IMP)
    config.prune.levels = 16             # KD-ticket: 1-0.8^k for k = 1..16
    config.prune.first_level = 1         # oneshot: run levels first_level..levels only (each prunes
                                         # the dense network, so the others are not needed)
    config.prune.only_levels = ""        # oneshot: "" (every level from first_level) or the levels
                                         # to run, in order, e.g. "10,8"; add more later in the
                                         # same workdir (like first_level, it changes no result)
    config.prune.distribution = "global"  # global | uniform | erk: per-layer budgets (methods that
                                         # honour it; validation names the others)
    config.prune.source = "final"        # weights scored: final (IMP) | init (pruning at init)
    config.prune.synflow_rounds = 100    # synflow: rounds of shrinking density
    config.prune.grasp_temperature = 200.0  # grasp: logits / T for the gradient (authors' code)

    config.lottery = ml_collections.ConfigDict()
    config.lottery.variants = "lt,weight_rewind,lr_rewind,finetune,kd,kd_rewind"
    config.lottery.rewind = "33ep"       # rewind point: '33ep' (KD-ticket CIFAR) or '500it'

    config.dynamic = ml_collections.ConfigDict()  # dynamic sparse training instead of IMP levels
    config.dynamic.method = ""           # "" (off) | rigl | set | a registered dynamic method
    config.dynamic.sparsity = 0.8        # of the in-scope weights, constant throughout
    config.dynamic.distribution = "erk"  # layer-wise densities: erk | uniform
    config.dynamic.delta_t = 100         # steps between mask updates
    config.dynamic.alpha = 0.3           # initial drop fraction (cosine-decayed)
    config.dynamic.end_fraction = 0.75   # no mask updates after this fraction of training
    config.dynamic.distill = False       # add the KD loss from the dense (level 0) teacher
    config.dynamic.init = "dense"        # dense (the init snapshot) | sparse (sparse-aware init)

    config.checkpoint = ml_collections.ConfigDict()
    config.checkpoint.every_steps = 0    # resume checkpoint every N steps (0: every epoch)
    config.checkpoint.keep = 2           # resume checkpoints kept per training run

    config.parallel = ml_collections.ConfigDict()
    config.parallel.distributed = "off"  # off | auto (TPU pods, SLURM, ...) | on (keys below)
    config.parallel.coordinator_address = ""   # on: "HOST:PORT" of process 0
    config.parallel.num_processes = 0          # on: number of processes (0: $JAX_NUM_PROCESSES)
    config.parallel.process_id = -1            # on: this process's id (-1: $JAX_PROCESS_ID)
    config.parallel.coordinator_bind_address = ""  # on: e.g. "127.0.0.1:PORT" (default all)
    config.parallel.num_cpu_devices = 0        # >0: split the CPU into N devices (testing)
    config.parallel.batch_norm = "global"      # global (whole batch) | per_device statistics

    config.log = ml_collections.ConfigDict()
    config.log.progress = "auto"         # auto (bar on a terminal) | bar | lines
    config.log.tensorboard = True
    return config
