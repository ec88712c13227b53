"""A small Vision Transformer for 32x32 images (Dosovitskiy et al. 2021, pre-LayerNorm).

`vit_tiny`: 4x4 patches (64 tokens) embedded to 192 channels by a strided convolution
(`patch_embed`), a class token (`cls_token`) and learned position embeddings (`pos_embed`), 9
encoder blocks of 3-head self-attention and an MLP of ratio 2 (GELU), then LayerNorm
(`final_norm`) and a linear `head` on the class token: 2,697,610 parameters with a 10-class
head. No dropout (the train step draws no dropout randomness) and no BatchNorm: the model has
an empty `batch_stats` collection.

Every block is x + attn(ln1(x)), then x + mlp(ln2(x)), where `attn` holds four plain nn.Dense
layers `query`, `key`, `value` and `out` (192 -> 192 each, heads split by reshaping) and `mlp`
holds `fc1` (192 -> 384) and `fc2` (384 -> 192). So every matmul weight is a 2-D `kernel` of a
module inside an `attn` or `mlp` module, which is what the pruning scope `vit_matmul`
(sparsity.masks) selects; the patch embedding, the tokens, the LayerNorms and the head lie
outside it. Dense kernels start as truncated normals of std 0.02 and biases at zero (timm's
ViT); the position embeddings as normals of std 0.02, the class token at zero.
"""

from __future__ import annotations

import jax.numpy as jnp
from flax import linen as nn

_dense_init = nn.initializers.truncated_normal(0.02)
_LN_EPSILON = 1e-6


def _dense(features: int, name: str) -> nn.Dense:
    return nn.Dense(features, kernel_init=_dense_init, name=name)


class SelfAttention(nn.Module):
    """Multi-head self-attention from separate query/key/value/out nn.Dense layers."""

    num_heads: int

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        batch, tokens, dim = x.shape
        head_dim = dim // self.num_heads

        def heads(y: jnp.ndarray) -> jnp.ndarray:  # [B, T, D] -> [B, H, T, D/H]
            return y.reshape(batch, tokens, self.num_heads, head_dim).transpose(0, 2, 1, 3)
        q, k, v = (heads(_dense(dim, name)(x)) for name in ("query", "key", "value"))
        weights = nn.softmax(jnp.einsum("bhqd,bhkd->bhqk", q, k) / jnp.sqrt(head_dim), axis=-1)
        mixed = jnp.einsum("bhqk,bhkd->bhqd", weights, v)
        return _dense(dim, "out")(mixed.transpose(0, 2, 1, 3).reshape(batch, tokens, dim))


class Mlp(nn.Module):
    hidden: int

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        return _dense(x.shape[-1], "fc2")(nn.gelu(_dense(self.hidden, "fc1")(x)))


class EncoderBlock(nn.Module):
    num_heads: int
    mlp_hidden: int

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        x = x + SelfAttention(self.num_heads, name="attn")(
            nn.LayerNorm(_LN_EPSILON, name="ln1")(x))
        return x + Mlp(self.mlp_hidden, name="mlp")(nn.LayerNorm(_LN_EPSILON, name="ln2")(x))


class VisionTransformer(nn.Module):
    """Patch embedding, class token + position embeddings, `depth` pre-LN encoder blocks,
    LayerNorm and a linear head on the class token."""

    num_classes: int = 10
    patch_size: int = 4
    dim: int = 192
    depth: int = 9
    num_heads: int = 3
    mlp_ratio: int = 2

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
        del train  # no dropout, no BatchNorm: the same function in training and inference
        if self.dim % self.num_heads:
            raise ValueError(f"dim {self.dim} is not a multiple of num_heads {self.num_heads}")
        patch = (self.patch_size, self.patch_size)
        x = nn.Conv(self.dim, patch, patch, padding="VALID", kernel_init=_dense_init,
                    name="patch_embed")(x)
        x = x.reshape(x.shape[0], -1, self.dim)
        cls = self.param("cls_token", nn.initializers.zeros, (1, 1, self.dim))
        x = jnp.concatenate([jnp.broadcast_to(cls, (x.shape[0], 1, self.dim)), x], axis=1)
        x = x + self.param("pos_embed", nn.initializers.normal(0.02), (1, *x.shape[1:]))
        for index in range(self.depth):
            x = EncoderBlock(self.num_heads, self.dim * self.mlp_ratio,
                             name=f"block{index + 1}")(x)
        x = nn.LayerNorm(_LN_EPSILON, name="final_norm")(x)
        return _dense(self.num_classes, "head")(x[:, 0])
