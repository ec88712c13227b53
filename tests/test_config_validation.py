"""Tests for lottery_kd.config: validate (every problem, key + allowed values), plan_steps and
parse_step_count."""

from __future__ import annotations

import subprocess
import sys

import pytest

from experiments import quickstart
from experiments.configs import default
from lottery_kd import config as config_lib
from lottery_kd.config import ConfigError


def set_key(config, dotted: str, value) -> None:
    *parents, leaf = dotted.split(".")
    node = config
    for part in parents:
        node = getattr(node, part)
    setattr(node, leaf, value)


def make_config(**overrides):
    config = default.get_config()
    for dotted, value in overrides.items():
        set_key(config, dotted.replace("__", "."), value)
    return config


def test_default_config_is_valid():
    config_lib.validate(default.get_config())


def test_quickstart_config_is_valid():
    config_lib.validate(quickstart.get_config())


def test_first_level_needs_the_oneshot_schedule():
    config = make_config(prune__schedule="iterative", prune__first_level=2)
    with pytest.raises(ConfigError, match="unless prune.schedule=oneshot"):
        config_lib.validate(config)


@pytest.mark.parametrize("key,value,needles", [
    ("data.validation_size", 600, ["data.validation_size=600", "0 for digits"]),
    ("data.normalization", "cifar10_constants", ["data.normalization", "not digits'"]),
    ("data.crop_ratio", "0.8,1.25", ["data.crop_ratio", "imagenet2012 only"]),
])
def test_settings_a_data_set_would_ignore_are_refused(key, value, needles):
    """digits has its own validation split and statistics, and no random-resized crops: a
    setting it would silently ignore is refused, naming the key."""
    config = quickstart.get_config()
    set_key(config, key, value)
    with pytest.raises(ConfigError) as info:
        config_lib.validate(config)
    for needle in needles:
        assert needle in str(info.value)


# (key, bad value, substrings the message must contain: the key and a hint of what is allowed)
BAD_CONFIGS = [
    ("model.name", "resnet21", ["model.name", "resnet21", "resnet20", "digits_convnet"]),
    ("data.name", "mnist", ["data.name", "mnist", "cifar10", "digits"]),
    ("data.source", "tfds-remote", ["data.source", "tfds-remote", "local"]),
    ("prune.method", "magnitude", ["prune.method", "magnitude_global", "magnitude_layerwise",
                                   "random"]),
    ("prune.scope", "dense", ["prune.scope", "conv", "conv_fc"]),
    ("prune.fraction", 0.0, ["prune.fraction", "(0, 1)"]),
    ("prune.fraction", 1.0, ["prune.fraction", "(0, 1)"]),
    ("prune.fraction", 1.5, ["prune.fraction", "(0, 1)"]),
    ("prune.fraction", -0.2, ["prune.fraction", "(0, 1)"]),
    ("prune.schedule", "cubic", ["prune.schedule", "iterative", "oneshot"]),
    ("prune.first_level", 17, ["prune.first_level=17 is invalid", "prune.levels=16"]),
    ("protocol", "lth", ["protocol='lth' is invalid", "kd_ticket", "renda"]),
    ("data.validation_split", "last", ["data.validation_split", "first", "random"]),
    ("data.normalization", "imagenet", ["data.normalization", "train_statistics",
                                        "cifar10_constants", "per_image"]),
    ("data.crop_scale", "0.1,1", ["data.crop_scale", "imagenet2012 only", "'0.08,1'"]),
    ("data.image_size", 64, ["data.image_size", "imagenet2012 only"]),
    ("lottery.variants", "lt,bogus", ["lottery.variants", "bogus", "lt", "reinit",
                                      "weight_rewind", "lr_rewind", "finetune", "kd",
                                      "kd_rewind", "kd_lr_rewind"]),
    ("lottery.variants", "lt,kd,lt", ["lottery.variants", "once"]),
    ("lottery.rewind", "33 epochs", ["lottery.rewind", "33 epochs", "ep", "it"]),
    ("lottery.rewind", "2", ["lottery.rewind", "'2ep'", "'500it'"]),
    ("train.epochs", 0, ["train.epochs", "> 0"]),
    ("train.batch_size", 0, ["train.batch_size", "> 0"]),
    ("train.lr", -1.0, ["train.lr", "> 0"]),
    ("train.lr", 0.0, ["train.lr", "> 0"]),
    ("train.momentum", 1.0, ["train.momentum", "[0, 1)"]),
    ("train.momentum", -0.1, ["train.momentum", "[0, 1)"]),
    ("train.weight_decay", -1.0, ["train.weight_decay", ">= 0"]),
    ("train.milestones", "91,200", ["train.milestones", "train.epochs=182"]),
    ("train.milestones", "136,91", ["train.milestones", "increasing"]),
    ("train.milestones", "91,91", ["train.milestones", "increasing"]),
    ("train.milestones", "ninety", ["train.milestones", "91,136"]),
    ("train.warmup_epochs", 182, ["train.warmup_epochs", "train.epochs"]),
    ("kd.alpha", 1.5, ["kd.alpha", "[0, 1]"]),
    ("kd.alpha", -0.5, ["kd.alpha", "[0, 1]"]),
    ("kd.temperature", 0.0, ["kd.temperature", "> 0"]),
    ("kd.reduction", "sum", ["kd.reduction", "sum", "batchmean", "mean"]),
    ("kd.stop_epoch", 183, ["kd.stop_epoch", "train.epochs=182"]),
    ("kd.stop_epoch", 0, ["kd.stop_epoch", "train.epochs=182"]),
    ("log.progress", "fancy", ["log.progress", "fancy", "auto", "bar", "lines"]),
    ("seed", -1, ["seed", ">= 0"]),
    ("train.lr", float("nan"), ["train.lr", "> 0"]),
    ("train.lr_decay", 0.0, ["train.lr_decay", "(0, 1]"]),
    ("prune.levels", -1, ["prune.levels", ">= 0"]),
    ("data.validation_size", -5, ["data.validation_size", ">= 0"]),
    ("data.eval_batch_size", 0, ["data.eval_batch_size", "> 0"]),
    ("checkpoint.every_steps", -1, ["checkpoint.every_steps", ">= 0", "once per epoch"]),
    ("checkpoint.keep", 0, ["checkpoint.keep", ">= 1"]),
    ("parallel.distributed", "maybe", ["parallel.distributed", "off", "auto", "on"]),
    ("parallel.batch_norm", "sync", ["parallel.batch_norm", "global", "per_device"]),
    ("parallel.num_processes", -2, ["parallel.num_processes", ">= 0"]),
    ("parallel.process_id", -3, ["parallel.process_id", "[0, parallel.num_processes)"]),
    ("parallel.num_cpu_devices", -1, ["parallel.num_cpu_devices", ">= 0"]),
    ("parallel.coordinator_address", "localhost", ["parallel.coordinator_address", "HOST:PORT"]),
]


@pytest.mark.parametrize("key,value,needles", BAD_CONFIGS,
                         ids=[f"{k}={v!r}" for k, v, _ in BAD_CONFIGS])
def test_bad_config_raises(key, value, needles):
    config = make_config()
    set_key(config, key, value)
    with pytest.raises(ConfigError) as info:
        config_lib.validate(config)
    message = str(info.value)
    for needle in needles:
        assert needle in message, f"{needle!r} not in {message!r}"
    # only this one problem is reported (the default config is valid otherwise)
    assert message.count("is invalid") == 1, message


def test_imagenet_is_read_through_tfds_and_has_no_validation_holdout():
    from experiments import imagenet_resnet50
    config_lib.validate(imagenet_resnet50.get_config())
    for key, value, needles in (
            ("data.dir", "/data/imagenet", ["data.source", "read through tfds",
                                            "data.manual_dir"]),
            ("data.source", "local", ["data.source='local' is invalid", "'tfds' (or 'auto')"]),
            ("data.validation_size", 5000, ["data.validation_size=5000 is invalid",
                                            "0 for imagenet2012"]),
            ("data.crop_scale", "0.5", ["data.crop_scale", "'low,high'", "'0.08,1'"]),
            ("data.crop_scale", "0.1,1.5", ["data.crop_scale", "high <= 1"]),
            ("data.crop_ratio", "4/3,3/4", ["data.crop_ratio", "low <= high"]),
            ("data.normalization", "per_image", ["data.normalization", "ImageNet"])):
        config = imagenet_resnet50.get_config()
        set_key(config, key, value)
        with pytest.raises(ConfigError) as info:
            config_lib.validate(config)
        message = str(info.value)
        assert message.count("is invalid") == 1, message
        for needle in needles:
            assert needle in message, f"{needle!r} not in {message!r}"


def test_config_error_is_value_error():
    assert issubclass(ConfigError, ValueError)


def test_two_problems_reported_together():
    config = make_config(seed=-1, kd__reduction="sum")
    with pytest.raises(ConfigError) as info:
        config_lib.validate(config)
    message = str(info.value)
    assert "seed" in message and "kd.reduction" in message
    assert "batchmean" in message
    assert message.count("is invalid") == 2


def test_many_problems_reported_together():
    config = make_config(model__name="nope", prune__fraction=2.0, log__progress="fancy",
                         train__momentum=1.0)
    with pytest.raises(ConfigError) as info:
        config_lib.validate(config)
    message = str(info.value)
    for key in ("model.name", "prune.fraction", "log.progress", "train.momentum"):
        assert key in message
    assert len([line for line in message.splitlines() if "is invalid" in line]) == 4


# --------------------------------------------------------------------------------------------
# plan_steps


def small_config(**overrides):
    config = make_config(train__epochs=10, train__batch_size=100, train__milestones="",
                         lottery__rewind="2ep")
    for dotted, value in overrides.items():
        set_key(config, dotted.replace("__", "."), value)
    config_lib.validate(config)
    return config


def test_plan_steps_epochs():
    plan = config_lib.plan_steps(small_config(), 1000)
    assert plan.steps_per_epoch == 10
    assert plan.total_steps == 100
    assert plan.rewind_step == 20
    assert plan.milestone_steps == (50, 70)  # '' -> epochs 10//2=5 and 3*10//4=7
    assert plan.warmup_steps == 0
    assert plan.kd_stop_step is None


def test_plan_steps_iterations_and_explicit_milestones():
    plan = config_lib.plan_steps(small_config(lottery__rewind="37it", train__milestones="3,6",
                                              kd__stop_epoch=4, train__warmup_epochs=1), 1050)
    assert plan.steps_per_epoch == 10  # 1050 // 100: the partial batch is dropped
    assert plan.total_steps == 100
    assert plan.rewind_step == 37
    assert plan.milestone_steps == (30, 60)
    assert plan.warmup_steps == 10
    assert plan.kd_stop_step == 40


def test_plan_steps_rewind_beyond_training():
    with pytest.raises(ConfigError) as info:
        config_lib.plan_steps(small_config(lottery__rewind="500it"), 1000)
    message = str(info.value)
    assert "lottery.rewind" in message
    assert "100" in message  # the total number of steps
    assert "500" in message


def test_plan_steps_rewind_at_end_of_training():
    with pytest.raises(ConfigError, match=r"lottery\.rewind"):
        config_lib.plan_steps(small_config(lottery__rewind="10ep"), 1000)


def test_plan_steps_batch_larger_than_train_set():
    with pytest.raises(ConfigError) as info:
        config_lib.plan_steps(small_config(train__batch_size=2000), 1000)
    assert "train.batch_size" in str(info.value)
    assert "1000" in str(info.value)


# --------------------------------------------------------------------------------------------
# parse_step_count


@pytest.mark.parametrize("text,steps_per_epoch,expected", [
    ("2ep", 10, 20), ("500it", 10, 500), ("0ep", 10, 0), ("0it", 7, 0), ("33ep", 351, 11583),
    (" 3ep ", 4, 12), ("1it", 1000, 1)])
def test_parse_step_count(text, steps_per_epoch, expected):
    assert config_lib.parse_step_count(text, steps_per_epoch) == expected


@pytest.mark.parametrize("text", ["33 epochs", "2", "ep", "-1ep", "1.5ep", "", "2 it s", "it500",
                                  "2EPOCHS", "2ep,3ep"])
def test_parse_step_count_bad(text):
    with pytest.raises(ValueError):
        config_lib.parse_step_count(text, 10)


def test_process_id_must_be_below_the_process_count():
    config = make_config(parallel__num_processes=2, parallel__process_id=2)
    with pytest.raises(ConfigError, match=r"parallel.process_id=2 is invalid: .*\[0, "
                                          r"parallel.num_processes\)"):
        config_lib.validate(config)


def test_rigl_experiment_config_is_valid_and_ignores_the_rewind_point():
    from experiments import cifar10_rigl
    config = cifar10_rigl.get_config()
    config_lib.validate(config)
    config.train.epochs, config.dynamic.delta_t = 2, 5
    plan = config_lib.plan_steps(config, 1280)  # 33ep rewind point unused by dynamic training
    assert plan.total_steps == 20


def test_plan_steps_refuses_a_drop_and_grow_method_that_would_never_update():
    """RigL's delta_t of 100 in a 20-step run (its last update due at 0.75 x 20 = step 15):
    the run would be static sparse training under RigL's name."""
    from experiments import cifar10_rigl
    config = cifar10_rigl.get_config()
    config.train.epochs = 2
    with pytest.raises(ConfigError, match=r"dynamic.delta_t=100 .* step, 15 .*never change its "
                                          r"masks"):
        config_lib.plan_steps(config, 1280)
    config.dynamic.delta_t, config.dynamic.end_fraction = 10, 0.5  # first update at 10, end 10
    with pytest.raises(ConfigError, match="dynamic.end_fraction=0.5"):
        config_lib.plan_steps(config, 1280)
    config.dynamic.method = "gmp"  # prunes at its end step whatever delta_t is
    config_lib.plan_steps(config, 1280)


def test_plan_steps_refuses_a_distilled_rewind_variant_that_starts_after_kd_stopped():
    with pytest.raises(ConfigError, match=r"kd.stop_epoch=2 is step 20, at or before "
                                          r"lottery.rewind='3ep' \(step 30\), where kd_rewind "
                                          r"start"):
        config_lib.plan_steps(small_config(lottery__rewind="3ep", kd__stop_epoch=2,
                                           lottery__variants="lt,kd,kd_rewind"), 1000)
    # kd from step 0 still distils for two epochs; without kd_rewind there is nothing to refuse
    plan = config_lib.plan_steps(small_config(lottery__rewind="3ep", kd__stop_epoch=2,
                                              lottery__variants="lt,kd"), 1000)
    assert plan.kd_stop_step == 20


@pytest.mark.parametrize("key,value,needles", [
    ("dynamic.method", "magic", ["dynamic.method", "rigl", "set"]),
    ("dynamic.sparsity", 1.0, ["dynamic.sparsity", "(0, 1)"]),
    ("dynamic.distribution", "global", ["dynamic.distribution", "erk, uniform"]),
    ("dynamic.delta_t", 0, ["dynamic.delta_t", ">= 1"]),
    ("dynamic.init", "xavier", ["dynamic.init", "dense, sparse"]),
    ("prune.distribution", "lognormal", ["prune.distribution", "global, uniform, erk"]),
    ("prune.source", "rewind", ["prune.source", "final, init"]),
    ("prune.synflow_rounds", 0, ["prune.synflow_rounds", ">= 1"]),
    ("model.basis", "wavelet", ["model.basis", "dct, random"]),
    ("model.conv_impl", "fast", ["model.conv_impl='fast' is invalid", "auto, xla, native"]),
    ("model.norm_impl", "batch", ["model.norm_impl='batch' is invalid", "flax, fused"]),
])
def test_bad_mask_source_settings(key, value, needles):
    config = make_config()
    set_key(config, key, value)
    with pytest.raises(ConfigError) as info:
        config_lib.validate(config)
    for needle in needles:
        assert needle in str(info.value)


@pytest.mark.parametrize("method, distribution, allowed", [
    ("magnitude_layerwise", "erk", "global, uniform"),
    ("magnitude_filter", "uniform", "global"),
    ("magnitude_filter", "erk", "global"),
])
def test_a_distribution_the_masking_function_ignores_is_refused(method, distribution, allowed):
    config = make_config()
    config.prune.method, config.prune.distribution = method, distribution
    with pytest.raises(ConfigError) as info:
        config_lib.validate(config)
    assert (f"prune.distribution={distribution!r} is invalid: prune.method={method!r} ignores "
            f"it; allowed with that method: {allowed}") in str(info.value)
    for method, distribution in (("magnitude_layerwise", "uniform"), ("snip", "erk"),
                                 ("magnitude_global", "erk"), ("magnitude_filter", "global")):
        config.prune.method, config.prune.distribution = method, distribution
        config_lib.validate(config)  # honoured combinations pass


def test_filter_pruning_is_refused_on_the_classifier():
    """magnitude_filter removes whole output units: in the fc layer those are classes."""
    config = make_config()
    config.prune.method, config.prune.scope = "magnitude_filter", "conv_fc"
    with pytest.raises(ConfigError, match="prune.scope='conv_fc' is invalid: not with "
                                          "prune.method='magnitude_filter'; allowed with that "
                                          "method: conv"):
        config_lib.validate(config)
    config.prune.method = "magnitude_global"
    config_lib.validate(config)


def test_the_builtin_criteria_are_in_the_registry_without_importing_them():
    code = ("import lottery_kd.sparsity.pruning as p; print(p.get('snip').__name__, "
            "p.uses_data('grasp'), 'synflow' in p.names())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.split() == ["snip", "True", "True"]


def test_a_teacher_logit_cache_is_refused_for_a_distributed_run_before_it_starts():
    """Only process 0 would have refused it (when recording the start), leaving the others
    waiting in the dense run; validation refuses it on every process, and auto stays allowed."""
    config = make_config(kd__teacher_logits="cached", parallel__distributed="auto")
    with pytest.raises(ConfigError, match=r"kd.teacher_logits='cached' is invalid: not with "
                                          r"parallel.distributed='auto'.*use auto"):
        config_lib.validate(config)
    config_lib.validate(make_config(kd__teacher_logits="auto", parallel__distributed="auto"))
    config_lib.validate(make_config(kd__teacher_logits="cached"))


@pytest.mark.parametrize("name", ["wrn22_2", "vgg16", "vit_tiny", "resnet18", "digits_convnet"])
@pytest.mark.parametrize("conv_impl", ["native", "sparse"])
def test_the_native_kernels_are_refused_for_a_model_that_would_run_xla(name, conv_impl):
    """Only the CIFAR ResNets route their convolutions by model.conv_impl: asked of any other
    model the native or sparse kernels would be recorded while XLA's convolutions ran."""
    scope = "conv_fc" if name == "vit_tiny" else "conv"
    with pytest.raises(ConfigError) as info:
        config_lib.validate(make_config(model__name=name, model__conv_impl=conv_impl,
                                        prune__scope=scope))
    assert f"model.conv_impl='{conv_impl}'" in str(info.value)
    assert f"{name} runs XLA's convolutions" in str(info.value)
    for accepted in ("auto", "xla"):
        config_lib.validate(make_config(model__name=name, model__conv_impl=accepted,
                                        prune__scope=scope))
    config_lib.validate(make_config(model__name="resnet56", model__conv_impl=conv_impl))
