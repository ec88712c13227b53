"""Model registry: `get_model(name, num_classes)` returns a Flax linen module.

Every model is called as `model.apply(variables, images, train=bool)` on NHWC float images and
returns logits; BatchNorm statistics live in the `batch_stats` collection.
"""

from __future__ import annotations

from typing import Callable

from flax import linen as nn

from lottery_kd.kernels.conv3x3 import CONV_IMPLS, make_conv_general_dilated  # noqa: F401
from lottery_kd.models.basis import BASES, BasisModel  # noqa: F401  (BASES: re-exported)
from lottery_kd.models.cifar_resnet import (NORM_IMPLS, CifarResNet,  # noqa: F401
                                           build_cifar_resnet, check_norm_impl)
from lottery_kd.models.imagenet_resnet import ImageNetResNet, build_imagenet_resnet
from lottery_kd.models.small import DigitsConvNet
from lottery_kd.models.vgg import build_vgg
from lottery_kd.models.vit import VisionTransformer
from lottery_kd.models.wide_resnet import build_wide_resnet

_BUILDERS: dict[str, Callable[[int], nn.Module]] = {
    "digits_convnet": lambda num_classes: DigitsConvNet(num_classes),
    **{f"resnet{depth}": (lambda num_classes, depth=depth: build_cifar_resnet(depth, num_classes))
       for depth in (20, 32, 44, 56, 110)},
    **{f"resnet{depth}_bottleneck": (
        lambda num_classes, depth=depth: build_cifar_resnet(depth, num_classes, bottleneck=True))
       for depth in (56, 110)},
    # torchvision's ImageNet ResNets (7x7 stem + max pool, 64..512 planes)
    "resnet18": lambda num_classes: build_imagenet_resnet(18, num_classes),
    "resnet50": lambda num_classes: build_imagenet_resnet(50, num_classes),
    # RigL's CIFAR network: pre-activation WideResNet-22-2 (models/wide_resnet.py)
    "wrn22_2": lambda num_classes: build_wide_resnet(22, 2, num_classes),
    # open_lth's CIFAR VGGs with BatchNorm (models/vgg.py)
    "vgg16": lambda num_classes: build_vgg(16, num_classes),
    "vgg19": lambda num_classes: build_vgg(19, num_classes),
    # a small ViT for 32x32 images: 4x4 patches, 192 wide, 9 blocks of 3 heads (models/vit.py)
    "vit_tiny": lambda num_classes: VisionTransformer(num_classes),
}

MODEL_NAMES: tuple[str, ...] = tuple(_BUILDERS)
# The models whose 3x3 convolutions model.conv_impl routes (the CIFAR ResNets); the others run
# XLA's convolutions whatever it says, so validation refuses the native/sparse kernels for them.
CONV_IMPL_MODELS: tuple[str, ...] = tuple(
    name for name, build in _BUILDERS.items() if isinstance(build(10), CifarResNet))
# The models whose matmul weights are Dense kernels in attention and MLP blocks: prune.scope
# vit_matmul selects those; conv and conv_no_shortcut would select the patch embedding alone.
TRANSFORMER_NAMES: tuple[str, ...] = ("vit_tiny",)


def scopes_for(name: str) -> tuple[str, ...]:
    """The named pruning scopes (sparsity.masks.SCOPES) that make sense for model `name`:
    `vit_matmul` and `conv_fc` (every kernel) for a transformer, the conv scopes otherwise."""
    if name in TRANSFORMER_NAMES:
        return ("vit_matmul", "conv_fc")
    return ("conv", "conv_no_shortcut", "conv_fc")


def get_model(name: str, num_classes: int, *, basis: str = "", basis_seed: int = 0,
              conv_impl: str = "auto", norm_impl: str = "fused") -> nn.Module:
    """Build the named model; raises ValueError listing the known names for an unknown one.

    With `basis` ("dct" or "random") the conv kernels are trained as coefficients in that
    orthonormal basis (lottery_kd.models.basis.BasisModel). `conv_impl` picks how the CIFAR
    ResNets run their 3x3 convolutions (lottery_kd.kernels.conv3x3: "auto", "xla", "native")
    and `norm_impl` the BatchNorms of the CIFAR and ImageNet ResNets ("flax" or "fused":
    lottery_kd.models.batch_norm). The ImageNet ResNets always use XLA's convolutions; the
    digits convnet, `wrn22_2`, `vgg16`, `vgg19` and `vit_tiny` XLA's convolutions and Flax's
    BatchNorm (vit_tiny has LayerNorms only), whatever `conv_impl` and `norm_impl` say (a
    study's validation refuses conv_impl native/sparse for them: CONV_IMPL_MODELS).
    """
    if name not in _BUILDERS:
        raise ValueError(f"model.name: unknown model {name!r}; allowed: {', '.join(MODEL_NAMES)}")
    check_norm_impl(norm_impl)
    if not isinstance(num_classes, int) or num_classes < 2:
        raise ValueError(f"num_classes must be an integer >= 2, got {num_classes!r}")
    conv = make_conv_general_dilated(conv_impl)
    model = _BUILDERS[name](num_classes)
    if isinstance(model, CifarResNet):
        model = model.clone(conv=conv, norm_impl=norm_impl)
    elif isinstance(model, ImageNetResNet):
        model = model.clone(norm_impl=norm_impl)
    return BasisModel(model, basis, basis_seed) if basis else model
