"""A small convnet for scikit-learn's bundled 8x8 digits: the quickstart's model."""

from __future__ import annotations

import jax.numpy as jnp
from flax import linen as nn

from lottery_kd.models.layers import BatchNorm, conv_init


class DigitsConvNet(nn.Module):
    """conv16 -> conv32 -> 2x2 pool -> conv64 -> global pool -> fc (each conv with BatchNorm)."""

    num_classes: int = 10

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
        for index, width in enumerate((16, 32, 64)):
            if index == 2:
                x = nn.avg_pool(x, (2, 2), (2, 2))
            x = nn.Conv(width, (3, 3), padding=1, use_bias=False, kernel_init=conv_init,
                        name=f"conv{index + 1}")(x)
            x = BatchNorm(use_running_average=not train, name=f"bn{index + 1}")(x)
            x = nn.relu(x)
        x = jnp.mean(x, axis=(1, 2))
        return nn.Dense(self.num_classes, name="fc")(x)
