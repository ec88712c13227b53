"""wrn22_2, vgg16, vgg19 and vit_tiny through the toolbox: exact sizes, pruning scopes, config
checks, FLOP counts, one masked train step each, and (slow) tiny studies on CIFAR-shaped data.

The studies read random 32x32 images in place of CIFAR-10 (`lottery_kd.data._read_cifar` is
replaced), so they need no files and no network.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lottery_kd.config import ConfigError, protocols, validate
from lottery_kd.models import flops as flops_lib
from lottery_kd.models import get_model, scopes_for
from lottery_kd.sparsity import masks as masks_lib, pruning

NEW_MODELS = ("wrn22_2", "vgg16", "vgg19", "vit_tiny")
# Exact parameter counts with a 10-class head (models/wide_resnet.py, vgg.py, vit.py derive them).
PARAMETERS = {"wrn22_2": 1_079_642, "vgg16": 14_724_042, "vgg19": 20_035_018,
              "vit_tiny": 2_697_610}
# Forward FLOPs per 32x32 example of every kernel (models.flops.layer_flops).
FORWARD_FLOPS = {"wrn22_2": 315_460_096, "vgg16": 626_403_328, "vgg19": 796_272_640,
                 "vit_tiny": 346_230_528}


def _shapes(name, classes=10):
    model = get_model(name, classes)
    return jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3))))


def _random_params(name, seed=0):
    """Params of `name`'s shapes filled with distinct random values (no compile)."""
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda leaf: jnp.asarray(rng.standard_normal(leaf.shape), jnp.float32),
                        _shapes(name)["params"])


@pytest.mark.parametrize("name", NEW_MODELS)
def test_parameter_counts_are_exact(name):
    count = sum(leaf.size for leaf in jax.tree.leaves(_shapes(name)["params"]))
    print(f"{name}: {count:,} parameters")
    assert count == PARAMETERS[name]


def test_wrn22_2_is_three_groups_of_three_preactivation_blocks():
    params = _shapes("wrn22_2")["params"]
    assert [f"group{g}_block{b}" for g in (1, 2, 3) for b in (1, 2, 3)] == \
        [key for key in params if key.startswith("group")]
    widths = [params[f"group{g}_block1"]["conv1"]["kernel"].shape[-1] for g in (1, 2, 3)]
    assert widths == [32, 64, 128] and params["stem_conv"]["kernel"].shape == (3, 3, 3, 16)
    names = masks_lib.prunable_names(params, "conv")
    shortcuts = [n for n in names if "shortcut_conv" in n]
    assert shortcuts == [f"group{g}_block1/shortcut_conv/kernel" for g in (1, 2, 3)]
    assert len(names) == 1 + 9 * 2 + 3 and "fc/kernel" not in names
    assert len(masks_lib.prunable_names(params, "conv_no_shortcut")) == 19
    assert sorted(masks_lib.prunable_names(params, "conv_fc")) == sorted(names + ["fc/kernel"])
    assert masks_lib.prunable_names(params, "vit_matmul") == []


@pytest.mark.parametrize("name, convs", [("vgg16", 13), ("vgg19", 16)])
def test_vgg_is_open_lths_plan(name, convs):
    params = _shapes(name)["params"]
    assert sorted(masks_lib.prunable_names(params, "conv")) == sorted(
        f"conv{i}/kernel" for i in range(1, convs + 1))
    assert params["fc"]["kernel"].shape == (512, 10)
    assert all("bias" not in params[f"conv{i}"] for i in range(1, convs + 1))  # BN follows


def test_vit_matmul_selects_the_attention_and_mlp_kernels_only():
    variables = _shapes("vit_tiny")
    assert set(variables) == {"params"}  # no BatchNorm
    params = variables["params"]
    matmuls = masks_lib.prunable_names(params, "vit_matmul")
    expected = {f"block{b}/{part}/kernel" for b in range(1, 10) for part in
                ("attn/query", "attn/key", "attn/value", "attn/out", "mlp/fc1", "mlp/fc2")}
    assert set(matmuls) == expected and len(matmuls) == 54
    assert params["block1"]["mlp"]["fc1"]["kernel"].shape == (192, 384)
    assert params["pos_embed"].shape == (1, 65, 192)  # 64 patches + the class token
    # conv finds the patch embedding alone; conv_fc is every kernel
    assert masks_lib.prunable_names(params, "conv") == ["patch_embed/kernel"]
    assert set(masks_lib.prunable_names(params, "conv_fc")) == \
        expected | {"patch_embed/kernel", "head/kernel"}


@pytest.mark.parametrize("distribution, structure", [
    ("global", "unstructured"), ("uniform", "unstructured"), ("erk", "unstructured"),
    ("global", "2:4"), ("global", "block:16")])
def test_masking_functions_prune_vit_kernels_exactly(distribution, structure):
    params = _random_params("vit_tiny")
    masks = masks_lib.create(params)
    fraction = 0.5
    new = pruning.get("magnitude_global")(params, masks, fraction, rng=jax.random.key(0),
                                          scope="vit_matmul", distribution=distribution,
                                          structure=structure)
    pruning.check_result("magnitude_global", new, masks, params, "vit_matmul", structure)
    remaining, total = masks_lib.count(new, "vit_matmul")
    assert total == 9 * (4 * 192 * 192 + 2 * 192 * 384)
    assert remaining == total // 2
    out_of_scope = [leaf for name, leaf in masks_lib.named_leaves(new)
                    if not masks_lib.is_prunable(name, np.shape(leaf), "vit_matmul")]
    assert all(np.all(np.asarray(leaf)) for leaf in out_of_scope)


def _config(name, scope):
    config = protocols.experiment_config(protocols.NONE, dataset="cifar10", network=name)
    config.prune.scope = scope
    return config


@pytest.mark.parametrize("name", NEW_MODELS)
def test_config_accepts_the_models_own_scopes(name):
    for scope in scopes_for(name):
        validate(_config(name, scope))


@pytest.mark.parametrize("name, scope, words", [
    ("vit_tiny", "conv", ["prune.scope='conv'", "model vit_tiny has no convolution kernels",
                          "use prune.scope=vit_matmul or conv_fc"]),
    ("vit_tiny", "conv_no_shortcut", ["model vit_tiny has no convolution kernels"]),
    ("wrn22_2", "vit_matmul", ["prune.scope='vit_matmul'", "model wrn22_2 has no attention",
                               "conv or conv_no_shortcut or conv_fc"]),
    ("resnet20", "vit_matmul", ["model resnet20 has no attention or MLP kernels"]),
])
def test_config_refuses_a_scope_the_model_lacks(name, scope, words):
    with pytest.raises(ConfigError) as error:
        validate(_config(name, scope))
    assert all(word in str(error.value) for word in words), str(error.value)


def test_config_refuses_a_basis_with_vit_matmul():
    config = _config("vit_tiny", "vit_matmul")
    config.model.basis = "dct"
    with pytest.raises(ConfigError, match="model.basis='dct' is invalid: '' with "
                                          "prune.scope=vit_matmul"):
        validate(config)


@pytest.mark.parametrize("name", NEW_MODELS)
def test_flops_count_every_kernel(name):
    model = get_model(name, 10)
    flops = flops_lib.layer_flops(model, (32, 32, 3))
    kernels = [n for n, _ in masks_lib.named_leaves(_shapes(name)["params"])
               if n.endswith("kernel")]
    assert sorted(flops) == sorted(kernels) and all(f > 0 for f in flops.values())
    assert sum(flops.values()) == FORWARD_FLOPS[name]
    if name == "vit_tiny":  # a Dense layer counts once per token (64 patches + class token)
        assert flops["block1/attn/query/kernel"] == 2 * 192 * 192 * 65
        assert flops["head/kernel"] == 2 * 192 * 10
        assert flops["patch_embed/kernel"] == 2 * (4 * 4 * 3 * 192) * 64
    if name == "wrn22_2":
        assert flops["group2_block1/shortcut_conv/kernel"] == 2 * 32 * 64 * 16 * 16
    row = {"start_step": 0, "steps": 10, "distill": True,
           "layer_counts": {n: (1, 2) for n in flops if n != "fc/kernel"}}
    counted = flops_lib.row_flops(flops, row, batch_size=4, rigl=(5, 8))
    assert 0 < counted["train_flops_sparse"] < counted["train_flops_dense"]


def test_export_folds_vgg_and_refuses_the_preactivation_and_vit_networks():
    from flax import traverse_util

    from lottery_kd import export
    from lottery_kd.models.layers import BATCH_NORM_EPSILON

    def flat(name):
        variables = jax.tree.map(lambda leaf: np.ones(leaf.shape, np.float32), _shapes(name))
        params = {"/".join(k): v for k, v in traverse_util.flatten_dict(
            variables["params"]).items()}
        stats = {"/".join(k): v for k, v in traverse_util.flatten_dict(
            variables.get("batch_stats", {})).items()}
        return params, stats
    folded = export.fold_batch_norm(*flat("vgg16"), BATCH_NORM_EPSILON)
    assert "bn13/bias" in folded and "bn13/scale" not in folded
    for name in ("wrn22_2", "vit_tiny"):  # a BatchNorm before each conv / no BatchNorm at all
        with pytest.raises(export.ExportError, match="no BatchNorm"):
            export.fold_batch_norm(*flat(name), BATCH_NORM_EPSILON)


def _masked_step(name):
    """(step, state, masks, stats before) for `name` with half of its in-scope weights pruned
    by magnitude."""
    from lottery_kd.training import optim
    from lottery_kd.training.steps import TrainState, init_variables, make_train_step
    model = get_model(name, 10)
    params, batch_stats = init_variables(model, jax.random.key(0), (32, 32, 3))
    scope = scopes_for(name)[0]
    masks = pruning.get("magnitude_global")(params, masks_lib.create(params), 0.5,
                                            rng=jax.random.key(1), scope=scope)
    assert masks_lib.sparsity(masks, scope) == pytest.approx(0.5, abs=1e-6)
    optimizer = optim.sgd_direction(0.9, 5e-4)
    stats_before = jax.device_get(batch_stats)
    state = TrainState(jnp.asarray(0), params, batch_stats, optimizer.init(params))
    return make_train_step(model, optimizer, None), state, masks, stats_before


_IMAGES = jnp.asarray(np.random.default_rng(0).standard_normal((4, 32, 32, 3)), jnp.float32)


@pytest.mark.parametrize("name", NEW_MODELS)
def test_the_masked_train_step_traces(name):
    """The train step traces for every new model on abstract values (nothing compiled: the
    slow test below runs it): the new state keeps the params' and batch statistics' structure."""
    from lottery_kd.training import optim
    from lottery_kd.training.steps import TrainState, make_train_step
    model, optimizer = get_model(name, 10), optim.sgd_direction(0.9, 5e-4)
    variables = _shapes(name)
    params, batch_stats = variables["params"], variables.get("batch_stats", {})
    masks = jax.tree.map(lambda p: jax.ShapeDtypeStruct(p.shape, jnp.bool_), params)
    state = TrainState(jax.ShapeDtypeStruct((), jnp.int32), params, batch_stats,
                       jax.eval_shape(optimizer.init, params))
    new_state, metrics = jax.eval_shape(make_train_step(model, optimizer, None), state, masks,
                                        _IMAGES, jnp.arange(4), jnp.float32(0.1), {})
    assert jax.tree.structure(new_state) == jax.tree.structure(state)
    assert metrics["loss"].shape == ()


# 35-50 s each on two busy cores (a whole network's gradient compiled).
@pytest.mark.slow
@pytest.mark.parametrize("name", ["wrn22_2", "vit_tiny", "vgg16"])
def test_one_masked_train_step(name):
    """Half of the in-scope weights pruned, one SGD step: finite loss, pruned weights exactly
    0.0, BatchNorm statistics (where the model has any) updated."""
    step, state, masks, stats_before = _masked_step(name)
    state, metrics = step(state, masks, _IMAGES, jnp.arange(4), jnp.float32(0.1), {})
    assert all(np.all(np.isfinite(np.asarray(v))) for v in jax.tree.leaves(metrics))
    for weight, mask in zip(jax.tree.leaves(state.params), jax.tree.leaves(masks)):
        assert np.all(np.asarray(weight)[~np.asarray(mask)] == 0.0)
    if stats_before:
        assert not all(np.array_equal(a, b) for a, b in zip(
            jax.tree.leaves(stats_before), jax.tree.leaves(state.batch_stats)))


# ---- tiny studies on CIFAR-shaped random data ------------------------------------------------

def _fake_cifar(*args, **kwargs):
    rng = np.random.default_rng(0)
    return (rng.integers(0, 256, (64, 32, 32, 3), dtype=np.uint8),
            rng.integers(0, 10, 64).astype(np.int32),
            rng.integers(0, 256, (32, 32, 32, 3), dtype=np.uint8),
            rng.integers(0, 10, 32).astype(np.int32))


def tiny_cifar_config(name, dynamic=""):
    """Two epochs of 4 steps on 64 random 32x32 images; one level, lt and kd (or one dynamic
    sparse run with mask updates every 2 steps); the model's first scope."""
    config = protocols.experiment_config(protocols.NONE, dataset="cifar10", network=name)
    config.data.source = "tfds"  # read through _read_cifar, replaced by the tests
    config.data.validation_size = 0
    config.data.normalization = "per_image"
    config.data.eval_batch_size = 32
    config.train.epochs, config.train.batch_size, config.train.milestones = 2, 16, "1"
    config.prune.levels, config.prune.fraction = 1, 0.2
    config.prune.scope = scopes_for(name)[0]
    config.lottery.variants, config.lottery.rewind = "lt,kd", "1ep"
    config.log.progress, config.log.tensorboard = "lines", False
    if dynamic:
        config.dynamic.method, config.dynamic.delta_t = dynamic, 2
    return config


@pytest.fixture
def fake_cifar(monkeypatch):
    import lottery_kd.data as data_module
    monkeypatch.setattr(data_module, "_read_cifar", _fake_cifar)


# A study compiles its train, KD and eval steps: 60-300 s each on two busy cores (VGGs longest).
@pytest.mark.slow
@pytest.mark.parametrize("name", NEW_MODELS)
def test_a_tiny_imp_study_runs_lt_and_kd(name, fake_cifar, tmp_path):
    from lottery_kd.study import lottery
    config = tiny_cifar_config(name)
    validate(config)
    rows = lottery.run(config, tmp_path, log=lambda *_: None)
    assert [(r["level"], r["variant"]) for r in rows] == [(0, "dense"), (1, "lt"), (1, "kd")]
    assert rows[1]["sparsity"] == pytest.approx(0.2, abs=1e-3)
    assert all(0 < r["train_flops_sparse"] <= r["train_flops_dense"] for r in rows)
    if name == "vgg16":  # the exported ticket predicts what the masked network does
        from lottery_kd import export
        export.export_ticket(tmp_path, "level_1_lt", tmp_path / "ticket.npz")
        agreement = export.agreement(tmp_path, "level_1_lt", tmp_path / "ticket.npz")
        assert agreement["argmax_differ"] == 0, agreement


@pytest.mark.slow
@pytest.mark.parametrize("name", ["wrn22_2", "vit_tiny"])
def test_a_tiny_rigl_study_keeps_its_sparsity(name, fake_cifar, tmp_path):
    from lottery_kd.study import lottery
    config = tiny_cifar_config(name, dynamic="rigl")
    validate(config)
    rows = lottery.run(config, tmp_path, log=lambda *_: None)
    assert [(r["level"], r["variant"]) for r in rows] == [(0, "dense"), (1, "rigl")]
    assert rows[1]["sparsity"] == pytest.approx(config.dynamic.sparsity, abs=1e-3)
    assert rows[1]["train_flops_sparse"] < rows[0]["train_flops_sparse"]


def test_the_wrn22_2_experiment_is_rigls_recipe():
    from experiments import cifar10_wrn22_2
    config = cifar10_wrn22_2.get_config()
    validate(config)
    assert (config.model.name, config.dynamic.method, config.dynamic.sparsity) == \
        ("wrn22_2", "rigl", 0.9)
    assert (config.train.epochs, config.train.lr_decay, config.train.weight_decay) == \
        (250, 0.2, 5e-4)
    steps_per_epoch = 50_000 // config.train.batch_size
    drops = [int(e) * steps_per_epoch for e in config.train.milestones.split(",")]
    assert [round(d, -3) for d in drops] == [30_000, 60_000, 90_000]


@pytest.mark.parametrize("size", [1, 2, 4])
def test_vgg_small_map_conv_is_xlas_convolution_in_values_and_gradients(size):
    """The matmul path VGG takes on maps of 2x2 and smaller (XLA's CPU convolution runs those at
    under 1 GFLOP/s) computes the same convolution; larger maps go to XLA unchanged."""
    from lottery_kd.models import vgg
    x = jax.random.normal(jax.random.key(0), (3, size, size, 16))
    w = jax.random.normal(jax.random.key(1), (3, 3, 16, 8))
    numbers = jax.lax.conv_dimension_numbers(x.shape, w.shape, ("NHWC", "HWIO", "NHWC"))

    def loss(conv, x, w):
        out = conv(x, w, (1, 1), [(1, 1), (1, 1)], lhs_dilation=(1, 1), rhs_dilation=(1, 1),
                   dimension_numbers=numbers, feature_group_count=1, precision=None)
        return jnp.sum(out * jnp.arange(out.size, dtype=out.dtype).reshape(out.shape))

    for got, want in zip(jax.grad(loss, argnums=(1, 2))(vgg.small_map_conv, x, w),
                         jax.grad(loss, argnums=(1, 2))(jax.lax.conv_general_dilated, x, w)):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(loss(vgg.small_map_conv, x, w),
                               loss(jax.lax.conv_general_dilated, x, w), rtol=1e-5)
    hlo = jax.jit(lambda x, w: loss(vgg.small_map_conv, x, w)).lower(x, w).as_text()
    assert ("convolution" in hlo) == (size * size > vgg.SMALL_MAP)


def test_a_model_whose_layers_vanish_on_the_data_sets_images_is_refused_before_training(
        tmp_path):
    """VGG-16's four max pools take the digits' 8x8 images to 0x0: its last convolutions
    would be empty and its logits NaN. Refused, naming the layers, before the dense run."""
    from lottery_kd.study import lottery
    from tests.conftest import make_tiny_config

    config = make_tiny_config()
    config.model.name = "vgg16"
    with pytest.raises(ConfigError, match=r"model.name='vgg16' is invalid for data.name="
                                          r"'digits': on its \(8, 8, 1\) images \d+ layer "
                                          r"output\(s\) are empty \(bn11, "):
        lottery.run(config, tmp_path, log=lambda *_: None)
    assert not (tmp_path / "results.jsonl").exists()
