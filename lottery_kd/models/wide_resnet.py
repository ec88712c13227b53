"""Wide ResNets (Zagoruyko & Komodakis 2016) as RigL trains them on CIFAR-10 (Evci et al. 2020).

WRN-d-k: a 3x3 stem conv of 16 channels, then three groups of n = (d - 4) / 6 pre-activation
basic blocks at 16k, 32k and 64k channels (strides 1, 2, 2), a final BatchNorm-ReLU, global
average pooling and fc. Each block is BN-ReLU-conv3x3-BN-ReLU-conv3x3 plus the shortcut: the
identity where the shape is kept, else a 1x1 (strided) convolution of the block's pre-activated
input, as in the WRN reference code and RigL's `rigl/cifar_resnet/resnet_model.py`. `wrn22_2`
(n = 3, widths 32/64/128) has 1,079,642 parameters with a 10-class head.

Differences from RigL's TensorFlow model: no dropout (RigL's applies 0.3 between the two convs
of a block; lottery_kd's train step draws no dropout randomness), and He fan-out normal
initialisation of the convs (`layers.conv_init`, as for the other CIFAR networks) where RigL's
`tf.layers` default is Glorot uniform. Convolutions run on XLA and the BatchNorms are Flax's
(`layers.BatchNorm`: momentum 0.9, epsilon 1e-5, RigL's values too); model.conv_impl and
model.norm_impl do not apply.

The BatchNorms are named `norm1`, `norm2` and `final_norm`: each comes before a convolution, not
after it, so `lottery_kd.export` (which folds the BatchNorm that follows a conv into it, finding
it by name) refuses these networks instead of folding the wrong one.
"""

from __future__ import annotations

import jax.numpy as jnp
from flax import linen as nn

from lottery_kd.models.layers import BatchNorm, conv_init, relu_select


class PreActBlock(nn.Module):
    """BN-ReLU-conv3x3-BN-ReLU-conv3x3 with an identity or 1x1-projection shortcut."""

    channels: int
    stride: int = 1

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool) -> jnp.ndarray:
        activated = relu_select(BatchNorm(use_running_average=not train, name="norm1")(x))
        shortcut = x
        if self.stride != 1 or x.shape[-1] != self.channels:
            shortcut = nn.Conv(self.channels, (1, 1), (self.stride, self.stride),
                               use_bias=False, kernel_init=conv_init,
                               name="shortcut_conv")(activated)
        y = nn.Conv(self.channels, (3, 3), (self.stride, self.stride), padding=1,
                    use_bias=False, kernel_init=conv_init, name="conv1")(activated)
        y = relu_select(BatchNorm(use_running_average=not train, name="norm2")(y))
        y = nn.Conv(self.channels, (3, 3), padding=1, use_bias=False, kernel_init=conv_init,
                    name="conv2")(y)
        return y + shortcut


class WideResNet(nn.Module):
    """Stem conv, three groups of `blocks_per_group` pre-activation blocks at 16/32/64 x
    `width` channels, BN-ReLU, global average pool, fc."""

    blocks_per_group: int
    width: int
    num_classes: int = 10

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
        x = nn.Conv(16, (3, 3), padding=1, use_bias=False, kernel_init=conv_init,
                    name="stem_conv")(x)
        for group, base in enumerate((16, 32, 64)):
            for block in range(self.blocks_per_group):
                stride = 2 if group > 0 and block == 0 else 1
                x = PreActBlock(base * self.width, stride,
                                name=f"group{group + 1}_block{block + 1}")(x, train)
        x = relu_select(BatchNorm(use_running_average=not train, name="final_norm")(x))
        x = jnp.mean(x, axis=(1, 2))
        return nn.Dense(self.num_classes, name="fc")(x)


def build_wide_resnet(depth: int, width: int, num_classes: int) -> WideResNet:
    """WRN-depth-width: n = (depth - 4) / 6 pre-activation blocks per group."""
    if (depth - 4) % 6 or depth < 10 or width < 1:
        raise ValueError(f"a Wide ResNet needs depth = 6n+4 with n >= 1 and width >= 1, got "
                         f"depth {depth}, width {width}")
    return WideResNet((depth - 4) // 6, width, num_classes)
