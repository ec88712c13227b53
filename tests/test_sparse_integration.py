"""model.conv_impl='sparse': the CIFAR ResNets' convolutions on the masked kernels that skip
pruned weights, with a dense twin for what needs gradients at pruned weights."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lottery_kd.kernels import sparse_conv
from lottery_kd.models import get_model
from lottery_kd.sparsity import masks as masks_lib, pruning
from lottery_kd.training import optim
from lottery_kd.training.steps import TrainState, init_variables, make_train_step
from tests.routing_helpers import routing_study, write_fingerprint

pytestmark = pytest.mark.skipif(not sparse_conv.native_available(),
                                reason="the native masked kernel does not build here")


def _setup(conv_impl, density):
    model = get_model("resnet20", 10, conv_impl=conv_impl)
    params, stats = init_variables(model, jax.random.key(0), (32, 32, 3))
    masks = masks_lib.create(params, "conv")
    if density < 1:
        masks = pruning.get("magnitude_global")(params, masks, 1 - density, scope="conv")
    return model, params, stats, masks


@pytest.mark.parametrize("density", [pytest.param(1.0, marks=pytest.mark.slow), 0.1074])
def test_sparse_convolutions_give_the_dense_kernels_loss_and_masked_gradients(density):
    images = jax.random.normal(jax.random.key(1), (8, 32, 32, 3))
    labels = jnp.arange(8) % 10
    results = {}
    for impl in ("native", "sparse"):
        model, params, stats, masks = _setup(impl, density)

        def loss(p, model=model, stats=stats, masks=masks):
            logits, _ = model.apply({"params": masks_lib.apply(p, masks), "batch_stats": stats},
                                    images, train=True, mutable=["batch_stats"])
            return -jnp.mean(jax.nn.log_softmax(logits)[jnp.arange(8), labels])
        value, grads = jax.jit(jax.value_and_grad(loss))(params)
        results[impl] = (value, masks_lib.apply(grads, masks))
    (dense_loss, dense_grads), (sparse_loss, sparse_grads) = results["native"], results["sparse"]
    assert abs(float(dense_loss) - float(sparse_loss)) < 1e-5
    for a, b in zip(jax.tree.leaves(dense_grads), jax.tree.leaves(sparse_grads)):
        np.testing.assert_allclose(b, a, atol=1e-5 * float(jnp.max(jnp.abs(a))) + 1e-12)


def test_pruned_weights_stay_exactly_zero_through_sparse_training_steps():
    model, params, stats, masks = _setup("sparse", 0.1074)
    optimizer = optim.sgd_direction(0.9, 2e-4)
    step = jax.jit(make_train_step(model, optimizer, None, normalization=(None, None)))
    state = TrainState(jnp.asarray(0), masks_lib.apply(params, masks), stats,
                       optimizer.init(params))
    rng = np.random.default_rng(0)
    for _ in range(3):
        images = jnp.asarray(rng.integers(0, 256, (16, 32, 32, 3), dtype=np.uint8))
        state, _ = step(state, masks, images, jnp.asarray(rng.integers(0, 10, 16)),
                        jnp.float32(0.1), {})
    for weight, mask in zip(jax.tree.leaves(state.params), jax.tree.leaves(masks)):
        assert np.all(np.asarray(weight)[~np.asarray(mask)] == 0.0)


def test_a_sparse_study_scores_and_grows_with_its_dense_twin(tmp_path):
    """RigL's growth and SNIP/GraSP need gradients at pruned weights: a study with
    conv_impl='sparse' hands them the dense-kernel model."""
    from experiments import cifar10_resnet20
    from lottery_kd.study.study import Study
    config = cifar10_resnet20.get_config()
    config.data.name = "digits"  # no CIFAR files needed; the twin is built all the same
    config.data.validation_size = 0
    config.model.conv_impl = "sparse"
    study = Study(config, tmp_path, log=lambda *_: None, record=False)
    assert study.dense_model is not study.model
    assert study.trainer.dense_model is study.dense_model
    # the twin keeps the shortcut routing it always had (conv3x3.CONV_ROUTING)
    assert study.dense_model.conv.keywords["conv_impl"] == "native-xla-shortcuts"


def test_a_relaunch_switches_conv_impl_for_the_next_runs_never_halfway(tmp_path):
    """model.conv_impl says how, not what: a study stopped in the middle of a run and launched
    again on another conv_impl finishes that run on the path it started on, the next runs take
    the new one, each row says which it ran, and the snapshots stay valid (one digest)."""
    from lottery_kd.study import lottery, results
    from lottery_kd.study.study import Study
    from lottery_kd.training.errors import TrainingInterrupted
    from tests.conftest import make_tiny_config
    from tests.test_reliability import StopAfter
    config = make_tiny_config()
    config.model.name = "resnet20"  # the native kernels serve the CIFAR ResNets only
    config.prune.levels, config.lottery.variants = 1, "lt,kd"
    config.checkpoint.every_steps = 4
    config.model.conv_impl = "xla"
    with pytest.raises(TrainingInterrupted):  # dense 38 steps, 1 between runs, 10 of lt's
        lottery.run(config, tmp_path, log=lambda *_: None, stop_requested=StopAfter(38 + 1 + 10))
    digest = Study(config, tmp_path, log=lambda *_: None, record=False).fingerprint
    config.model.conv_impl = "native"
    lines = []
    rows = lottery.run(config, tmp_path, log=lines.append)
    assert [(r["variant"], r["conv_impl"]) for r in rows] == [
        ("dense", "xla"), ("lt", "xla"), ("kd", "native")]
    assert any("resumes on model.conv_impl=xla" in line for line in lines)
    assert Study(config, tmp_path, log=lambda *_: None, record=False).fingerprint == digest
    assert results.read_rows(tmp_path / "results.jsonl") == rows


def _sparse_conv_calls(conv_impl):
    """The masked-kernel custom calls of a ResNet-20 forward pass on `conv_impl`."""
    model = get_model("resnet20", 10, conv_impl=conv_impl)
    params, stats = init_variables(model, jax.random.key(0), (32, 32, 3))
    text = jax.jit(lambda p: model.apply({"params": p, "batch_stats": stats},
                                         jnp.zeros((2, 32, 32, 3)), train=False)).lower(
        params).as_text()
    return text.count("lottery_kd_sparse_conv_forward")


def test_sparse_runs_the_name_padded_shortcuts_on_the_kernel_and_the_legacy_value_on_xla():
    """flax pads the 1x1 projection shortcuts by name ('SAME'): "sparse" resolves the name to
    its pads and runs them on the masked kernel (XLA's 1x1 filter gradient was 45-50 ms of a
    Zen 1 step); SPARSE_XLA_SHORTCUTS, what "sparse" did before, leaves them to XLA."""
    from lottery_kd.kernels.conv3x3 import SPARSE_XLA_SHORTCUTS
    assert _sparse_conv_calls("sparse") == 19 + 2  # stem, 18 block convs, 2 shortcuts
    assert _sparse_conv_calls(SPARSE_XLA_SHORTCUTS) == 19


def test_a_run_started_before_the_shortcut_routing_resumes_with_its_shortcuts_on_xla(tmp_path):
    """A resume checkpoint written on "sparse" without a routing comes from the code that left
    the shortcuts to XLA: the run finishes that way (its arithmetic never changes halfway); one
    written at routing 2 ("sparse_routing") or later, and a run not yet started, take "sparse"
    as it is now."""
    from lottery_kd.kernels.conv3x3 import CONV_ROUTING, SPARSE_XLA_SHORTCUTS
    study = routing_study(tmp_path, "sparse")
    write_fingerprint(study.paths.resume("level_0_dense"), {"conv_impl": "sparse"})
    write_fingerprint(study.paths.resume("level_1_lt"),
                      {"conv_impl": "sparse", "sparse_routing": 2})
    write_fingerprint(study.paths.resume("level_1_kd_rewind"),
                      {"conv_impl": "sparse", "conv_routing": CONV_ROUTING})
    assert study.run_conv_impl("level_0_dense") == SPARSE_XLA_SHORTCUTS
    assert study.run_conv_impl("level_1_lt") == "sparse"
    assert study.run_conv_impl("level_1_kd_rewind") == "sparse"
    assert study.run_conv_impl("level_1_kd") == "sparse"
