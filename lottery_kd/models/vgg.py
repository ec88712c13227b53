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
"""

from __future__ import annotations

from typing import Sequence, Union

import jax.numpy as jnp
from flax import linen as nn

from lottery_kd.models.layers import BatchNorm, conv_init

Plan = Sequence[Union[int, str]]
PLANS: dict[int, Plan] = {
    16: (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512),
    19: (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M",
         512, 512, 512, 512),
}


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
                        name=f"conv{index}")(x)
            x = nn.relu(BatchNorm(use_running_average=not train, name=f"bn{index}")(x))
        x = jnp.mean(x, axis=(1, 2))  # open_lth: AvgPool2d(2) of the 2x2 map, then flatten
        return nn.Dense(self.num_classes, name="fc")(x)


def build_vgg(depth: int, num_classes: int) -> CifarVGG:
    if depth not in PLANS:
        raise ValueError(f"a CIFAR VGG has depth {' or '.join(map(str, PLANS))}, got {depth}")
    return CifarVGG(PLANS[depth], num_classes)
