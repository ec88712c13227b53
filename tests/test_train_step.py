"""Tests for lottery_kd.training.steps.make_train_step (contracts: keeping pruned weights at zero,
distillation). Tiny model (digits_convnet) on random 8x8 inputs.

The step donates its first argument (the state): a state is never used after it was passed in,
and everything compared later is copied to numpy first.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lottery_kd.sparsity import masks as masks_lib

from lottery_kd.training import optim
from lottery_kd.training.steps import Distillation, TrainState, init_variables, make_train_step
from lottery_kd.models import build_cifar_resnet, get_model

BATCH, CLASSES = 16, 10
MODEL = get_model("digits_convnet", CLASSES)
CONV_KERNELS = ("conv1", "conv2", "conv3")


def init(seed: int):
    return init_variables(MODEL, jax.random.key(seed), (8, 8, 1))


@functools.lru_cache(maxsize=None)
def student_and_teacher():
    """Numpy copies (immutable source of fresh device arrays for every test)."""
    params, batch_stats = init(0)
    teacher_params, teacher_stats = init(1)
    to_np = lambda tree: jax.tree.map(np.asarray, tree)  # noqa: E731
    return to_np(params), to_np(batch_stats), to_np(teacher_params), to_np(teacher_stats)


def fresh(tree):
    return jax.tree.map(lambda x: jnp.array(x, copy=True), tree)


def random_conv_mask(params, density: float, seed: int):
    """Hand-made mask: conv kernels keep each weight with probability `density`; rest all-true."""
    rng = np.random.default_rng(seed)
    mask = jax.tree.map(lambda p: np.ones(np.shape(p), bool), params)
    for name in CONV_KERNELS:
        keep = rng.random(np.shape(params[name]["kernel"])) < density
        mask[name]["kernel"] = keep
    return jax.tree.map(jnp.asarray, mask)


def make_state(params, batch_stats, mask, optimizer, *, apply_mask: bool = True):
    params = fresh(params)
    if apply_mask:
        params = masks_lib.apply(params, mask)
    return TrainState(step=jnp.asarray(0), params=params, batch_stats=fresh(batch_stats),
                            opt_state=optimizer.init(params))


def batch(seed: int):
    rng = np.random.default_rng(1000 + seed)
    images = jnp.asarray(rng.standard_normal((BATCH, 8, 8, 1)).astype(np.float32))
    labels = jnp.asarray(rng.integers(0, CLASSES, BATCH).astype(np.int32))
    return images, labels


def teacher_tree():
    _, _, teacher_params, teacher_stats = student_and_teacher()
    return {"params": fresh(teacher_params), "batch_stats": fresh(teacher_stats)}


def assert_pruned_exactly_zero(params, mask):
    for name, (p, m) in zip([masks_lib.path_name(path) for path, _ in
                             jax.tree_util.tree_flatten_with_path(params)[0]],
                            zip(jax.tree.leaves(params), jax.tree.leaves(mask))):
        p, m = np.asarray(p), np.asarray(m)
        assert np.all(p[~m] == 0.0), f"{name}: pruned weights not exactly 0.0"


KD = Distillation(temperature=4.0, alpha=0.9, reduction="batchmean")


@functools.lru_cache(maxsize=None)
def compiled_step(momentum: float, weight_decay: float, distillation):
    """(optimizer, step), shared between tests with the same settings (compiles are the cost)."""
    optimizer = optim.sgd_direction(momentum, weight_decay)
    return optimizer, make_train_step(MODEL, optimizer, distillation)


@pytest.mark.parametrize("distillation", [None, KD], ids=["ce", "kd"])
def test_pruned_weights_stay_exactly_zero_50_steps(distillation):
    params, batch_stats, _, _ = student_and_teacher()
    mask = random_conv_mask(params, 0.5, seed=3)
    pruned_fraction = 1 - np.mean(np.concatenate(
        [np.asarray(mask[n]["kernel"]).reshape(-1) for n in CONV_KERNELS]))
    assert 0.4 < pruned_fraction < 0.6
    optimizer, step = compiled_step(0.9, 5e-4, distillation)
    teacher = teacher_tree() if distillation is not None else {}
    state = make_state(params, batch_stats, mask, optimizer)
    initial = jax.tree.map(np.array, state.params)
    for i in range(50):
        images, labels = batch(i % 5)
        state, metrics = step(state, mask, images, labels, jnp.asarray(0.1, jnp.float32), teacher)
        assert np.isfinite(float(metrics["loss"]))
    assert int(state.step) == 50
    final = jax.tree.map(np.array, state.params)
    assert_pruned_exactly_zero(final, mask)
    for name in CONV_KERNELS:
        m = np.asarray(mask[name]["kernel"])
        before, after = initial[name]["kernel"], final[name]["kernel"]
        assert np.all(np.isfinite(after))
        assert np.all(after[m] != before[m]), f"{name}: some unpruned weights never moved"
    assert np.any(final["fc"]["kernel"] != initial["fc"]["kernel"])
    # The momentum trace of pruned weights is zero too (zero gradient, zero weight decay).
    trace = state.opt_state[1].trace
    for name in CONV_KERNELS:
        assert np.all(np.asarray(trace[name]["kernel"])[~np.asarray(mask[name]["kernel"])] == 0)


@pytest.mark.parametrize("distillation", [None, KD], ids=["ce", "kd"])
def test_polluted_momentum_cannot_revive_pruned_weights(distillation):
    params, batch_stats, _, _ = student_and_teacher()
    mask = random_conv_mask(params, 0.5, seed=4)
    optimizer, step = compiled_step(0.9, 5e-4, distillation)
    teacher = teacher_tree() if distillation is not None else {}
    state = make_state(params, batch_stats, mask, optimizer)
    # Fill the whole optimizer state (the momentum trace) with large non-zero values.
    state = state.replace(opt_state=jax.tree.map(lambda x: jnp.full_like(x, 3.0),
                                                 state.opt_state))
    assert np.all(np.asarray(state.opt_state[1].trace["conv1"]["kernel"]) == 3.0)
    for i in range(3):
        images, labels = batch(i)
        state, _ = step(state, mask, images, labels, jnp.asarray(0.5, jnp.float32), teacher)
        assert_pruned_exactly_zero(state.params, mask)


def test_unmasked_start_is_zeroed_after_one_step():
    """Even params that were not masked before the first step are exactly 0.0 at pruned
    positions after it ("after every update the pruned weights are exactly 0.0")."""
    params, batch_stats, _, _ = student_and_teacher()
    mask = random_conv_mask(params, 0.3, seed=5)
    optimizer, step = compiled_step(0.9, 5e-4, None)
    state = make_state(params, batch_stats, mask, optimizer, apply_mask=False)
    assert np.any(np.asarray(state.params["conv1"]["kernel"])[~np.asarray(mask["conv1"]["kernel"])]
                  != 0)
    images, labels = batch(0)
    state, _ = step(state, mask, images, labels, jnp.asarray(0.1, jnp.float32), {})
    assert_pruned_exactly_zero(state.params, mask)


def test_step_equals_hand_sgd_with_independent_gradients():
    """Two steps of the compiled step == PyTorch SGD applied by hand to gradients computed here
    (forward with params * mask, CE loss written out)."""
    params, batch_stats, _, _ = student_and_teacher()
    mask = random_conv_mask(params, 0.6, seed=6)
    momentum, weight_decay, lr = 0.9, 5e-4, 0.05
    optimizer, step = compiled_step(momentum, weight_decay, None)
    state = make_state(params, batch_stats, mask, optimizer)

    mask_np = jax.tree.map(np.asarray, mask)
    w = jax.tree.map(lambda p, m: np.where(m, np.asarray(p, np.float32), 0.0).astype(np.float32),
                     params, mask_np)
    stats = jax.tree.map(np.asarray, batch_stats)
    d = jax.tree.map(np.zeros_like, w)

    def hand_loss(p, stats_in, images, labels):
        masked = jax.tree.map(lambda x, m: x * m.astype(x.dtype), p, mask)
        logits, updates = MODEL.apply({"params": masked, "batch_stats": stats_in}, images,
                                      train=True, mutable=["batch_stats"])
        log_probs = jax.nn.log_softmax(logits)
        nll = -log_probs[jnp.arange(labels.shape[0]), labels]
        return jnp.mean(nll), updates["batch_stats"]

    grad_fn = jax.jit(jax.grad(hand_loss, has_aux=True))
    for i in range(2):
        images, labels = batch(10 + i)
        grads, new_stats = grad_fn(
            jax.tree.map(jnp.asarray, w), jax.tree.map(jnp.asarray, stats), images, labels)
        grads = jax.tree.map(np.asarray, grads)
        d = jax.tree.map(lambda d_, g, w_: momentum * d_ + g + weight_decay * w_, d, grads, w)
        w = jax.tree.map(lambda w_, d_, m: np.where(m, w_ - lr * d_, 0.0), w, d, mask_np)
        stats = jax.tree.map(np.asarray, new_stats)
        state, metrics = step(state, mask, images, labels, jnp.asarray(lr, jnp.float32), {})

    for (path, got), want in zip(jax.tree_util.tree_flatten_with_path(state.params)[0],
                                 jax.tree.leaves(w)):
        np.testing.assert_allclose(np.asarray(got), want, rtol=2e-4, atol=2e-6,
                                   err_msg=masks_lib.path_name(path))
    for got, want in zip(jax.tree.leaves(state.batch_stats), jax.tree.leaves(stats)):
        np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-6)


def test_kd_loss_uses_teacher_and_alpha_zero_equals_ce():
    params, batch_stats, _, _ = student_and_teacher()
    mask = random_conv_mask(params, 0.5, seed=7)
    images, labels = batch(20)
    lr = jnp.asarray(0.1, jnp.float32)
    results = {}
    for label, distillation in [("ce", None), ("kd", KD),
                                ("kd_alpha0", Distillation(4.0, 0.0, "batchmean")),
                                ("kd_mean", Distillation(4.0, 0.9, "mean"))]:
        optimizer, step = compiled_step(0.9, 5e-4, distillation)
        state = make_state(params, batch_stats, mask, optimizer)
        teacher = teacher_tree() if distillation is not None else {}
        state, metrics = step(state, mask, images, labels, lr, teacher)
        results[label] = (float(metrics["loss"]), jax.tree.map(np.asarray, state.params))

    ce_loss, ce_params = results["ce"]
    kd_loss, _ = results["kd"]
    assert abs(kd_loss - ce_loss) > 1e-3

    # kd loss computed independently: student logits (train mode) and teacher logits
    # (inference mode, running statistics) on the same batch
    _, _, teacher_params, teacher_stats = student_and_teacher()
    masked = masks_lib.apply(fresh(params), mask)
    train_apply = jax.jit(lambda v, x: MODEL.apply(v, x, train=True, mutable=["batch_stats"]))
    student_logits, _ = train_apply({"params": masked, "batch_stats": fresh(batch_stats)}, images)
    teacher_logits = jax.jit(lambda v, x: MODEL.apply(v, x, train=False))(
        {"params": fresh(teacher_params), "batch_stats": fresh(teacher_stats)}, images)
    s, t = np.asarray(student_logits, np.float64), np.asarray(teacher_logits, np.float64)

    def log_softmax(x):
        x = x - x.max(-1, keepdims=True)
        return x - np.log(np.exp(x).sum(-1, keepdims=True))

    ce = -np.mean(log_softmax(s)[np.arange(BATCH), np.asarray(labels)])
    assert ce_loss == pytest.approx(ce, rel=1e-5)
    pt = np.exp(log_softmax(t / 4))
    kl_sum = np.sum(pt * (log_softmax(t / 4) - log_softmax(s / 4)))
    assert kd_loss == pytest.approx(0.9 * 16 * kl_sum / BATCH + 0.1 * ce, rel=1e-5)
    assert results["kd_mean"][0] == pytest.approx(0.9 * 16 * kl_sum / (BATCH * CLASSES) + 0.1 * ce,
                                                  rel=1e-5)

    alpha0_loss, alpha0_params = results["kd_alpha0"]
    assert alpha0_loss == pytest.approx(ce_loss, rel=1e-6, abs=1e-7)
    for a, b in zip(jax.tree.leaves(alpha0_params), jax.tree.leaves(ce_params)):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


def test_lr_is_an_argument_no_recompile_and_zero_lr_keeps_weights():
    params, batch_stats, _, _ = student_and_teacher()
    mask = random_conv_mask(params, 0.5, seed=8)
    optimizer, step = compiled_step(0.9, 5e-4, None)
    state = make_state(params, batch_stats, mask, optimizer)
    before = jax.tree.map(np.array, state.params)
    images, labels = batch(0)
    state, _ = step(state, mask, images, labels, jnp.asarray(0.0, jnp.float32), {})
    for a, b in zip(jax.tree.leaves(before), jax.tree.leaves(state.params)):
        np.testing.assert_array_equal(a, np.asarray(b))
    compiled = step._cache_size()
    state, _ = step(state, mask, images, labels, jnp.asarray(0.3, jnp.float32), {})
    state, _ = step(state, mask, images, labels, jnp.asarray(0.01, jnp.float32), {})
    assert step._cache_size() == compiled  # a new learning rate is not a new compile


@functools.lru_cache(maxsize=None)
def step_with_traced_hyperparameters(distill: bool = False):
    """The library's train step with momentum and weight decay as traced arguments, compiled once
    per loss (one compile per hypothesis example would cost ~1 s each): the outer jit builds
    make_train_step(MODEL, optim.sgd_direction(momentum, weight_decay), KD or None) while
    tracing."""

    @jax.jit
    def run(state, mask, images, labels, lr, momentum, weight_decay, teacher):
        step = make_train_step(MODEL, optim.sgd_direction(momentum, weight_decay),
                                     KD if distill else None)
        return step(state, mask, images, labels, lr, teacher)

    return run


@settings(max_examples=12, deadline=None)
@given(density=st.floats(0.05, 0.95), momentum=st.floats(0.0, 0.99),
       weight_decay=st.floats(0.0, 1e-2), lr=st.floats(1e-3, 0.5), seed=st.integers(0, 10**6),
       polluted=st.booleans(), distill=st.booleans())
def test_property_pruned_weights_exactly_zero(density, momentum, weight_decay, lr, seed,
                                              polluted, distill):
    params, batch_stats, _, _ = student_and_teacher()
    mask = random_conv_mask(params, density, seed=seed)
    optimizer = optim.sgd_direction(momentum, weight_decay)
    state = make_state(params, batch_stats, mask, optimizer)
    if polluted:
        state = state.replace(opt_state=jax.tree.map(lambda x: jnp.full_like(x, 1.0),
                                                     state.opt_state))
    run = step_with_traced_hyperparameters(distill)
    before = jax.tree.map(np.array, state.params)
    for i in range(5):
        images, labels = batch((seed + i) % 7)
        state, _ = run(state, mask, images, labels, jnp.float32(lr), jnp.float32(momentum),
                       jnp.float32(weight_decay), teacher_tree() if distill else {})
    assert_pruned_exactly_zero(state.params, mask)
    moved = np.asarray(state.params["conv2"]["kernel"]) != before["conv2"]["kernel"]
    assert np.any(moved[np.asarray(mask["conv2"]["kernel"])])


@pytest.mark.parametrize("momentum,weight_decay", [(0.99, 1e-2)])
def test_pruned_weights_exactly_zero_extreme_hyperparameters(momentum, weight_decay):
    """The corners of the property test, through the plain compiled library step."""
    params, batch_stats, _, _ = student_and_teacher()
    mask = random_conv_mask(params, 0.3, seed=9)
    optimizer = optim.sgd_direction(momentum, weight_decay)
    step = make_train_step(MODEL, optimizer, None)
    state = make_state(params, batch_stats, mask, optimizer)
    for i in range(5):
        images, labels = batch(i)
        state, _ = step(state, mask, images, labels, jnp.asarray(0.5, jnp.float32), {})
    assert_pruned_exactly_zero(state.params, mask)


@pytest.mark.slow  # 13 s
def test_the_train_step_vmaps_over_a_stack_of_tickets():
    """DESIGN: the step is pure in (state, masks, batch, teacher, lr), so one call can train a
    stack of tickets side by side. Checked on the default CIFAR ResNet path (native conv and
    fused BatchNorm where they apply): two tickets with their own weights and masks, stacked,
    step as they do one by one. ResNet-8 (one block per stage) has every layer kind ResNet-20
    has, downsampling shortcuts included, at a third of the compile time."""
    model = build_cifar_resnet(8, 10)
    direction = optim.sgd_direction(0.9, 2e-4)
    step = make_train_step(model, direction, None)

    def ticket(seed, density):
        params, batch_stats = init_variables(model, jax.random.key(seed), (32, 32, 3))
        draw = np.random.default_rng(seed + 7)
        masks = jax.tree.map(
            lambda p: jnp.asarray(draw.random(p.shape) < density if p.ndim == 4
                                  else np.ones(p.shape, bool)), params)
        return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                                batch_stats=batch_stats, opt_state=direction.init(params)), masks

    images = jax.random.normal(jax.random.key(1), (16, 32, 32, 3))
    labels = jnp.arange(16) % 10
    tickets = [ticket(0, 0.5), ticket(1, 0.2)]
    stacked = jax.tree.map(lambda *leaves: jnp.stack(leaves), *tickets)
    together, _ = jax.vmap(step, in_axes=(0, 0, None, None, None, None))(
        *stacked, images, labels, jnp.float32(0.1), {})
    for index, (state, masks) in enumerate(tickets):
        alone, _ = step(state, masks, images, labels, jnp.float32(0.1), {})
        for a, b in zip(jax.tree.leaves(together.params), jax.tree.leaves(alone.params)):
            np.testing.assert_allclose(np.asarray(a[index]), np.asarray(b), atol=1e-5)
        for a, m in zip(jax.tree.leaves(together.params), jax.tree.leaves(masks)):
            assert not np.any(np.asarray(a[index])[~np.asarray(m)])  # pruned stay 0.0
