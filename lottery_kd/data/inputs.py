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
from lottery_kd.data.augment import train_batch

Batch = tuple[jax.Array, jax.Array]
EvalBatch = tuple[jax.Array, jax.Array, jax.Array]


class TrainInput(Protocol):
    num_examples: int

    def batch(self, step: int, batch_size: int) -> Batch:
        """(uint8 images, int32 labels) of the training batch at global `step`."""


class EvalInput(Protocol):
    num_examples: int

    def batches(self) -> Iterator[EvalBatch]:
        """(uint8 images, int32 labels, bool valid) batches of a fixed shape covering the split."""


class InMemoryTrainInput:
    """A training split on device; batches drawn by lottery_kd.data.augment.train_batch."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, *, seed: int, augment: bool):
        self.images = jnp.asarray(images, jnp.uint8)
        self.labels = jnp.asarray(labels, jnp.int32)
        self.num_examples = int(len(labels))
        self.seed = seed
        self.augment = augment

    def batch(self, step: int, batch_size: int) -> Batch:
        return train_batch(self.images, self.labels, jnp.asarray(self.seed, jnp.uint32),
                           jnp.asarray(step, jnp.int32), batch_size=batch_size,
                           augment=self.augment)


class InMemoryEvalInput:
    """An evaluation split on device, padded once to whole batches."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, batch_size: int):
        size = len(labels)
        batch_size = max(1, min(batch_size, size))
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
        for index in range(self.images.shape[0]):
            yield self.images[index], self.labels[index], self.valid[index]


@dataclasses.dataclass(frozen=True)
class InputData:
    """Everything the trainer reads: train input, evaluation inputs and normalisation."""

    train: TrainInput
    val: Optional[EvalInput]
    test: EvalInput
    mean: tuple[float, ...]
    std: tuple[float, ...]
    image_shape: tuple[int, ...]
    num_classes: int

    @classmethod
    def from_dataset(cls, dataset: Dataset, *, seed: int,
                     eval_batch_size: int = 1000) -> "InputData":
        """An in-memory dataset placed on device."""
        val = (InMemoryEvalInput(dataset.val_images, dataset.val_labels, eval_batch_size)
               if len(dataset.val_labels) else None)
        return cls(InMemoryTrainInput(dataset.train_images, dataset.train_labels, seed=seed,
                                      augment=dataset.augment), val,
                   InMemoryEvalInput(dataset.test_images, dataset.test_labels, eval_batch_size),
                   tuple(dataset.mean), tuple(dataset.std),
                   tuple(dataset.train_images.shape[1:]), dataset.num_classes)


def input_data_from_config(data: Any, *, seed: int) -> InputData:
    """The InputData a `config.data` section describes (in memory, or streamed for ImageNet)."""
    if data.name in STREAMED_NAMES:
        from lottery_kd.data import imagenet
        common = dict(name=data.name, data_dir=data.tfds_data_dir or None,
                      manual_dir=data.manual_dir or None, download=data.tfds_download,
                      process_index=jax.process_index(), process_count=jax.process_count())
        split = f"train[:{data.train_subset}]" if data.train_subset else "train"
        train = imagenet.ImageNetTrainInput(split=split, seed=seed, image_size=data.image_size,
                                            **common)
        test = imagenet.ImageNetEvalInput(split="validation", image_size=data.image_size,
                                          batch_size=data.eval_batch_size, **common)
        return InputData(train, None, test, tuple(imagenet.MEAN_RGB), tuple(imagenet.STD_RGB),
                         (data.image_size, data.image_size, 3), train.num_classes)
    dataset = load_dataset(data.name, source=data.source, directory=data.dir,
                           validation_size=data.validation_size, train_subset=data.train_subset,
                           tfds_data_dir=data.tfds_data_dir, tfds_download=data.tfds_download,
                           verify_checksums=data.verify_checksums)
    return InputData.from_dataset(dataset, seed=seed, eval_batch_size=data.eval_batch_size)
