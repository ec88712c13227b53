"""CIFAR ResNets (He et al. 2016, section 4.2) and the bottleneck variant of the KD-ticket release.

Basic-block ResNet-(6n+2) with 16/32/64 channels. Shortcuts use option B: identity when the shape
is unchanged, otherwise a 1x1 strided convolution + BatchNorm (as open_lth and the KD-ticket code
do). Those 1x1 kernels are convolutions, so the default pruning scope `conv` prunes them, matching
the Renda et al. / KD-ticket setting ("stem and 1x1 shortcuts included").

The bottleneck variant is the network the KD-ticket release builds for depth >= 54: the same
n = (depth - 2) / 6 blocks per stage, but each a bottleneck (planes 16/32/64, expansion 4, 256
output channels), so its "resnet110" has 3 x 18 bottleneck blocks (164 weighted layers, ~1.7M
parameters). Here it is `resnet56_bottleneck` and `resnet110_bottleneck`.
"""

from __future__ import annotations

from typing import Callable, Optional, Sequence

import jax.numpy as jnp
from flax import linen as nn

from lottery_kd.models.batch_norm import FusedBatchNorm
from lottery_kd.models.layers import BatchNorm, conv_init, relu_select


NORM_IMPLS: tuple[str, ...] = ("flax", "fused")


def check_norm_impl(norm_impl: str) -> None:
    if norm_impl not in NORM_IMPLS:
        raise ValueError(f"model.norm_impl={norm_impl!r} is invalid: allowed: "
                         f"{', '.join(NORM_IMPLS)}")


def make_norm(norm_impl: str, train: bool) -> Callable[[str], Callable]:
    """name -> a BatchNorm called as norm(y, residual=None, relu=False): relu(bn(y) + residual)."""
    check_norm_impl(norm_impl)
    if norm_impl == "fused":
        return lambda name: FusedBatchNorm(use_running_average=not train, name=name)

    def flax_norm(name: str) -> Callable:
        batch_norm = BatchNorm(use_running_average=not train, name=name)

        def apply(y: jnp.ndarray, residual: Optional[jnp.ndarray] = None,
                  relu: bool = False) -> jnp.ndarray:
            y = batch_norm(y)
            if residual is not None:
                return relu_select(residual + y) if relu else residual + y
            return nn.relu(y) if relu else y
        return apply
    return flax_norm


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with a residual connection."""

    channels: int
    stride: int = 1
    conv: Optional[Callable] = None  # conv_general_dilated for nn.Conv; None: XLA's
    norm_impl: str = "fused"  # see CifarResNet

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool) -> jnp.ndarray:
        norm = make_norm(self.norm_impl, train)
        y = nn.Conv(self.channels, (3, 3), (self.stride, self.stride), padding=1,
                    use_bias=False, kernel_init=conv_init, conv_general_dilated=self.conv,
                    name="conv1")(x)
        y = norm("bn1")(y, relu=True)
        y = nn.Conv(self.channels, (3, 3), padding=1, use_bias=False, kernel_init=conv_init,
                    conv_general_dilated=self.conv, name="conv2")(y)
        if self.stride != 1 or x.shape[-1] != self.channels:
            x = nn.Conv(self.channels, (1, 1), (self.stride, self.stride), use_bias=False,
                        kernel_init=conv_init, conv_general_dilated=self.conv,
                        name="shortcut_conv")(x)
            x = norm("shortcut_bn")(x)
        return norm("bn2")(y, residual=x, relu=True)


class BottleneckBlock(nn.Module):
    """1x1 reduce, 3x3, 1x1 expand (x4), with a residual connection."""

    planes: int
    stride: int = 1
    expansion: int = 4
    conv: Optional[Callable] = None  # conv_general_dilated for nn.Conv; None: XLA's
    norm_impl: str = "fused"  # see CifarResNet

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool) -> jnp.ndarray:
        norm = make_norm(self.norm_impl, train)
        out_channels = self.planes * self.expansion
        y = nn.Conv(self.planes, (1, 1), use_bias=False, kernel_init=conv_init,
                    conv_general_dilated=self.conv, name="conv1")(x)
        y = norm("bn1")(y, relu=True)
        y = nn.Conv(self.planes, (3, 3), (self.stride, self.stride), padding=1, use_bias=False,
                    kernel_init=conv_init, conv_general_dilated=self.conv, name="conv2")(y)
        y = norm("bn2")(y, relu=True)
        y = nn.Conv(out_channels, (1, 1), use_bias=False, kernel_init=conv_init,
                    conv_general_dilated=self.conv, name="conv3")(y)
        if self.stride != 1 or x.shape[-1] != out_channels:
            x = nn.Conv(out_channels, (1, 1), (self.stride, self.stride), use_bias=False,
                        kernel_init=conv_init, conv_general_dilated=self.conv,
                        name="shortcut_conv")(x)
            x = norm("shortcut_bn")(x)
        return norm("bn3")(y, residual=x, relu=True)


class CifarResNet(nn.Module):
    """Three stages of `blocks_per_stage` blocks at 16/32/64 channels (planes), then pool + fc."""

    blocks_per_stage: int
    num_classes: int = 10
    bottleneck: bool = False
    stage_widths: Sequence[int] = (16, 32, 64)
    # conv_general_dilated for every nn.Conv (lottery_kd.kernels.conv3x3); None: XLA's
    conv: Optional[Callable] = None
    # "flax": nn.BatchNorm, then the residual add and ReLU; "fused": FusedBatchNorm, the same
    # math with the add and ReLU inside and a hand-written backward pass (models/batch_norm.py)
    norm_impl: str = "fused"

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
        x = nn.Conv(self.stage_widths[0], (3, 3), padding=1, use_bias=False,
                    kernel_init=conv_init, conv_general_dilated=self.conv, name="stem_conv")(x)
        x = make_norm(self.norm_impl, train)("stem_bn")(x, relu=True)
        for stage, width in enumerate(self.stage_widths):
            for block in range(self.blocks_per_stage):
                stride = 2 if stage > 0 and block == 0 else 1
                name = f"stage{stage + 1}_block{block + 1}"
                block_type = BottleneckBlock if self.bottleneck else BasicBlock
                x = block_type(width, stride, conv=self.conv, norm_impl=self.norm_impl,
                               name=name)(x, train)
        x = jnp.mean(x, axis=(1, 2))
        return nn.Dense(self.num_classes, name="fc")(x)


def build_cifar_resnet(depth: int, num_classes: int, bottleneck: bool = False) -> CifarResNet:
    """ResNet-depth for CIFAR: n = (depth - 2) / 6 blocks per stage, basic or bottleneck."""
    if (depth - 2) % 6 or depth < 8:
        raise ValueError(f"a CIFAR ResNet needs depth = 6n+2 with n >= 1, got {depth}")
    return CifarResNet((depth - 2) // 6, num_classes, bottleneck)
