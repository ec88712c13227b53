"""Losses: cross-entropy and the distillation loss of the KD ticket."""

from __future__ import annotations

import jax
import jax.numpy as jnp

REDUCTIONS: tuple[str, ...] = ("batchmean", "mean")


def cross_entropy(logits: jnp.ndarray, labels: jnp.ndarray) -> jnp.ndarray:
    """Mean softmax cross-entropy of integer labels."""
    log_probs = jax.nn.log_softmax(logits)
    return -jnp.mean(jnp.take_along_axis(log_probs, labels[:, None], axis=-1))


def kd_loss(student_logits: jnp.ndarray, teacher_logits: jnp.ndarray, labels: jnp.ndarray, *,
            temperature: float, alpha: float, reduction: str = "batchmean") -> jnp.ndarray:
    """alpha * T^2 * KL(softmax(t/T) || softmax(s/T)) + (1 - alpha) * CE(s, labels).

    reduction="batchmean": KL summed over classes, averaged over the batch (Hinton et al.).
    reduction="mean": averaged over batch x classes, i.e. torch KLDivLoss's default, which the
    KD-ticket CIFAR code uses (it is the batchmean value divided by the number of classes).
    No gradient flows into the teacher.
    """
    if reduction not in REDUCTIONS:
        raise ValueError(f"kd.reduction: unknown reduction {reduction!r}; "
                         f"allowed: {', '.join(REDUCTIONS)}")
    teacher_logits = jax.lax.stop_gradient(teacher_logits)
    log_p_student = jax.nn.log_softmax(student_logits / temperature)
    log_p_teacher = jax.nn.log_softmax(teacher_logits / temperature)
    p_teacher = jnp.exp(log_p_teacher)
    pointwise = jnp.where(p_teacher > 0, p_teacher * (log_p_teacher - log_p_student), 0.0)
    kl = jnp.sum(pointwise) / student_logits.shape[0] if reduction == "batchmean" \
        else jnp.mean(pointwise)
    return alpha * temperature ** 2 * kl + (1.0 - alpha) * cross_entropy(student_logits, labels)
