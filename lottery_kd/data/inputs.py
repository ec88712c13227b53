"""What the trainer reads: a training input (the batch at a global step) and evaluation inputs.

Inputs hand over uint8 NHWC images and int32 labels; the jitted steps normalise. In-memory inputs
(CIFAR, digits) keep the split on device and compute the batch at step s as a pure function of
(seed, s); streamed inputs (ImageNet, lottery_kd.data.imagenet) follow the same contract with
tf.data, so a resumed run or a retrain entering at step k sees the batches of an uninterrupted run.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Iterator, Optional, Protocol

import jax
import jax.numpy as jnp
import numpy as np

from lottery_kd.data import STREAMED_NAMES, Dataset, load_dataset
from lottery_kd.data.augment import batch_from_permutation, epoch_of, epoch_permutation

Batch = tuple[jax.Array, jax.Array]
EvalBatch = tuple[jax.Array, jax.Array, jax.Array]


class TrainInput(Protocol):
    num_examples: int

    def batch(self, step: int, batch_size: int) -> Batch:
        """This process's rows (uint8 images, int32 labels) of the global batch at `step`."""


class EvalInput(Protocol):
    num_examples: int
    batch_size: int  # global rows per batch

    def batches(self) -> Iterator[EvalBatch]:
        """This process's rows (uint8 images, int32 labels, bool valid) of fixed-shape global
        batches that cover the split; padding rows have valid=False."""


def _process_rows(batch_size: int, process_index: int, process_count: int) -> tuple[int, int]:
    per_process = batch_size // process_count
    return process_index * per_process, per_process


class InMemoryTrainInput:
    """A training split on device; batches drawn by lottery_kd.data.augment.train_batch.

    Every process holds the split and computes the same global batch indices; it gathers and
    augments only its own rows.
    """

    def __init__(self, images: np.ndarray, labels: np.ndarray, *, seed: int, augment: bool,
                 process_index: int = 0, process_count: int = 1):
        self.images = jnp.asarray(images, jnp.uint8)
        self.labels = jnp.asarray(labels, jnp.int32)
        self.num_examples = int(len(labels))
        self.seed = seed
        self.augment = augment
        self.process_index, self.process_count = process_index, process_count
        self._epoch_order: Optional[tuple[int, jax.Array]] = None

    def batch(self, step: int, batch_size: int) -> Batch:
        rows = _process_rows(batch_size, self.process_index, self.process_count)
        seed = jnp.asarray(self.seed, jnp.uint32)
        return batch_from_permutation(self.images, self.labels,
                                      self._permutation(step, batch_size), seed,
                                      jnp.asarray(step, jnp.int32), batch_size=batch_size,
                                      augment=self.augment, rows=rows)

    def _permutation(self, step: int, batch_size: int) -> jax.Array:
        """The epoch's permutation, drawn once per epoch, not once per step."""
        epoch = epoch_of(int(step), self.num_examples, batch_size)
        if self._epoch_order is None or self._epoch_order[0] != epoch:
            order = epoch_permutation(jnp.asarray(self.seed, jnp.uint32),
                                      jnp.asarray(epoch, jnp.int32),
                                      num_examples=self.num_examples)
            self._epoch_order = (epoch, order)
        return self._epoch_order[1]

class InMemoryEvalInput:
    """An evaluation split on device, padded once to whole batches.

    The batch size is rounded up to a multiple of `multiple_of` (the device count) so that every
    batch shards evenly; padding rows are marked invalid.
    """

    def __init__(self, images: np.ndarray, labels: np.ndarray, batch_size: int, *,
                 multiple_of: int = 1, process_index: int = 0, process_count: int = 1):
        size = len(labels)
        batch_size = max(1, min(batch_size, size))
        batch_size = math.ceil(batch_size / multiple_of) * multiple_of
        self.batch_size = batch_size
        self._rows = _process_rows(batch_size, process_index, process_count)
        num_batches = math.ceil(size / batch_size)
        pad = num_batches * batch_size - size
        padded_images = np.concatenate([images, np.zeros((pad, *images.shape[1:]), images.dtype)])
        padded_labels = np.concatenate([labels, np.zeros(pad, labels.dtype)])
        shape = lambda a: a.reshape(num_batches, batch_size, *a.shape[1:])  # noqa: E731
        self.images = jnp.asarray(shape(padded_images), jnp.uint8)
        self.labels = jnp.asarray(shape(padded_labels), jnp.int32)
        self.valid = jnp.asarray(shape(np.arange(num_batches * batch_size) < size))
        self.num_examples = size

    def batches(self) -> Iterator[EvalBatch]:
        rows = slice(self._rows[0], self._rows[0] + self._rows[1])
        for index in range(self.images.shape[0]):
            yield self.images[index, rows], self.labels[index, rows], self.valid[index, rows]


@dataclasses.dataclass(frozen=True)
class InputData:
    """Everything the trainer reads: train input, evaluation inputs and normalisation."""

    train: TrainInput
    val: Optional[EvalInput]
    test: EvalInput
    mean: Optional[tuple[float, ...]]  # None: per-image standardisation (augment.normalize)
    std: Optional[tuple[float, ...]]
    image_shape: tuple[int, ...]
    num_classes: int

    @classmethod
    def from_dataset(cls, dataset: Dataset, *, seed: int, eval_batch_size: int = 1000,
                     device_count: int = 1, process_index: int = 0,
                     process_count: int = 1) -> "InputData":
        """An in-memory dataset placed on device (each process reads its share of batches)."""
        shares = dict(process_index=process_index, process_count=process_count)
        evaluation = dict(multiple_of=device_count, **shares)
        val = (InMemoryEvalInput(dataset.val_images, dataset.val_labels, eval_batch_size,
                                 **evaluation)
               if len(dataset.val_labels) else None)
        return cls(InMemoryTrainInput(dataset.train_images, dataset.train_labels, seed=seed,
                                      augment=dataset.augment, **shares), val,
                   InMemoryEvalInput(dataset.test_images, dataset.test_labels, eval_batch_size,
                                     **evaluation),
                   _tuple_or_none(dataset.mean), _tuple_or_none(dataset.std),
                   tuple(dataset.train_images.shape[1:]), dataset.num_classes)


def _tuple_or_none(values: Optional[Any]) -> Optional[tuple[float, ...]]:
    return None if values is None else tuple(values)


def input_data_from_config(data: Any, *, seed: int, device_count: int = 1) -> InputData:
    """The InputData a `config.data` section describes (in memory, or streamed for ImageNet).

    Each process reads its own share of every batch; evaluation batches are rounded up to a
    multiple of `device_count`.
    """
    if data.name in STREAMED_NAMES:
        from lottery_kd.data import imagenet
        common = dict(name=data.name, data_dir=data.tfds_data_dir or None,
                      manual_dir=data.manual_dir or None, download=data.tfds_download,
                      process_index=jax.process_index(), process_count=jax.process_count())
        split = f"train[:{data.train_subset}]" if data.train_subset else "train"
        train = imagenet.ImageNetTrainInput(
            split=split, seed=seed, image_size=data.image_size,
            crop_scale=imagenet.parse_range(data.crop_scale),
            crop_ratio=imagenet.parse_range(data.crop_ratio), **common)
        test = imagenet.ImageNetEvalInput(split="validation", image_size=data.image_size,
                                          batch_size=data.eval_batch_size, **common)
        return InputData(train, None, test, tuple(imagenet.MEAN_RGB), tuple(imagenet.STD_RGB),
                         (data.image_size, data.image_size, 3), train.num_classes)
    dataset = load_dataset(data.name, source=data.source, directory=data.dir,
                           validation_size=data.validation_size,
                           validation_split=data.validation_split,
                           normalization=data.normalization, train_subset=data.train_subset,
                           tfds_data_dir=data.tfds_data_dir, tfds_download=data.tfds_download,
                           verify_checksums=data.verify_checksums)
    return InputData.from_dataset(dataset, seed=seed, eval_batch_size=data.eval_batch_size,
                                  device_count=device_count, process_index=jax.process_index(),
                                  process_count=jax.process_count())
