"""Tests for training.losses and training.optim against hand-written float64 numpy."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lottery_kd.training import losses, optim

# --------------------------------------------------------------------------------------------
# numpy references


def np_log_softmax(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float64)
    shifted = x - x.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def np_cross_entropy(logits, labels) -> float:
    log_p = np_log_softmax(logits)
    return float(-np.mean(log_p[np.arange(len(labels)), labels]))


def np_kd_loss(student, teacher, labels, temperature, alpha, reduction) -> float:
    log_ps = np_log_softmax(np.asarray(student, np.float64) / temperature)
    log_pt = np_log_softmax(np.asarray(teacher, np.float64) / temperature)
    pt = np.exp(log_pt)
    pointwise = np.where(pt > 0, pt * (log_pt - log_ps), 0.0)  # KL(teacher || student)
    batch, classes = pointwise.shape
    if reduction == "batchmean":
        kl = pointwise.sum() / batch
    else:  # "mean"
        kl = pointwise.sum() / (batch * classes)
    return float(alpha * temperature ** 2 * kl + (1 - alpha) * np_cross_entropy(student, labels))


def logits_batch(seed: int, batch: int = 8, classes: int = 10, scale: float = 3.0):
    rng = np.random.default_rng(seed)
    student = (scale * rng.standard_normal((batch, classes))).astype(np.float32)
    teacher = (scale * rng.standard_normal((batch, classes))).astype(np.float32)
    labels = rng.integers(0, classes, batch).astype(np.int32)
    return student, teacher, labels


# --------------------------------------------------------------------------------------------
# losses


def test_cross_entropy_matches_numpy():
    for seed in range(3):
        student, _, labels = logits_batch(seed)
        got = float(losses.cross_entropy(jnp.asarray(student), jnp.asarray(labels)))
        assert got == pytest.approx(np_cross_entropy(student, labels), rel=1e-6, abs=1e-6)


def test_cross_entropy_hand_value():
    # logits [0, 0] label 0: CE = log 2; logits [log 3, 0] label 0: CE = -log(3/4)
    logits = jnp.asarray([[0.0, 0.0], [np.log(3.0), 0.0]], jnp.float32)
    labels = jnp.asarray([0, 0])
    expected = (np.log(2.0) - np.log(0.75)) / 2
    assert float(losses.cross_entropy(logits, labels)) == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("reduction", ["batchmean", "mean"])
@pytest.mark.parametrize("temperature,alpha", [(1.0, 0.5), (4.0, 0.9), (5.0, 0.9), (2.5, 1.0),
                                               (0.5, 0.3), (10.0, 0.1)])
def test_kd_loss_matches_numpy(reduction, temperature, alpha):
    student, teacher, labels = logits_batch(int(temperature * 10 + alpha * 100))
    got = float(losses.kd_loss(jnp.asarray(student), jnp.asarray(teacher), jnp.asarray(labels),
                               temperature=temperature, alpha=alpha, reduction=reduction))
    expected = np_kd_loss(student, teacher, labels, temperature, alpha, reduction)
    assert got == pytest.approx(expected, rel=1e-5, abs=1e-5)


def test_kd_loss_default_reduction_is_batchmean():
    student, teacher, labels = logits_batch(11)
    got = float(losses.kd_loss(jnp.asarray(student), jnp.asarray(teacher), jnp.asarray(labels),
                               temperature=4.0, alpha=0.9))
    assert got == pytest.approx(np_kd_loss(student, teacher, labels, 4.0, 0.9, "batchmean"),
                                rel=1e-5, abs=1e-5)


def test_kd_mean_is_batchmean_over_classes():
    student, teacher, labels = logits_batch(12, classes=7)
    kw = dict(temperature=3.0, alpha=1.0)
    s, t, y = jnp.asarray(student), jnp.asarray(teacher), jnp.asarray(labels)
    batchmean = float(losses.kd_loss(s, t, y, reduction="batchmean", **kw))
    mean = float(losses.kd_loss(s, t, y, reduction="mean", **kw))
    assert mean == pytest.approx(batchmean / 7, rel=1e-5)


def test_kd_loss_zero_when_student_equals_teacher_and_alpha_one():
    student, _, labels = logits_batch(13)
    got = float(losses.kd_loss(jnp.asarray(student), jnp.asarray(student), jnp.asarray(labels),
                               temperature=4.0, alpha=1.0))
    assert abs(got) < 1e-5


@pytest.mark.parametrize("reduction", ["batchmean", "mean"])
def test_kd_alpha_zero_is_cross_entropy(reduction):
    student, teacher, labels = logits_batch(14)
    s, t, y = jnp.asarray(student), jnp.asarray(teacher), jnp.asarray(labels)
    kd = float(losses.kd_loss(s, t, y, temperature=4.0, alpha=0.0, reduction=reduction))
    assert kd == pytest.approx(float(losses.cross_entropy(s, y)), rel=1e-7, abs=1e-7)
    assert kd == pytest.approx(np_cross_entropy(student, labels), rel=1e-6)


@pytest.mark.parametrize("reduction", ["batchmean", "mean"])
def test_no_gradient_to_teacher(reduction):
    student, teacher, labels = logits_batch(15)
    s, t, y = jnp.asarray(student), jnp.asarray(teacher), jnp.asarray(labels)

    def loss(student_logits, teacher_logits):
        return losses.kd_loss(student_logits, teacher_logits, y, temperature=4.0, alpha=0.9,
                              reduction=reduction)

    grad_student, grad_teacher = jax.grad(loss, argnums=(0, 1))(s, t)
    np.testing.assert_array_equal(np.asarray(grad_teacher), np.zeros_like(teacher))
    assert np.abs(np.asarray(grad_student)).max() > 1e-4  # the student does get a gradient


def test_kd_loss_saturated_teacher_is_finite():
    """A teacher probability that underflows to 0 contributes 0 (0 * log 0 = 0), not NaN."""
    student = jnp.asarray([[0.0, 1.0, 2.0], [3.0, -1.0, 0.5]], jnp.float32)
    teacher = jnp.asarray([[2000.0, 0.0, 0.0], [0.0, -2000.0, 5.0]], jnp.float32)
    labels = jnp.asarray([0, 2])
    value, grad = jax.value_and_grad(lambda s: losses.kd_loss(
        s, teacher, labels, temperature=2.0, alpha=0.9))(student)
    assert np.isfinite(float(value))
    assert np.all(np.isfinite(np.asarray(grad)))
    expected = np_kd_loss(np.asarray(student), np.asarray(teacher), np.asarray(labels), 2.0, 0.9,
                          "batchmean")
    assert float(value) == pytest.approx(expected, rel=1e-5, abs=1e-5)


@pytest.mark.parametrize("reduction", ["sum", "none", "BatchMean"])
def test_kd_unknown_reduction(reduction):
    student, teacher, labels = logits_batch(16)
    with pytest.raises(ValueError) as info:
        losses.kd_loss(jnp.asarray(student), jnp.asarray(teacher), jnp.asarray(labels),
                       temperature=4.0, alpha=0.9, reduction=reduction)
    assert "kd.reduction" in str(info.value)
    assert "batchmean" in str(info.value) and "mean" in str(info.value)


# --------------------------------------------------------------------------------------------
# schedules


def lr_at(schedule, step) -> float:
    return float(schedule(step))


def test_step_schedule_milestones():
    schedule = optim.step_schedule(0.1, (10, 20))
    expected = {0: 0.1, 1: 0.1, 9: 0.1, 10: 0.01, 11: 0.01, 19: 0.01, 20: 0.001, 21: 0.001,
                1000: 0.001}
    for step, value in expected.items():
        assert lr_at(schedule, step) == pytest.approx(value, rel=1e-6), step


def test_step_schedule_custom_decay_and_no_milestones():
    schedule = optim.step_schedule(0.8, [3, 5, 7], decay=0.5)
    values = [lr_at(schedule, s) for s in range(9)]
    np.testing.assert_allclose(values, [0.8, 0.8, 0.8, 0.4, 0.4, 0.2, 0.2, 0.1, 0.1], rtol=1e-6)
    flat = optim.step_schedule(0.3, ())
    assert [lr_at(flat, s) for s in (0, 5, 10**6)] == pytest.approx([0.3] * 3, rel=1e-6)


def test_step_schedule_warmup():
    # linear warm-up over 4 steps: lr(s) = base * (s + 1) / 4 for s < 4, then base until 10
    schedule = optim.step_schedule(0.2, (10,), warmup_steps=4)
    expected = [0.05, 0.1, 0.15, 0.2, 0.2, 0.2, 0.2, 0.2, 0.2, 0.2, 0.02, 0.02]
    values = [lr_at(schedule, s) for s in range(12)]
    np.testing.assert_allclose(values, expected, rtol=1e-6)
    assert all(b >= a for a, b in zip(values[:4], values[1:5]))  # warm-up is non-decreasing


def test_step_schedule_is_pure_in_global_step():
    """Entering at step k gives lr(k): no hidden state, same on ints, arrays and under jit."""
    schedule = optim.step_schedule(0.1, (30, 60), warmup_steps=5)
    from_zero = [lr_at(schedule, s) for s in range(80)]
    for k in (0, 3, 29, 30, 45, 60, 79):
        entered = [lr_at(schedule, s) for s in range(k, 80)]
        assert entered == from_zero[k:]
    jitted = jax.jit(schedule)
    for k in (79, 0, 31, 4):  # out of order
        assert float(jitted(jnp.asarray(k))) == pytest.approx(from_zero[k], rel=1e-7)
        assert lr_at(schedule, np.int32(k)) == pytest.approx(from_zero[k], rel=1e-7)


def test_constant_schedule():
    schedule = optim.constant_schedule(0.001)
    for step in (0, 1, 17, 10**6):
        assert lr_at(schedule, step) == pytest.approx(0.001, rel=1e-6)
    assert float(jax.jit(schedule)(jnp.asarray(5))) == pytest.approx(0.001, rel=1e-6)


# --------------------------------------------------------------------------------------------
# SGD direction + training/steps.py's update rule (w <- w - lr * d) == PyTorch SGD


def sgd_jax(w0, grads, lr, momentum, weight_decay):
    """optim.sgd_direction + the update rule of lottery_kd.training.steps.make_train_step."""
    opt = optim.sgd_direction(momentum, weight_decay)
    params = {"w": jnp.asarray(w0, jnp.float32)}
    state = opt.init(params)
    history = []
    for g in grads:
        direction, state = opt.update({"w": jnp.asarray(g, jnp.float32)}, state, params)
        params = jax.tree.map(lambda p, d: p - lr * d, params, direction)
        history.append(np.asarray(params["w"]))
    return history


def test_sgd_hand_computed_scalar():
    # w=1, g=0.5 each step, momentum 0.9, wd 0.1, lr 0.1 (by hand):
    # d1 = 0.5 + 0.1*1 = 0.6,                    w1 = 1 - 0.06 = 0.94
    # d2 = 0.9*0.6 + 0.5 + 0.094 = 1.134,        w2 = 0.94 - 0.1134 = 0.8266
    # d3 = 0.9*1.134 + 0.5 + 0.08266 = 1.60326,  w3 = 0.8266 - 0.160326 = 0.666274
    history = sgd_jax([1.0], [[0.5]] * 3, lr=0.1, momentum=0.9, weight_decay=0.1)
    np.testing.assert_allclose([h[0] for h in history], [0.94, 0.8266, 0.666274], rtol=1e-6)


@pytest.mark.parametrize("momentum,weight_decay,lr", [(0.9, 5e-4, 0.1), (0.0, 0.0, 0.5),
                                                      (0.5, 1e-2, 0.05), (0.99, 0.0, 0.01)])
def test_sgd_matches_pytorch_rule(momentum, weight_decay, lr):
    rng = np.random.default_rng(0)
    w = rng.standard_normal(5)
    grads = [rng.standard_normal(5) for _ in range(3)]
    # PyTorch SGD (dampening 0, no nesterov): d = m*d + g + wd*w ; w -= lr*d ; d starts at 0
    expected, d, w_np = [], np.zeros(5), w.copy()
    for g in grads:
        d = momentum * d + g + weight_decay * w_np
        w_np = w_np - lr * d
        expected.append(w_np.copy())
    history = sgd_jax(w.astype(np.float32), [g.astype(np.float32) for g in grads], lr, momentum,
                      weight_decay)
    for got, want in zip(history, expected):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
