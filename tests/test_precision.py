"""train.precision (training.precision): bfloat16 forward and backward around float32 params,
optimizer state, update and losses; float32 unchanged; config validation.

Tiny models (digits_convnet on 8x8 inputs, a one-block-per-stage CIFAR ResNet with the fused
BatchNorm on 8x8 inputs) on random batches. The step donates its state: every state passed in
is a fresh copy.

Tolerance: on the same batch and weights the bfloat16 loss is within LOSS_RTOL = 1e-2 (relative)
of the float32 loss. Measured (2-core AMD EPYC, CE and KD, both models): <= 3.3e-4 at the first
step; <= 3.1e-3 by the third, as the two trajectories part.
"""

from __future__ import annotations

import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lottery_kd import config as config_lib
from lottery_kd.config import ConfigError, identity
from lottery_kd.config.defaults import get_config
from lottery_kd.models import get_model
from lottery_kd.models.batch_norm import batch_norm_train
from lottery_kd.sparsity import masks as masks_lib
from lottery_kd.training import losses, optim, precision as precision_lib
from lottery_kd.training.steps import (Distillation, TrainState, init_variables, make_eval_step,
                                       make_train_step)

BATCH, CLASSES = 16, 10
LOSS_RTOL = 1e-2
OPTIMIZER = optim.sgd_direction(0.9, 5e-4)
KD = Distillation(4.0, 0.9, "batchmean")


class Recording:
    """A model wrapper that records, at trace time, each apply's train flag, input dtype, weight
    dtypes and logits dtype."""

    def __init__(self, base):
        self.base, self.calls = base, []

    def init(self, *args, **kwargs):
        return self.base.init(*args, **kwargs)

    def apply(self, variables, images, *, train, **kwargs):
        out = self.base.apply(variables, images, train=train, **kwargs)
        logits = out[0] if isinstance(out, tuple) else out
        self.calls.append({"train": train, "images": images.dtype, "logits": logits.dtype,
                           "params": {x.dtype for x in jax.tree.leaves(variables["params"])},
                           "batch_stats": {x.dtype for x in
                                           jax.tree.leaves(variables.get("batch_stats", {}))}})
        return out


MODELS = {"digits_convnet": (lambda: get_model("digits_convnet", CLASSES), (8, 8, 1)),
          "resnet8_fused": (lambda: get_model("resnet20", CLASSES, conv_impl="xla",
                                              norm_impl="fused").clone(blocks_per_stage=1),
                            (8, 8, 3))}


@functools.lru_cache(maxsize=None)
def setup(name: str):
    """(model, params, batch_stats, masks at 80% conv sparsity, images, labels) as numpy."""
    build, shape = MODELS[name]
    model = build()
    params, batch_stats = init_variables(model, jax.random.key(0), shape)
    rng = np.random.default_rng(0)
    # every conv kernel keeps a random 20% (made in numpy: no compile); the rest all-true
    masks = jax.tree.map(
        lambda p: rng.random(p.shape) < 0.2 if np.ndim(p) == 4 else np.ones(p.shape, bool), params)
    images = rng.normal(size=(BATCH, *shape)).astype(np.float32)
    labels = rng.integers(0, CLASSES, BATCH).astype(np.int32)
    to_np = functools.partial(jax.tree.map, np.asarray)
    return model, to_np(params), to_np(batch_stats), to_np(masks), images, labels


def fresh(tree):
    return jax.tree.map(lambda x: jnp.array(x, copy=True), tree)


def train(name: str, precision: str, distill: bool, steps: int, model=None):
    """(losses, final state) of `steps` steps from the same weights on the same batch."""
    base, params, batch_stats, masks, images, labels = setup(name)
    step = make_train_step(model or base, OPTIMIZER, KD if distill else None,
                           precision=precision)
    teacher = {"params": fresh(params), "batch_stats": fresh(batch_stats)} if distill else {}
    state = TrainState(jnp.asarray(0), masks_lib.apply(fresh(params), masks), fresh(batch_stats),
                       OPTIMIZER.init(params))
    values = []
    for _ in range(steps):
        state, metrics = step(state, masks, images, labels, jnp.float32(0.05), teacher)
        values.append(float(metrics["loss"]))
    return values, jax.device_get(state)


def check_bfloat16_steps(name: str, distill: bool) -> None:
    """Three bfloat16 steps: float32 state, pruned weights exactly 0.0, and a first loss within
    LOSS_RTOL of the float32 step's on the same batch and weights."""
    masks = setup(name)[3]
    reference, _ = train(name, "float32", distill, 1)
    values, state = train(name, "bfloat16", distill, 3)
    assert values[0] == pytest.approx(reference[0], rel=LOSS_RTOL)
    for leaf in jax.tree.leaves((state.params, state.opt_state, state.batch_stats)):
        assert leaf.dtype == np.float32
    for param, mask in zip(jax.tree.leaves(state.params), jax.tree.leaves(masks)):
        assert np.all(param[~mask] == 0.0)  # exactly, after three updates
        assert np.all(np.isfinite(param))


def test_bfloat16_steps_keep_float32_state_pruned_zeros_and_the_float32_loss():
    check_bfloat16_steps("digits_convnet", distill=False)


@pytest.mark.slow
@pytest.mark.parametrize("name", list(MODELS))
@pytest.mark.parametrize("distill", [False, True])
def test_bfloat16_steps_of_each_model_with_and_without_kd(name, distill):
    check_bfloat16_steps(name, distill)


def test_bfloat16_runs_every_convolution_forward_and_backward_in_bfloat16():
    build, shape = MODELS["resnet8_fused"]
    model = build()
    # lowered from shapes alone: nothing is compiled
    params, batch_stats = jax.eval_shape(lambda: init_variables(model, jax.random.key(0), shape))
    masks = jax.tree.map(lambda p: jax.ShapeDtypeStruct(p.shape, jnp.bool_), params)
    state = TrainState(jax.ShapeDtypeStruct((), jnp.int32), params, batch_stats,
                       jax.eval_shape(OPTIMIZER.init, params))
    images = jax.ShapeDtypeStruct((BATCH, *shape), jnp.float32)
    labels = jax.ShapeDtypeStruct((BATCH,), jnp.int32)
    lr = jax.ShapeDtypeStruct((), jnp.float32)
    lowered = {}
    for precision in precision_lib.PRECISIONS:
        step = make_train_step(model, OPTIMIZER, KD, precision=precision)
        lowered[precision] = step.lower(state, masks, images, labels, lr,
                                        {"params": params, "batch_stats": batch_stats}).as_text()
    convs = {p: [line for line in text.splitlines() if "stablehlo.convolution" in line]
             for p, text in lowered.items()}
    # forward (student and teacher), input and filter gradients: the same ops in each precision
    assert len(convs["bfloat16"]) == len(convs["float32"]) >= 3 * 8
    for line in convs["bfloat16"]:
        types = re.findall(r"tensor<[^>]*>", line.split(" : ")[-1])
        assert types and all(t.endswith("xbf16>") for t in types), line
    assert all("xbf16>" not in line for line in convs["float32"])


def test_kd_loss_is_float32_of_float32_logits_and_the_teacher_runs_in_bfloat16(monkeypatch):
    seen, kd_loss = [], losses.kd_loss

    def recording_kd_loss(student_logits, teacher_logits, labels, **kwargs):
        value = kd_loss(student_logits, teacher_logits, labels, **kwargs)
        seen.append((student_logits.dtype, teacher_logits.dtype, value.dtype))
        return value

    monkeypatch.setattr(losses, "kd_loss", recording_kd_loss)
    model = Recording(setup("digits_convnet")[0])
    values, _ = train("digits_convnet", "bfloat16", True, 1, model=model)
    assert seen == [(jnp.float32, jnp.float32, jnp.float32)]  # student, teacher logits, loss
    student, teacher = ([c for c in model.calls if c["train"] == mode] for mode in (True, False))
    for call in student + teacher:  # bfloat16 weights and images in, logits bfloat16 out
        assert call["images"] == jnp.bfloat16 and call["params"] == {jnp.dtype(jnp.bfloat16)}
        assert call["logits"] == jnp.bfloat16 and call["batch_stats"] == {jnp.dtype("float32")}
    assert len(student) == len(teacher) == 1
    monkeypatch.undo()
    reference, _ = train("digits_convnet", "float32", True, 1)
    assert values[0] == pytest.approx(reference[0], rel=LOSS_RTOL)


def test_eval_runs_in_the_training_precision_with_a_float32_nll():
    base, params, batch_stats, masks, images, labels = setup("digits_convnet")
    uint8 = np.clip(images * 40 + 128, 0, 255).astype(np.uint8)
    valid = np.ones(BATCH, bool)
    results = {}
    for precision in precision_lib.PRECISIONS:
        model = Recording(base)
        evaluate = make_eval_step(model, (128.0,), (40.0,), precision=precision)
        correct, nll = evaluate(params, batch_stats, masks, uint8, labels, valid)
        assert nll.dtype == jnp.float32
        assert model.calls[0]["images"] == jnp.dtype(precision)
        results[precision] = int(correct), float(nll)
    assert results["bfloat16"][1] == pytest.approx(results["float32"][1], rel=LOSS_RTOL)
    assert abs(results["bfloat16"][0] - results["float32"][0]) <= 2


def test_fused_batch_norm_in_bfloat16_keeps_float32_statistics():
    rng = np.random.default_rng(0)
    y = jnp.asarray(rng.normal(1.0, 2.0, (4, 3, 3, 16)), jnp.bfloat16)
    residual = jnp.asarray(rng.normal(size=y.shape), jnp.bfloat16)
    scale, bias = jnp.full((16,), 1.5, jnp.bfloat16), jnp.full((16,), 0.25, jnp.bfloat16)

    def f(y, scale, bias, residual):
        out, mean, var = batch_norm_train(y, scale, bias, residual, epsilon=1e-5, relu=True)
        return jnp.sum(out.astype(jnp.float32) ** 2), (out, mean, var)

    (_, (out, mean, var)), grads = jax.value_and_grad(f, argnums=(0, 1, 2, 3), has_aux=True)(
        y, scale, bias, residual)
    assert out.dtype == jnp.bfloat16 and mean.dtype == var.dtype == jnp.float32
    assert [g.dtype for g in grads] == [jnp.bfloat16] * 4
    y32 = np.asarray(y, np.float32)
    np.testing.assert_allclose(mean, y32.mean((0, 1, 2)), rtol=1e-6)
    np.testing.assert_allclose(var, y32.var((0, 1, 2)), rtol=1e-5)
    (_, (out32, _, _)), grads32 = jax.value_and_grad(f, argnums=(0, 1, 2, 3), has_aux=True)(
        *(jnp.asarray(x, jnp.float32) for x in (y, scale, bias, residual)))
    np.testing.assert_allclose(np.asarray(out, np.float32), out32, rtol=1e-2, atol=1e-2)
    for g, g32 in zip(grads, grads32):
        np.testing.assert_allclose(np.asarray(g, np.float32), g32, rtol=2e-2, atol=5e-2)


def test_float32_adds_nothing_to_the_step():
    tree = {"w": jnp.ones(3), "n": jnp.arange(3)}
    assert precision_lib.to_compute(tree, "float32") is tree
    cast = precision_lib.to_compute(tree, "bfloat16")
    assert cast["w"].dtype == jnp.bfloat16 and cast["n"].dtype == tree["n"].dtype


def test_auto_conv_is_xla_in_bfloat16():
    assert precision_lib.conv_impl_for("auto", "bfloat16") == "xla"
    assert precision_lib.conv_impl_for("auto", "float32") == "auto"
    assert precision_lib.conv_impl_for("xla", "bfloat16") == "xla"


def config_with(**overrides):
    config = get_config()
    for dotted, value in overrides.items():
        section, key = dotted.split("__")
        config[section][key] = value
    return config


@pytest.mark.parametrize("value", ["fp16", "bf16", "float16", "float64", ""])
def test_a_bad_precision_names_the_key_and_the_allowed_values(value):
    with pytest.raises(ConfigError) as error:
        config_lib.validate(config_with(train__precision=value))
    assert f"train.precision={value!r} is invalid" in str(error.value)
    assert "allowed: float32, bfloat16" in str(error.value)


@pytest.mark.parametrize("conv_impl", ["native", "sparse"])
def test_bfloat16_refuses_the_float32_only_kernels_naming_both_keys(conv_impl):
    with pytest.raises(ConfigError) as error:
        config_lib.validate(config_with(train__precision="bfloat16", model__conv_impl=conv_impl))
    message = str(error.value)
    assert f"model.conv_impl={conv_impl!r} is invalid" in message
    assert "train.precision='bfloat16'" in message and "'auto'" in message
    config_lib.validate(config_with(train__precision="float32", model__conv_impl=conv_impl))


@pytest.mark.parametrize("conv_impl", ["auto", "xla"])
@pytest.mark.parametrize("norm_impl", ["fused", "flax"])
def test_bfloat16_is_valid_with_xla_convolutions_and_either_batch_norm(conv_impl, norm_impl):
    config_lib.validate(config_with(train__precision="bfloat16", model__conv_impl=conv_impl,
                                    model__norm_impl=norm_impl))


def test_studies_from_before_the_key_read_as_float32_with_the_same_digest():
    config = get_config()
    assert identity.ADDED_KEYS["train.precision"] == "float32" == config.train.precision
    saved = identity.config_to_dict(config)
    del saved["train"]["precision"]
    assert identity.differing_keys(saved, identity.config_to_dict(config)) == []
    bf16 = config_with(train__precision="bfloat16")
    assert identity.differing_keys(saved, identity.config_to_dict(bf16)) == ["train.precision"]
    assert "train.precision" not in identity.canonical_settings(identity.flatten(
        identity.config_to_dict(config)))  # at float32 the digest is the one from before the key
    assert identity.config_digest(bf16) != identity.config_digest(config)
