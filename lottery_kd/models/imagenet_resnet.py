"""ImageNet ResNets as torchvision builds them: resnet18 (basic blocks) and resnet50 (bottleneck).

Stem: 7x7/2 convolution (64 channels) + BatchNorm + ReLU + 3x3/2 max pool; four stages at
64/128/256/512 planes with a stride of 2 entering stages 2-4; global average pool; Dense fc. The
bottleneck puts its stride on the 3x3 convolution ("ResNet v1.5", torchvision's choice). Shortcuts
are identity when the shape is unchanged, otherwise a 1x1 strided convolution + BatchNorm, so the
`conv` pruning scope prunes them, as it does the stem. No convolution has a bias.

The residual blocks are the ones of `cifar_resnet` (same layer names, same select-ReLU closing each
block): with torchvision's stem and widths they are exactly torchvision's BasicBlock/Bottleneck.
Parameter counts with 1000 classes: resnet18 11,689,512 and resnet50 25,557,032, as torchvision.
"""

from __future__ import annotations

from typing import Sequence

import jax.numpy as jnp
from flax import linen as nn

from lottery_kd.models.cifar_resnet import BasicBlock, BottleneckBlock, make_norm
from lottery_kd.models.layers import conv_init

# depth -> (blocks per stage, bottleneck?)
IMAGENET_DEPTHS: dict[int, tuple[tuple[int, ...], bool]] = {
    18: ((2, 2, 2, 2), False),
    34: ((3, 4, 6, 3), False),
    50: ((3, 4, 6, 3), True),
    101: ((3, 4, 23, 3), True),
    152: ((3, 8, 36, 3), True),
}


class ImageNetResNet(nn.Module):
    """Stem, four stages of residual blocks (planes 64/128/256/512), global pool, fc."""

    stage_sizes: Sequence[int]
    num_classes: int = 1000
    bottleneck: bool = False
    stage_widths: Sequence[int] = (64, 128, 256, 512)
    norm_impl: str = "fused"  # every BatchNorm, stem included (models.batch_norm)

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
        x = nn.Conv(self.stage_widths[0], (7, 7), (2, 2), padding=((3, 3), (3, 3)),
                    use_bias=False, kernel_init=conv_init, name="stem_conv")(x)
        x = make_norm(self.norm_impl, train)("stem_bn")(x, relu=True)
        x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
        for stage, (num_blocks, width) in enumerate(zip(self.stage_sizes, self.stage_widths)):
            for block in range(num_blocks):
                stride = 2 if stage > 0 and block == 0 else 1
                name = f"stage{stage + 1}_block{block + 1}"
                if self.bottleneck:
                    x = BottleneckBlock(width, stride, norm_impl=self.norm_impl,
                                        name=name)(x, train)
                else:
                    x = BasicBlock(width, stride, norm_impl=self.norm_impl, name=name)(x, train)
        x = jnp.mean(x, axis=(1, 2))
        return nn.Dense(self.num_classes, name="fc")(x)


def build_imagenet_resnet(depth: int, num_classes: int) -> ImageNetResNet:
    """torchvision's ResNet-depth (18/34 basic blocks, 50/101/152 bottleneck) for NHWC images."""
    if depth not in IMAGENET_DEPTHS:
        raise ValueError(f"an ImageNet ResNet depth must be one of {sorted(IMAGENET_DEPTHS)}, "
                         f"got {depth}")
    stage_sizes, bottleneck = IMAGENET_DEPTHS[depth]
    return ImageNetResNet(stage_sizes, num_classes, bottleneck)
