"""The CIFAR VGGs with BatchNorm of the lottery-ticket papers (open_lth's cifar_vgg_16 / _19).

Each number of the plan is a 3x3 convolution (padding 1) + BatchNorm + ReLU, each `M` a 2x2 max
pool; after the last stage (2x2 at 32x32 inputs) an average pool to 1x1 and a single linear layer
512 -> classes:

    vgg16: 64 64 M 128 128 M 256 256 256 M 512 512 512 M 512 512 512
    vgg19: 64 64 M 128 128 M 256 256 256 256 M 512 512 512 512 M 512 512 512 512

Parameters with a 10-class head: vgg16 14,724,042, vgg19 20,035,018. open_lth's convolutions
carry a bias too (4,224 / 5,504 more parameters); here they have none, as every convolution
followed by a BatchNorm in lottery_kd: the BatchNorm subtracts the batch mean, so such a bias
gets no gradient and stays where it started, and the conv/BatchNorm pairs then fold exactly in
`lottery_kd.export`. Convolutions use He fan-out normal initialisation (`layers.conv_init`;
open_lth: He fan-in), run on XLA, and the BatchNorms are Flax's (`layers.BatchNorm`);
model.conv_impl and model.norm_impl do not apply. Layers are named conv1..convN and bn1..bnN in
order, then `fc`.

On maps of 2x2 or smaller (the last stage at 32x32 inputs) the convolutions run as one matmul
over the 9 shifted copies of the padded input (`small_map_conv`): XLA's CPU convolution runs a
128 x 2x2 x 512 -> 512 3x3 layer at 0.7 GFLOP/s (3.4 s forward) where the matmul is fast, and the
VGG-16 step spent most of its time in those three layers.
"""

from __future__ import annotations

from typing import Any, Sequence, Union

import jax
import jax.numpy as jnp
from flax import linen as nn

from lottery_kd.models.layers import BatchNorm, conv_init

Plan = Sequence[Union[int, str]]
PLANS: dict[int, Plan] = {
    16: (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512),
    19: (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M",
         512, 512, 512, 512),
}
SMALL_MAP = 4  # pixels (2x2) at or below which small_map_conv takes the matmul path


def small_map_conv(lhs: jnp.ndarray, rhs: jnp.ndarray, window_strides: Sequence[int],
                   padding: Any, *args: Any, **kwargs: Any) -> jnp.ndarray:
    """`lax.conv_general_dilated` for nn.Conv, except a stride-1 3x3 NHWC/HWIO convolution
    with padding 1 on a map of at most SMALL_MAP pixels, which is computed as one matmul of the
    9 shifted copies of the padded input with the (9 x in, out) kernel: the same sum."""
    spatial = lhs.shape[1] * lhs.shape[2]
    plain = (rhs.shape[:2] != (3, 3) or tuple(window_strides) != (1, 1) or spatial > SMALL_MAP
             or [tuple(p) for p in padding] != [(1, 1), (1, 1)] or args
             or any(kwargs.get(k) not in (None, 1, (1, 1)) for k in
                    ("lhs_dilation", "rhs_dilation", "feature_group_count",
                     "batch_group_count")))
    if plain:
        return jax.lax.conv_general_dilated(lhs, rhs, window_strides, padding, *args, **kwargs)
    n, h, w, c = lhs.shape
    padded = jnp.pad(lhs, ((0, 0), (1, 1), (1, 1), (0, 0)))
    shifted = jnp.stack([padded[:, i:i + h, j:j + w, :] for i in range(3) for j in range(3)],
                        axis=3)  # (n, h, w, 9, c): the kernel's HWIO order, row-major
    out = jnp.dot(shifted.reshape(n * h * w, 9 * c), rhs.reshape(9 * c, rhs.shape[3]),
                  precision=kwargs.get("precision"))
    return out.reshape(n, h, w, rhs.shape[3])


class CifarVGG(nn.Module):
    """conv-BN-ReLU layers and max pools as `plan` says, global average pool, fc."""

    plan: Plan
    num_classes: int = 10

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
        index = 0
        for spec in self.plan:
            if spec == "M":
                x = nn.max_pool(x, (2, 2), (2, 2))
                continue
            index += 1
            x = nn.Conv(int(spec), (3, 3), padding=1, use_bias=False, kernel_init=conv_init,
                        conv_general_dilated=small_map_conv, name=f"conv{index}")(x)
            x = nn.relu(BatchNorm(use_running_average=not train, name=f"bn{index}")(x))
        x = jnp.mean(x, axis=(1, 2))  # open_lth: AvgPool2d(2) of the 2x2 map, then flatten
        return nn.Dense(self.num_classes, name="fc")(x)


def build_vgg(depth: int, num_classes: int) -> CifarVGG:
    if depth not in PLANS:
        raise ValueError(f"a CIFAR VGG has depth {' or '.join(map(str, PLANS))}, got {depth}")
    return CifarVGG(PLANS[depth], num_classes)
