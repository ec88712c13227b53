"""SGD with momentum and weight decay, and step-indexed learning-rate schedules.

The optimizer produces the descent direction (PyTorch's SGD: d = momentum * d + g + wd * w); the
train step scales it by -lr, with lr passed in as an array each step. So one compiled step serves
every retrain, whichever step of the schedule it enters at (weight rewinding enters at step k).
"""

from __future__ import annotations

from typing import Callable, Sequence

import jax.numpy as jnp
import optax

Schedule = Callable[[int], float]


def sgd_direction(momentum: float, weight_decay: float) -> optax.GradientTransformation:
    """Weight decay added to the gradient, then heavy-ball momentum (no learning rate)."""
    return optax.chain(optax.add_decayed_weights(weight_decay), optax.trace(decay=momentum))


def step_schedule(base_lr: float, milestone_steps: Sequence[int], *, decay: float = 0.1,
                  warmup_steps: int = 0) -> Schedule:
    """lr(step): linear warm-up over `warmup_steps`, then x`decay` at each milestone step.

    Pure and step-indexed (works on Python ints and on traced arrays, so it is also an
    optax.Schedule): a retrain that enters at step k just asks for lr(k), lr(k+1), ...
    """
    milestones = tuple(int(m) for m in milestone_steps)

    def schedule(step):
        step = jnp.asarray(step)
        lr = jnp.asarray(base_lr, jnp.float32)
        if warmup_steps > 0:
            lr = lr * jnp.minimum(1.0, (step + 1) / warmup_steps)
        drops = sum((step >= m).astype(jnp.int32) for m in milestones) if milestones else 0
        return lr * decay ** drops

    return schedule


def constant_schedule(value: float) -> Schedule:
    """lr(step) = value (fine-tuning at the final learning rate)."""
    return lambda step: jnp.asarray(value, jnp.float32)
