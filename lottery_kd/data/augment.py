"""Deterministic batches on device: the batch at global step s is a pure function of (seed, s).

The epoch e = s // steps_per_epoch draws its permutation from fold_in(seed, e); crop offsets and
flips come from fold_in(seed, s). So a resumed run, or a retrain entering the schedule at step k,
sees exactly the batches an uninterrupted run sees from that step on (open_lth's rule).
"""

from __future__ import annotations

import functools
from typing import Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

PAD = 4


def normalize(images: jax.Array, mean: Optional[Sequence[float]],
              std: Optional[Sequence[float]]) -> jax.Array:
    """uint8 (or float) NHWC -> float32, per-channel (x - mean) / std, in pixel units.

    mean = std = None: per-image standardisation (TF's per_image_standardization, which Renda et
    al.'s code applies): each image minus its mean, over max(its std, 1 / sqrt(H * W * C)).
    """
    if mean is None or std is None:
        pixels = images.astype(jnp.float32)
        axes = tuple(range(1, pixels.ndim))
        centred = pixels - jnp.mean(pixels, axis=axes, keepdims=True)
        floor = 1.0 / np.sqrt(np.prod(pixels.shape[1:]))
        spread = jnp.sqrt(jnp.mean(centred * centred, axis=axes, keepdims=True))
        return centred / jnp.maximum(spread, floor)
    mean = jnp.asarray(mean, jnp.float32)
    std = jnp.asarray(std, jnp.float32)
    return (images.astype(jnp.float32) - mean) / std


def crop_and_flip(images: jax.Array, key: jax.Array) -> jax.Array:
    """Zero-pad by 4, take a random HxW crop and flip horizontally with p=0.5, per image."""
    offset_key, flip_key = jax.random.split(key)
    offsets = jax.random.randint(offset_key, (images.shape[0], 2), 0, 2 * PAD + 1)
    flips = jax.random.bernoulli(flip_key, 0.5, (images.shape[0],))
    return crop_and_flip_with(images, offsets, flips)


def crop_and_flip_with(images: jax.Array, offsets: jax.Array, flips: jax.Array) -> jax.Array:
    """Zero-pad by 4, crop at per-image `offsets` [n, 2] and flip where `flips` [n]."""
    _, h, w, _ = images.shape
    padded = jnp.pad(images, ((0, 0), (PAD, PAD), (PAD, PAD), (0, 0)))

    def one(image, offset, flip):
        crop = jax.lax.dynamic_slice(image, (offset[0], offset[1], 0), (h, w, image.shape[-1]))
        return jnp.where(flip, crop[:, ::-1, :], crop)

    return jax.vmap(one)(padded, offsets, flips)


@functools.partial(jax.jit, static_argnames=("num_examples",))
def epoch_permutation(seed: int | jax.Array, epoch: int | jax.Array,
                      num_examples: int) -> jax.Array:
    """The order in which epoch `epoch` visits the training examples."""
    return jax.random.permutation(jax.random.fold_in(jax.random.key(seed), epoch), num_examples)


def epoch_of(step: int | jax.Array, num_examples: int, batch_size: int) -> int | jax.Array:
    """The epoch that global `step` falls in (epochs drop the last partial batch)."""
    return step // (num_examples // batch_size)


def batch_indices(seed: int | jax.Array, step: int | jax.Array, num_examples: int,
                  batch_size: int) -> jax.Array:
    """Indices of the training batch at global `step` (epochs drop the last partial batch)."""
    epoch = epoch_of(jnp.asarray(step), num_examples, batch_size)
    return _slice_of(epoch_permutation(seed, epoch, num_examples=num_examples), step, batch_size)


def _slice_of(permutation: jax.Array, step: int | jax.Array, batch_size: int) -> jax.Array:
    position = jnp.asarray(step) % (permutation.shape[0] // batch_size)
    return jax.lax.dynamic_slice(permutation, (position * batch_size,), (batch_size,))


def train_batch(images: jax.Array, labels: jax.Array, seed: jax.Array, step: jax.Array, *,
                batch_size: int, augment: bool,
                rows: tuple[int, int] | None = None) -> tuple[jax.Array, jax.Array]:
    """(uint8 images, labels) of the training batch at global `step`, augmented on device.

    `rows=(first, count)` returns only those rows of the global batch (a process's share); crop
    offsets and flips are drawn for the whole global batch first, so every example is augmented
    the same way whatever the number of processes. Normalisation happens inside the train step.
    """
    epoch = epoch_of(jnp.asarray(step), labels.shape[0], batch_size)
    permutation = epoch_permutation(seed, epoch, num_examples=labels.shape[0])
    return batch_from_permutation(images, labels, permutation, seed, step, batch_size=batch_size,
                                  augment=augment, rows=rows)


@functools.partial(jax.jit, static_argnames=("batch_size", "augment", "rows"))
def batch_from_permutation(images: jax.Array, labels: jax.Array, permutation: jax.Array,
                           seed: jax.Array, step: jax.Array, *, batch_size: int, augment: bool,
                           rows: tuple[int, int] | None = None) -> tuple[jax.Array, jax.Array]:
    """train_batch given its epoch's permutation (epoch_permutation), which a caller computes
    once per epoch: shuffling 50,000 indices took 15-36 ms of every step (a tenth of a ticket's
    step on the CPU) when each step redrew its epoch's permutation."""
    index = _slice_of(permutation, step, batch_size)
    first, count = rows if rows is not None else (0, batch_size)
    if augment:
        # A stream separate from the permutation's: fold the step into a derived key.
        key = jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), 0x5EED), step)
        offset_key, flip_key = jax.random.split(key)
        offsets = jax.random.randint(offset_key, (batch_size, 2), 0, 2 * PAD + 1)
        flips = jax.random.bernoulli(flip_key, 0.5, (batch_size,))
        index, offsets, flips = (index[first:first + count], offsets[first:first + count],
                                 flips[first:first + count])
        return crop_and_flip_with(images[index], offsets, flips), labels[index]
    index = index[first:first + count]
    return images[index], labels[index]
