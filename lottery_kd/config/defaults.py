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
    """Every key of an experiment config, at the KD-ticket release's CIFAR-10 settings."""
    config = ml_collections.ConfigDict()
    config.seed = 0                      # init, data order, augmentation, random pruning
    config.protocol = "kd_ticket"        # the paper whose settings these are (lottery_kd.config.
                                         # protocols); "" for none. Runs name it and list every
                                         # setting that differs from it
    config.model = _model()
    config.data = _data()
    config.train = _train()
    config.kd = _kd()
    config.prune = _prune()
    config.lottery = _lottery()
    config.dynamic = _dynamic()
    config.checkpoint = _checkpoint()
    config.parallel = _parallel()
    config.log = _log()
    return config


def _model() -> ml_collections.ConfigDict:
    """The network and how its convolutions and BatchNorms run."""
    section = ml_collections.ConfigDict()
    section.name = "resnet20"       # lottery_kd.models.MODEL_NAMES
    section.basis = ""              # "" | dct | random: train conv kernels as coefficients
                                    # in that orthonormal basis (masks act on coefficients)
    section.conv_impl = "auto"      # auto | xla | native | sparse: how CIFAR ResNets run
                                    # their convs; auto = the native CPU 3x3 kernel on CPU when
                                    # it builds, else XLA; sparse = the masked CPU kernels that
                                    # skip pruned weights (kernels/sparse_conv), dense above a
                                    # crossover density
    section.norm_impl = "fused"     # fused | flax: the ResNets' BatchNorm + residual + ReLU
                                    # as one op with a hand-written backward pass (the native
                                    # CPU kernel on one CPU device), or nn.BatchNorm
                                    # (same math; speeds in docs/benchmarks.md)
    return section


def _data() -> ml_collections.ConfigDict:
    """The data set, where it is read from, its splits and normalisation."""
    section = ml_collections.ConfigDict()
    section.name = "cifar10"         # cifar10 | cifar100 | imagenet2012 | digits
    section.source = "auto"          # local (official binary files in data.dir) | tfds |
                                     # auto: local when data.dir is set, else tfds
    section.dir = ""                 # source=local: --config.data.dir=PATH/cifar-10-batches-bin
    section.verify_checksums = True  # source=local: official SHA-256 of every CIFAR-10 file
    section.tfds_data_dir = ""       # source=tfds: tfds data_dir ("": tfds default)
    section.tfds_download = True     # source=tfds: download if not prepared (needs network)
    section.manual_dir = ""          # imagenet2012: folder with ILSVRC2012_img_{train,val}.tar
    section.image_size = 224         # imagenet2012: training/eval crop size
    section.validation_size = 5000   # 45k/5k train/validation (KD-ticket); 0: full 50k train
    section.validation_split = "first"  # first: the first N training images (KD-ticket) |
                                     # random: a fixed-seed random N (the split before
                                     # protocols existed)
    section.normalization = "cifar10_constants"  # cifar10_constants (KD-ticket: mean
                                     # (0.4914, 0.4822, 0.4465), std (0.2023, 0.1994,
                                     # 0.2010)) | train_statistics (per channel, of the
                                     # training images) | per_image (each image to mean 0,
                                     # std 1: Renda et al.'s TF code)
    section.crop_scale = "0.08,1"    # imagenet2012: random-resized-crop area range
    section.crop_ratio = "3/4,4/3"   # imagenet2012: random-resized-crop aspect ratio range
    section.train_subset = 0         # >0: train on the first N training images (shrunk runs)
    section.eval_batch_size = 1000
    return section


def _train() -> ml_collections.ConfigDict:
    """SGD with momentum and a step learning-rate schedule."""
    section = ml_collections.ConfigDict()
    section.epochs = 182
    section.batch_size = 128
    section.lr = 0.1
    section.momentum = 0.9
    section.weight_decay = 2e-4
    section.milestones = "90,135"   # LR drops after these many epochs (KD-ticket: 90,135;
                                    # Renda et al.: 91,136); "": 50% and 75% of epochs
    section.lr_decay = 0.1          # LR factor at each milestone
    section.warmup_epochs = 0       # linear warm-up
    section.precision = "float32"   # float32 | bfloat16: the dtype forward and backward run in
                                    # (params, optimizer state, update, losses stay float32;
                                    # training.precision). bfloat16 runs outside the native CPU
                                    # kernels (conv_impl auto -> XLA; native/sparse refused)
    return section


def _kd() -> ml_collections.ConfigDict:
    """The distillation loss (the KD ticket's soft labels)."""
    section = ml_collections.ConfigDict()
    section.temperature = 5.0
    section.alpha = 0.9                # weight of the distillation term
    section.reduction = "mean"         # as the KD-ticket CIFAR code (torch KLDivLoss's
                                       # default); or batchmean
    section.stop_epoch = config_dict.placeholder(int)  # plain CE from this epoch on; unset: never
    section.teacher_logits = "auto"    # how a KD step gets the teacher's logits: cached (computed
                                       # once per step and shared by the study's KD runs,
                                       # training.teacher_cache), in_step, or auto (cached where
                                       # they fit 4 GiB on one process). How, not what: each run
                                       # records its mode and resumes on it
    return section


def _prune() -> ml_collections.ConfigDict:
    """How masks are made at each level."""
    section = ml_collections.ConfigDict()
    section.method = "magnitude_global"  # lottery_kd.sparsity.pruning.names()
    section.scope = "conv"          # conv (stem + 1x1 shortcuts included) | conv_no_shortcut
                                    # (Renda et al.) | conv_fc | vit_matmul (a ViT's
                                    # attention and MLP kernels: vit_tiny)
    section.fraction = 0.2          # of the remaining weights, per level
    section.schedule = "oneshot"    # oneshot (level L prunes the dense network to sparsity
                                    # 1-(1-fraction)^L) | iterative (IMP)
    section.levels = 16             # KD-ticket: 1-0.8^k for k = 1..16
    section.first_level = 1         # oneshot: run levels first_level..levels only (each prunes
                                    # the dense network, so the others are not needed)
    section.only_levels = ""        # oneshot: "" (every level from first_level) or the levels
                                    # to run, in order, e.g. "10,8"; add more later in the
                                    # same workdir (like first_level, it changes no result)
    section.distribution = "global"  # global | uniform | erk: per-layer budgets (methods that
                                    # honour it; validation names the others)
    section.structure = "unstructured"  # unstructured | N:M, e.g. 2:4 (N of every M input
                                    # channels) | block:B, e.g. block:16 (B output channels
                                    # together); sparsity.structure
    section.source = "final"        # weights scored: final (IMP) | init (pruning at init)
    section.synflow_rounds = 100    # synflow: rounds of shrinking density
    section.grasp_temperature = 200.0  # grasp: logits / T for the gradient (authors' code)
    return section


def _lottery() -> ml_collections.ConfigDict:
    """The retrain variants and the rewind point."""
    section = ml_collections.ConfigDict()
    section.variants = "lt,weight_rewind,lr_rewind,finetune,kd,kd_rewind"
    section.rewind = "33ep"       # rewind point: '33ep' (KD-ticket CIFAR) or '500it'
    return section


def _dynamic() -> ml_collections.ConfigDict:
    """Dynamic sparse training (RigL, SET, ...) instead of IMP levels."""
    section = ml_collections.ConfigDict()  # dynamic sparse training instead of IMP levels
    section.method = ""           # "" (off) | rigl | set | gmp | a registered dynamic method
                                  # (gmp: gradual magnitude pruning, Zhu & Gupta 2017)
    section.sparsity = 0.8        # of the in-scope weights, constant throughout (gmp: reached
                                  # at end_fraction)
    section.distribution = "erk"  # layer-wise densities: erk | uniform
    section.delta_t = 100         # steps between mask updates
    section.alpha = 0.3           # initial drop fraction (cosine-decayed; not gmp)
    section.start_fraction = 0.25  # gmp: pruning starts after this fraction of training
    section.end_fraction = 0.75   # no mask updates after this fraction of training (gmp: the
                                  # cubic schedule reaches dynamic.sparsity there)
    section.distill = False       # add the KD loss from the dense (level 0) teacher
    section.init = "dense"        # dense (the init snapshot) | sparse (sparse-aware init;
                                  # not gmp, which starts dense)
    return section


def _checkpoint() -> ml_collections.ConfigDict:
    """Resume checkpoints of the run in progress."""
    section = ml_collections.ConfigDict()
    section.every_steps = 0    # resume checkpoint every N steps (0: every epoch)
    section.keep = 2           # resume checkpoints kept per training run
    return section


def _parallel() -> ml_collections.ConfigDict:
    """Devices, processes and BatchNorm statistics."""
    section = ml_collections.ConfigDict()
    section.distributed = "off"  # off | auto (TPU pods, SLURM, ...) | on (keys below)
    section.coordinator_address = ""   # on: "HOST:PORT" of process 0
    section.num_processes = 0          # on: number of processes (0: $JAX_NUM_PROCESSES)
    section.process_id = -1            # on: this process's id (-1: $JAX_PROCESS_ID)
    section.coordinator_bind_address = ""  # on: e.g. "127.0.0.1:PORT" (default all)
    section.num_cpu_devices = 0        # >0: split the CPU into N devices (testing)
    section.batch_norm = "global"      # global (whole batch) | per_device statistics
    return section


def _log() -> ml_collections.ConfigDict:
    """Progress output and TensorBoard."""
    section = ml_collections.ConfigDict()
    section.progress = "auto"         # auto (bar on a terminal) | bar | lines
    section.tensorboard = True
    return section
