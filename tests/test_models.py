"""Model registry, parameter counts, and the select-ReLU guard on the compiled train step."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lottery_kd.sparsity import masks

from lottery_kd.training import optim
from lottery_kd.training.steps import TrainState, init_variables, make_train_step
from lottery_kd.models import MODEL_NAMES, get_model
from lottery_kd.models import cifar_resnet
from lottery_kd.models.layers import relu_select


def _param_count(name):
    model = get_model(name, 10)
    shape = (1, 8, 8, 1) if name == "digits_convnet" else (1, 32, 32, 3)
    variables = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros(shape)))
    return sum(leaf.size for leaf in jax.tree.leaves(variables["params"]))


@pytest.mark.parametrize("name, expected, tolerance", [
    ("resnet20", 0.27e6, 0.01e6), ("resnet56", 0.85e6, 0.02e6), ("resnet110", 1.7e6, 0.04e6),
    # The KD-ticket release's bottleneck "resnet110": 3 x 18 bottleneck blocks (ResNet-164 size).
    ("resnet110_bottleneck", 1.7e6, 0.04e6),
])
def test_parameter_counts_match_he_et_al(name, expected, tolerance):
    assert abs(_param_count(name) - expected) < tolerance


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_every_model_maps_images_to_logits(name):
    model = get_model(name, 7)
    shape = (2, 8, 8, 1) if name == "digits_convnet" else (2, 32, 32, 3)
    variables = model.init(jax.random.key(0), jnp.zeros(shape)) if name in (
        "digits_convnet", "resnet20") else None
    if variables is None:  # deep nets: shapes only, to keep the suite fast
        out = jax.eval_shape(lambda: model.apply(model.init(jax.random.key(0), jnp.zeros(shape)),
                                                 jnp.zeros(shape)))
        assert out.shape == (2, 7)
        return
    logits, updates = model.apply(variables, jnp.ones(shape), train=True, mutable=["batch_stats"])
    assert logits.shape == (2, 7) and np.all(np.isfinite(logits))
    assert jax.tree.structure(updates["batch_stats"]) == jax.tree.structure(
        variables["batch_stats"])


def test_shortcuts_are_1x1_convolutions_in_the_conv_scope():
    model = get_model("resnet20", 10)
    params = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3))))
    names = masks.prunable_names(params["params"], "conv")
    shortcuts = [n for n in names if "shortcut_conv" in n]
    assert shortcuts == ["stage2_block1/shortcut_conv/kernel", "stage3_block1/shortcut_conv/kernel"]
    assert "stem_conv/kernel" in names and "fc/kernel" not in names
    assert len(names) == 1 + 18 + 2  # stem, 9 blocks x 2 convs, 2 projection shortcuts


def test_unknown_model_names_the_allowed_ones():
    with pytest.raises(ValueError) as error:
        get_model("resnet21", 10)
    assert "resnet56" in str(error.value) and "digits_convnet" in str(error.value)
    with pytest.raises(ValueError) as error:
        get_model("vgg11", 10)
    assert "resnet20" in str(error.value) and "resnet110_bottleneck" in str(error.value)
    assert all(name in str(error.value) for name in ("wrn22_2", "vgg16", "vgg19", "vit_tiny"))


def test_relu_select_equals_relu_in_value_and_gradient():
    z = jnp.array([-2.0, -0.0, 0.0, 1e-30, 3.0])
    np.testing.assert_array_equal(relu_select(z), jax.nn.relu(z))
    grad_select = jax.grad(lambda v: jnp.sum(relu_select(v) * jnp.arange(5.0)))(z)
    grad_relu = jax.grad(lambda v: jnp.sum(jax.nn.relu(v) * jnp.arange(5.0)))(z)
    np.testing.assert_array_equal(grad_select, grad_relu)


def _relu_fusion_sizes(name):
    """Instruction counts of the compiled train step's fused computations that hold a `maximum`,
    with Flax's BatchNorm (the fused one has no max(z, 0) at all: its ReLU is a select too)."""
    model = get_model(name, 10, norm_impl="flax")
    params, batch_stats = init_variables(model, jax.random.key(0), (32, 32, 3))
    optimizer = optim.sgd_direction(0.9, 2e-4)
    state = TrainState(jnp.asarray(0), params, batch_stats, optimizer.init(params))
    step = make_train_step(model, optimizer, None)
    hlo = step.lower(state, masks.create(params), jnp.zeros((4, 32, 32, 3)),
                     jnp.zeros((4,), jnp.int32), jnp.float32(0.1), {}).compile().as_text()
    sizes, current, body = [], None, []
    for line in hlo.splitlines():
        if re.match(r"^%?[\w.\-]*fus[\w.\-]* .*\{\s*$", line):
            current, body = line, []
        elif line.startswith("}") and current is not None:
            if any(" maximum(" in instruction for instruction in body):
                sizes.append(len(body))
            current = None
        elif current is not None and " = " in line:
            body.append(line)
    return max(sizes)


def _assert_no_depth_growth():
    shallow, deep = _relu_fusion_sizes("resnet20"), _relu_fusion_sizes("resnet56")
    assert deep <= 1.25 * shallow, (shallow, deep)


@pytest.mark.slow  # 19 s of HLO; a speed guard, run with the benchmarks
def test_block_relu_is_not_duplicated_into_backward_fusions():
    """ResNet-56's largest ReLU fusion stays as small as ResNet-20's (no recompute of blocks).

    With max(z, 0) closing each block, XLA's CPU fuser copies it into every consumer and the
    fusions grow with depth (measured: ~90 -> ~216 instructions from R20 to R56; training cost
    grows with depth squared). Do not 'simplify' relu_select back to nn.relu.
    """
    _assert_no_depth_growth()


# Slow (~20 s, two extra ResNet-56 compiles): it checks the guard itself, not the library.
@pytest.mark.slow
def test_the_guard_catches_a_plain_relu(monkeypatch):
    monkeypatch.setattr(cifar_resnet, "relu_select", jax.nn.relu)
    with pytest.raises(AssertionError):
        _assert_no_depth_growth()
