"""Config checks that run before any compute, one function per config section.

Every problem is reported at once, one line each, naming the key, the value and what is allowed.
"""

from __future__ import annotations

import math
import re
from typing import Any, Callable

from lottery_kd.config.defaults import get_config as default_config
from lottery_kd.sparsity import dynamic as dynamic_lib, gradual
from lottery_kd.training import losses, precision as precision_lib, teacher_cache
from lottery_kd.sparsity import masks as masks_lib, pruning
from lottery_kd.sparsity import structure as structure_lib
from lottery_kd.study import variants as variants_lib
from lottery_kd.config.identity import ADDED_KEYS as ADDED_DEFAULTS
from lottery_kd.sparsity.distributions import DISTRIBUTIONS
from lottery_kd.config import protocols
from lottery_kd.data import DATASET_NAMES, NORMALIZATIONS, SOURCES
from lottery_kd.data.imagenet import parse_range
from lottery_kd.models import (BASES, CONV_IMPL_MODELS, CONV_IMPLS, MODEL_NAMES, NORM_IMPLS,
                               scopes_for)
from lottery_kd.runtime.parallel import BATCH_NORM_MODES, DISTRIBUTED_MODES
from lottery_kd.config.errors import ConfigError
from lottery_kd.config.plan import STEP_COUNT, parse_epochs, parse_names, pruning_levels

PRUNE_SCHEDULES = ("iterative", "oneshot")
VALIDATION_SPLITS = ("first", "random")
PRUNE_SOURCES = ("final", "init")
PROGRESS_MODES = ("auto", "bar", "lines")
Check = Callable[[bool, str, Any, str], None]  # check(ok, key, value, what is allowed)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _check_data(data: Any, check: Check) -> None:
    """The data section: values, and settings that the chosen data set would ignore."""
    check(data.name in DATASET_NAMES, "data.name", data.name,
          f"allowed: {', '.join(DATASET_NAMES)}")
    check(data.source in SOURCES, "data.source", data.source, f"allowed: {', '.join(SOURCES)}")
    check(_is_int(data.validation_size) and data.validation_size >= 0, "data.validation_size",
          data.validation_size, "an integer >= 0 (0: no validation split)")
    check(data.validation_split in VALIDATION_SPLITS, "data.validation_split",
          data.validation_split, f"allowed: {', '.join(VALIDATION_SPLITS)}")
    check(data.normalization in NORMALIZATIONS, "data.normalization", data.normalization,
          f"allowed: {', '.join(NORMALIZATIONS)}")
    check(_is_int(data.train_subset) and data.train_subset >= 0, "data.train_subset",
          data.train_subset, "an integer >= 0 (0: the whole training split)")
    check(_is_int(data.eval_batch_size) and data.eval_batch_size > 0, "data.eval_batch_size",
          data.eval_batch_size, "an integer > 0")
    for key in ("verify_checksums", "tfds_download"):
        check(isinstance(data[key], bool), f"data.{key}", data[key], "True or False")
    check(_is_int(data.image_size) and data.image_size >= 32, "data.image_size", data.image_size,
          "an integer >= 32 (ImageNet crop size)")
    if data.name in ("cifar10", "cifar100") and data.source == "local":  # auto: tfds without dir
        check(bool(data.dir), "data.dir", data.dir,
              "a folder holding the official binary files (or set data.source='tfds')")
    if data.name == "imagenet2012":
        check(data.source in ("tfds", "auto") and not data.dir, "data.source", data.source,
              "imagenet2012 is read through tfds: data.source='tfds' (or 'auto') and no data.dir; "
              "point data.manual_dir at the ILSVRC2012 tar files")
        check(data.validation_size == 0, "data.validation_size", data.validation_size,
              "0 for imagenet2012 (its validation split is the test set)")
        check(data.normalization == "train_statistics", "data.normalization",
              data.normalization, "'train_statistics' for imagenet2012 (the standard ImageNet "
              "channel statistics)")
        for key in ("crop_scale", "crop_ratio"):
            try:
                low, high = parse_range(data[key])
                check(key == "crop_ratio" or high <= 1, f"data.{key}", data[key],
                      "an area fraction range 'low,high' with high <= 1")
            except ValueError as error:
                check(False, f"data.{key}", data[key], f"{error}, e.g. '0.08,1' or '3/4,4/3'")
    elif data.name in DATASET_NAMES:  # settings in-memory data sets would ignore are refused
        defaults = {"image_size": 224, "crop_scale": ADDED_DEFAULTS["data.crop_scale"],
                    "crop_ratio": ADDED_DEFAULTS["data.crop_ratio"]}
        for key, default in defaults.items():
            check(data[key] == default, f"data.{key}", data[key],
                  f"applies to imagenet2012 only; leave it at {default!r} for {data.name}")
    if data.name == "digits":
        check(data.validation_size == 0, "data.validation_size", data.validation_size,
              "0 for digits (it has its own fixed 180-image validation split)")
    if data.name in ("digits", "cifar100"):
        check(data.normalization != "cifar10_constants", "data.normalization",
              data.normalization, f"the CIFAR-10 constants are not {data.name}'s statistics: "
              "use train_statistics or per_image")


def _check_model(config: Any, check: Check) -> None:
    """seed, model and protocol."""
    check(_is_int(config.seed) and config.seed >= 0, "seed", config.seed,
          "an integer >= 0")
    check(config.model.name in MODEL_NAMES, "model.name", config.model.name,
          f"allowed: {', '.join(MODEL_NAMES)}")
    check(config.model.basis in ("",) + BASES, "model.basis", config.model.basis,
          f"'' (the standard basis) or one of: {', '.join(BASES)}")
    check(config.model.conv_impl in CONV_IMPLS, "model.conv_impl", config.model.conv_impl,
          f"allowed: {', '.join(CONV_IMPLS)}")
    check(config.model.conv_impl in ("auto", "xla") or config.model.name not in MODEL_NAMES
          or config.model.name in CONV_IMPL_MODELS, "model.conv_impl", config.model.conv_impl,
          f"the native kernels serve the CIFAR ResNets only ({', '.join(CONV_IMPL_MODELS)}); "
          f"{config.model.name} runs XLA's convolutions: use 'auto' or 'xla'")
    check(config.model.norm_impl in NORM_IMPLS, "model.norm_impl", config.model.norm_impl,
          f"allowed: {', '.join(NORM_IMPLS)}")
    check(config.protocol in (protocols.NONE,) + protocols.names(), "protocol",
          config.protocol, f"'' (none) or one of: {', '.join(protocols.names())}")


def _check_train(config: Any, check: Check) -> None:
    """The optimizer and its schedule."""
    train = config.train
    check(_is_int(train.epochs) and train.epochs > 0, "train.epochs", train.epochs,
          "an integer > 0")
    check(_is_int(train.batch_size) and train.batch_size > 0, "train.batch_size",
          train.batch_size, "an integer > 0")
    check(_is_number(train.lr) and train.lr > 0, "train.lr", train.lr, "a number > 0")
    check(_is_number(train.momentum) and 0 <= train.momentum < 1, "train.momentum",
          train.momentum, "a number in [0, 1)")
    check(_is_number(train.weight_decay) and train.weight_decay >= 0, "train.weight_decay",
          train.weight_decay, "a number >= 0")
    check(_is_number(train.lr_decay) and 0 < train.lr_decay <= 1, "train.lr_decay",
          train.lr_decay, "a number in (0, 1]")
    epochs_ok = _is_int(train.epochs) and train.epochs > 0
    check(_is_int(train.warmup_epochs) and train.warmup_epochs >= 0
          and (not epochs_ok or train.warmup_epochs < train.epochs), "train.warmup_epochs",
          train.warmup_epochs, "an integer >= 0 and < train.epochs")
    try:
        milestones = parse_epochs(train.milestones)
        check(all(0 < m <= train.epochs for m in milestones) if epochs_ok else True,
              "train.milestones", train.milestones,
              f"comma-separated epochs in [1, train.epochs={train.epochs}], or '' for 50%/75%")
        check(list(milestones) == sorted(set(milestones)), "train.milestones", train.milestones,
              "strictly increasing epochs")
    except ValueError:
        check(False, "train.milestones", train.milestones,
              "comma-separated integer epochs such as '91,136', or '' for 50%/75% of training")
    check(train.precision in precision_lib.PRECISIONS, "train.precision", train.precision,
          f"allowed: {', '.join(precision_lib.PRECISIONS)}")
    if train.precision == precision_lib.BFLOAT16:
        check(config.model.conv_impl not in precision_lib.FLOAT32_ONLY_CONV_IMPLS,
              "model.conv_impl", config.model.conv_impl,
              f"not with train.precision={train.precision!r}: the native "
              f"{'/'.join(precision_lib.FLOAT32_ONLY_CONV_IMPLS)} kernels are float32-only; use "
              "'auto' (XLA's convolution in bfloat16) or 'xla', or train.precision='float32'")


def _check_kd(config: Any, check: Check) -> None:
    """The distillation loss; kd.stop_epoch within training."""
    kd, train = config.kd, config.train
    epochs_ok = _is_int(train.epochs) and train.epochs > 0
    check(_is_number(kd.temperature) and kd.temperature > 0, "kd.temperature", kd.temperature,
          "a number > 0")
    check(_is_number(kd.alpha) and 0 <= kd.alpha <= 1, "kd.alpha", kd.alpha,
          "a number in [0, 1]")
    check(kd.reduction in losses.REDUCTIONS, "kd.reduction", kd.reduction,
          f"allowed: {', '.join(losses.REDUCTIONS)}")
    check(kd.stop_epoch is None or (_is_int(kd.stop_epoch) and kd.stop_epoch > 0 and
                                    (not epochs_ok or kd.stop_epoch <= train.epochs)),
          "kd.stop_epoch", kd.stop_epoch,
          f"unset (distil throughout) or an epoch in [1, train.epochs={train.epochs}]")
    check(kd.teacher_logits in teacher_cache.MODES, "kd.teacher_logits", kd.teacher_logits,
          f"allowed: {', '.join(teacher_cache.MODES)}")
    check(kd.teacher_logits != "cached" or config.parallel.distributed == "off",
          "kd.teacher_logits", kd.teacher_logits, f"not with parallel.distributed="
          f"{config.parallel.distributed!r}: the cache needs a single process (each would hold "
          "only its own rows of the logits); use auto (it caches on one process only) or "
          "in_step")


def _check_prune(config: Any, check: Check) -> None:
    """The masking function, its scope, distribution and levels."""
    prune = config.prune
    check(prune.method in pruning.names(), "prune.method", prune.method,
          f"allowed: {', '.join(pruning.names())}")
    check(callable(prune.scope) or prune.scope in masks_lib.SCOPES, "prune.scope", prune.scope,
          f"allowed: {', '.join(masks_lib.SCOPES)}")
    check(_is_number(prune.fraction) and 0 < prune.fraction < 1, "prune.fraction",
          prune.fraction, "a number in the open interval (0, 1)")
    check(prune.schedule in PRUNE_SCHEDULES, "prune.schedule", prune.schedule,
          f"allowed: {', '.join(PRUNE_SCHEDULES)}")
    check(_is_int(prune.levels) and prune.levels >= 0, "prune.levels", prune.levels,
          "an integer >= 0 (0: train the dense network only)")
    if prune.schedule == "oneshot":
        check(_is_int(prune.first_level) and 1 <= prune.first_level <= max(1, prune.levels),
              "prune.first_level", prune.first_level,
              f"an integer in [1, prune.levels={prune.levels}]")
    else:
        check(prune.first_level == 1, "prune.first_level", prune.first_level,
              "1 unless prune.schedule=oneshot (each iterative level prunes the one before)")
    try:
        only = parse_epochs(prune.only_levels)
        levels_ok = _is_int(prune.levels)
        check(not only or (prune.schedule == "oneshot" and levels_ok
                           and all(1 <= level <= prune.levels for level in only)
                           and len(set(only)) == len(only)), "prune.only_levels",
              prune.only_levels, f"'' or distinct levels in [1, prune.levels={prune.levels}] "
              "with prune.schedule=oneshot, e.g. '10,8'")
    except ValueError:
        check(False, "prune.only_levels", prune.only_levels, "comma-separated levels, e.g. '10,8'")
    check(prune.distribution in DISTRIBUTIONS, "prune.distribution", prune.distribution,
          f"allowed: {', '.join(DISTRIBUTIONS)}")
    if prune.method in pruning.names():  # what the registered function is meant for
        method = pruning.entry(prune.method)
        check(prune.distribution not in DISTRIBUTIONS
              or prune.distribution in method.distributions, "prune.distribution",
              prune.distribution, f"prune.method={prune.method!r} ignores it; allowed with that "
              f"method: {', '.join(method.distributions)}")
        check(prune.scope not in masks_lib.SCOPES or prune.scope in method.scopes,
              "prune.scope", prune.scope, f"not with prune.method={prune.method!r}; allowed "
              f"with that method: {', '.join(method.scopes)}")
    _check_structure(config, check)
    _check_model_scope(config, check)
    check(prune.source in PRUNE_SOURCES, "prune.source", prune.source,
          f"allowed: {', '.join(PRUNE_SOURCES)}")
    check(_is_int(prune.synflow_rounds) and prune.synflow_rounds >= 1, "prune.synflow_rounds",
          prune.synflow_rounds, "an integer >= 1")
    check(_is_number(prune.grasp_temperature) and prune.grasp_temperature > 0,
          "prune.grasp_temperature", prune.grasp_temperature, "a number > 0")


def _check_model_scope(config: Any, check: Check) -> None:
    """A named prune.scope must select the model's weights: the conv scopes find nothing but
    the patch embedding in a ViT, `vit_matmul` nothing in a convnet (models.scopes_for)."""
    name, scope = config.model.name, config.prune.scope
    if name not in MODEL_NAMES or callable(scope) or scope not in masks_lib.SCOPES:
        return  # reported by _check_model / _check_prune
    allowed = scopes_for(name)
    what = ("has no convolution kernels but its patch embedding" if "vit_matmul" in allowed
            else "has no attention or MLP kernels")
    check(scope in allowed, "prune.scope", scope,
          f"model {name} {what}; use prune.scope={' or '.join(allowed)}")
    check(not config.model.basis or scope != "vit_matmul", "model.basis", config.model.basis,
          "'' with prune.scope=vit_matmul: a basis re-expresses convolution kernels only, and "
          "vit_matmul prunes none")


def _check_structure(config: Any, check: Check) -> None:
    """prune.structure parses, the masking function keeps it, and N:M's fixed sparsity agrees
    with the level fractions (or dynamic.sparsity)."""
    prune, dyn = config.prune, config.dynamic
    try:
        shape = structure_lib.parse(prune.structure)
    except ValueError as error:
        check(False, "prune.structure", prune.structure, str(error).split(": ", 1)[-1])
        return
    if shape.kind == "unstructured":
        return
    if dyn.method in dynamic_lib.names():
        check(dynamic_lib.takes_structure(dyn.method), "prune.structure", prune.structure,
              f"dynamic.method={dyn.method!r} takes no `structure` argument, so it cannot keep "
              "one; use unstructured, or give the method a structure parameter and keep it "
              "(dynamic.drop_and_grow does)")
    if prune.method in pruning.names():
        check(pruning.entry(prune.method).structured, "prune.structure", prune.structure,
              f"prune.method={prune.method!r} does not keep a structure; use unstructured")
    if shape.kind != "nm":
        return
    fixed = shape.fixed_sparsity
    check(prune.distribution != "erk", "prune.distribution", prune.distribution,
          f"not with prune.structure={shape.text}, which gives every layer sparsity {fixed:g}")
    if dyn.method == gradual.NAME:
        check(False, "prune.structure", prune.structure, f"not with dynamic.method="
              f"'{gradual.NAME}': N:M fixes the sparsity that gradual pruning approaches step "
              "by step; use unstructured or block:B")
    elif dyn.method:
        check(_is_number(dyn.sparsity) and abs(dyn.sparsity - fixed) < 1e-9, "dynamic.sparsity",
              dyn.sparsity, f"{fixed:g}: prune.structure={shape.text} fixes it")
        check(dyn.distribution == "uniform", "dynamic.distribution", dyn.distribution,
              f"uniform: prune.structure={shape.text} gives every layer sparsity {fixed:g}")
        return
    try:
        levels = pruning_levels(prune)
    except (TypeError, ValueError):
        return  # reported by _check_prune
    sparsities = [1 - (1 - prune.fraction) ** (level if prune.schedule == "oneshot" else 1)
                  for level in levels] if _is_number(prune.fraction) else []
    check(len(levels) <= 1 and all(abs(s - fixed) < 1e-9 for s in sparsities), "prune.fraction",
          prune.fraction, f"prune.structure={shape.text} fixes the sparsity at {fixed:g}: one "
          f"level at that sparsity, e.g. prune.fraction={fixed:g} prune.levels=1 (or "
          f"prune.only_levels=1); the run asks for levels {list(levels)}")


def _check_lottery(config: Any, check: Check) -> None:
    """The retrain variants and the rewind point."""
    prune = config.prune
    names = parse_names(config.lottery.variants)
    unknown = [n for n in names if n not in variants_lib.names()]
    check(not unknown, "lottery.variants", config.lottery.variants,
          f"unknown {', '.join(unknown)}; allowed: {', '.join(variants_lib.names())}")
    check(len(set(names)) == len(names), "lottery.variants", config.lottery.variants,
          "each variant at most once")
    check(bool(names) or (_is_int(prune.levels) and prune.levels == 0), "lottery.variants",
          config.lottery.variants, "at least one variant when prune.levels > 0")
    check(bool(STEP_COUNT.match(str(config.lottery.rewind))), "lottery.rewind",
          config.lottery.rewind, "a step count: epochs as '2ep' or iterations as '500it'")


def _check_logging(config: Any, check: Check) -> None:
    """Progress output and resume checkpoints."""
    check(config.log.progress in PROGRESS_MODES, "log.progress", config.log.progress,
          f"allowed: {', '.join(PROGRESS_MODES)}")
    check(_is_int(config.checkpoint.every_steps) and config.checkpoint.every_steps >= 0,
          "checkpoint.every_steps", config.checkpoint.every_steps,
          "an integer >= 0 (0: once per epoch)")
    check(_is_int(config.checkpoint.keep) and config.checkpoint.keep >= 1, "checkpoint.keep",
          config.checkpoint.keep, "an integer >= 1")


def _check_dynamic(config: Any, check: Check) -> None:
    """Dynamic sparse training (RigL, SET, ...) and gradual magnitude pruning (gmp)."""
    dyn = config.dynamic
    check(not dyn.method or dyn.method in dynamic_lib.method_names(), "dynamic.method",
          dyn.method, f"'' (off) or one of: {', '.join(dynamic_lib.method_names())}")
    check(_is_number(dyn.sparsity) and 0 < dyn.sparsity < 1, "dynamic.sparsity", dyn.sparsity,
          "a number in the open interval (0, 1)")
    check(dyn.distribution in ("erk", "uniform"), "dynamic.distribution", dyn.distribution,
          "allowed: erk, uniform")
    check(_is_int(dyn.delta_t) and dyn.delta_t >= 1, "dynamic.delta_t", dyn.delta_t,
          "an integer >= 1 (steps between mask updates)")
    check(_is_number(dyn.alpha) and 0 <= dyn.alpha <= 1, "dynamic.alpha", dyn.alpha,
          "a number in [0, 1]")
    for key in ("start_fraction", "end_fraction"):
        check(_is_number(dyn[key]) and 0 <= dyn[key] <= 1, f"dynamic.{key}", dyn[key],
              "a number in [0, 1]")
    check(dyn.init in ("dense", "sparse"), "dynamic.init", dyn.init, "allowed: dense, sparse")
    _check_gradual(dyn, check)


def _check_gradual(dyn: Any, check: Check) -> None:
    """What gradual magnitude pruning (dynamic.method=gmp) needs, and the keys only it reads."""
    defaults = default_config().dynamic
    if dyn.method != gradual.NAME:
        check(not dyn.method or dyn.start_fraction == defaults.start_fraction,
              "dynamic.start_fraction", dyn.start_fraction, f"applies to dynamic.method="
              f"'{gradual.NAME}' only; leave it at {defaults.start_fraction!r} for "
              f"dynamic.method={dyn.method!r}")
        return
    check(dyn.init == "dense", "dynamic.init", dyn.init,
          f"not with dynamic.method='{gradual.NAME}': gradual magnitude pruning starts from the "
          "dense init and prunes it; use dynamic.init='dense'")
    check(dyn.alpha == defaults.alpha, "dynamic.alpha", dyn.alpha,
          f"dynamic.method='{gradual.NAME}' regrows nothing and ignores it; leave it at "
          f"{defaults.alpha!r}")
    if _is_number(dyn.start_fraction) and _is_number(dyn.end_fraction):
        check(dyn.start_fraction < dyn.end_fraction, "dynamic.start_fraction",
              dyn.start_fraction, f"below dynamic.end_fraction={dyn.end_fraction!r} with "
              f"dynamic.method='{gradual.NAME}' (pruning runs from the start to the end fraction)")


def _check_parallel(config: Any, check: Check) -> None:
    """Devices, processes and BatchNorm statistics."""
    par = config.parallel
    check(par.distributed in DISTRIBUTED_MODES, "parallel.distributed", par.distributed,
          f"allowed: {', '.join(DISTRIBUTED_MODES)}")
    check(par.batch_norm in BATCH_NORM_MODES, "parallel.batch_norm", par.batch_norm,
          f"allowed: {', '.join(BATCH_NORM_MODES)}")
    check(_is_int(par.num_processes) and par.num_processes >= 0, "parallel.num_processes",
          par.num_processes, "an integer >= 0 (0: from the environment)")
    check(_is_int(par.process_id) and par.process_id >= -1
          and (not _is_int(par.num_processes) or par.num_processes <= 0
               or par.process_id < par.num_processes),
          "parallel.process_id", par.process_id,
          "-1 (from the environment) or an id in [0, parallel.num_processes)")
    check(_is_int(par.num_cpu_devices) and par.num_cpu_devices >= 0, "parallel.num_cpu_devices",
          par.num_cpu_devices, "an integer >= 0")
    check(not par.coordinator_address or bool(re.match(r"^\[?[\w.:-]+\]?:\d+$",
                                                       par.coordinator_address)),
          "parallel.coordinator_address", par.coordinator_address, "HOST:PORT")


def validate(config: Any) -> None:
    """Raise ConfigError listing every invalid value of an experiment config."""
    problems: list[str] = []

    def check(ok: bool, key: str, value: Any, allowed: str) -> None:
        if not ok:
            problems.append(f"{key}={value!r} is invalid: {allowed}")

    _check_model(config, check)
    _check_data(config.data, check)
    for section in (_check_train, _check_kd, _check_prune, _check_lottery, _check_logging,
                    _check_dynamic, _check_parallel):
        section(config, check)
    if problems:
        raise ConfigError("invalid config:\n  " + "\n  ".join(problems))
