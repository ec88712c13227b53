"""ImageNet (ILSVRC-2012) streamed from TensorFlow Datasets with tf.data, on the host CPU.

Training follows the contract of the in-memory inputs (lottery_kd.data.augment): the batch at
global step s is a pure function of (seed, s). Epoch e = s // steps_per_epoch reads this process's
share of the split with a file order and shuffle seeded by (seed, e), numbers the examples, and
augments example i with stateless random ops seeded by (seed, e, process, i). A resumed run (or a
retrain entering the schedule at step k) therefore rebuilds the epoch's stream, skips to its
position and sees exactly the batches of an uninterrupted run.

Augmentation is the torchvision recipe: random-resized crop (by default area 0.08-1 and aspect
3/4-4/3, the KD-ticket release uses 0.1-1 and 0.8-1.25: `crop_scale`, `crop_ratio`; 10
attempts, centre-crop fallback), bilinear resize, random horizontal flip. Evaluation resizes the
shorter side to image_size * 256 / 224 and takes the central image_size crop. Images leave as
uint8; the jitted steps normalise with MEAN_RGB / STD_RGB.

TensorFlow and tensorflow_datasets are imported lazily, so importing lottery_kd never imports TF,
and TF is kept off the accelerators (JAX owns them).
"""

from __future__ import annotations

import math
from fractions import Fraction
from typing import Any, Iterator

import numpy as np

from lottery_kd.data.errors import DataError

__all__ = ["MEAN_RGB", "STD_RGB", "ImageNetEvalInput", "ImageNetTrainInput", "parse_range"]

# ImageNet channel statistics in uint8 pixel units (the torchvision constants times 255).
MEAN_RGB: tuple[float, float, float] = (0.485 * 255, 0.456 * 255, 0.406 * 255)
STD_RGB: tuple[float, float, float] = (0.229 * 255, 0.224 * 255, 0.225 * 255)

CROP_AREA_RANGE = (0.08, 1.0)
CROP_ASPECT_RANGE = (3 / 4, 4 / 3)
CROP_ATTEMPTS = 10
EVAL_RESIZE_RATIO = 256 / 224
DEFAULT_SHUFFLE_BUFFER = 10_000

# Tags that separate the seed streams derived from the run seed.
_FILE_ORDER, _SHUFFLE, _CROP, _FLIP = range(4)


def parse_range(text: Any) -> tuple[float, float]:
    """A crop range as the config writes it, '0.08,1' or '3/4,4/3', as (low, high); ValueError
    unless two positive numbers with low <= high."""
    try:
        low, high = (float(Fraction(part.strip())) for part in str(text).split(","))
    except (ValueError, ZeroDivisionError):
        raise ValueError(f"{text!r} is not two numbers 'low,high'") from None
    if not 0 < low <= high:
        raise ValueError(f"{text!r} needs 0 < low <= high")
    return low, high


def _tf() -> Any:
    """Import TensorFlow and hide the GPUs from it (ignored if TF already initialised them)."""
    import tensorflow as tf

    try:
        tf.config.set_visible_devices([], "GPU")
    except (RuntimeError, ValueError):
        pass
    return tf


def _derived_seed(*entropy: int) -> int:
    """A 32-bit seed that depends on every entry of `entropy` (non-negative ints)."""
    words = [int(value) % 2**64 for value in entropy]
    return int(np.random.SeedSequence(words).generate_state(1, np.uint32)[0])


def _check_process(process_index: int, process_count: int) -> None:
    if not 0 <= process_index < process_count:
        raise ValueError(f"need 0 <= process_index < process_count, got process_index="
                         f"{process_index}, process_count={process_count}")


def _local_batch_size(batch_size: int, process_count: int, key: str) -> int:
    """batch_size // process_count; a DataError naming `key` unless it divides evenly."""
    if batch_size <= 0 or batch_size % process_count:
        raise DataError(f"{key}={batch_size} must be a positive multiple of the number of "
                         f"processes (process_count={process_count}): every process reads "
                         f"{key} // process_count examples per batch")
    return batch_size // process_count


def _prepared_builder(name: str, data_dir: str | None, manual_dir: str | None, split: str,
                      download: bool) -> Any:
    """The tfds builder of `name`, prepared first if `download`; a clear error if it is missing."""
    _tf()
    import tensorflow_datasets as tfds

    builder = tfds.builder(name, data_dir=data_dir)
    if download and not builder.is_prepared() and not manual_dir:
        raise DataError(
            f"TFDS data set {name!r} is not prepared under {builder.data_dir_root}, and "
            f"data.tfds_download=True cannot fetch it: ImageNet is not downloadable. Put the "
            f"official ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar into a folder and set "
            f"data.manual_dir to that folder (prepared once, then read from "
            f"data.tfds_data_dir), or set data.tfds_data_dir to a TFDS data directory that "
            f"already holds it.")
    if download:
        builder.download_and_prepare(
            download_config=tfds.download.DownloadConfig(manual_dir=manual_dir))
    try:
        builder.info.splits[split]
    except (KeyError, ValueError) as error:
        raise DataError(
            f"TFDS data set {name!r} (split {split!r}) is not prepared under "
            f"{builder.data_dir_root} ({error}). Either set data.tfds_data_dir to the TFDS data "
            f"directory that already holds it, or prepare it once: put the official "
            f"ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar into a folder, set "
            f"data.manual_dir to that folder and set data.tfds_download=True, or run "
            f"`tfds build {name} --data_dir=DATA_DIR --manual_dir=MANUAL_DIR` and set "
            f"data.tfds_data_dir=DATA_DIR."
        ) from None
    return builder


def _options(tf: Any) -> Any:
    options = tf.data.Options()
    options.deterministic = True
    return options


def _to_uint8(tf: Any, image: Any) -> Any:
    return tf.cast(tf.clip_by_value(tf.round(image), 0.0, 255.0), tf.uint8)


def _decode_window(tf: Any, image_bytes: Any, window_fn: Any) -> Any:
    """Decode only the crop `window_fn(shape)` = [top, left, height, width] of an encoded image.

    JPEG (all of tfds' imagenet2012) is decoded window-only; any other format is decoded whole and
    sliced, so PNG/GIF/BMP inputs (e.g. tfds mock data) work too.
    """
    def jpeg() -> Any:
        window = window_fn(tf.image.extract_jpeg_shape(image_bytes))
        return tf.image.decode_and_crop_jpeg(image_bytes, window, channels=3)

    def other() -> Any:
        image = tf.io.decode_image(image_bytes, channels=3, expand_animations=False)
        window = window_fn(tf.shape(image))
        return tf.slice(image, tf.stack([window[0], window[1], 0]),
                        tf.stack([window[2], window[3], 3]))

    image = tf.cond(tf.io.is_jpeg(image_bytes), jpeg, other)
    return tf.ensure_shape(image, [None, None, 3])


def _random_crop_window(tf: Any, shape: Any, seed: Any,
                        area_range: tuple[float, float] = CROP_AREA_RANGE,
                        aspect_range: tuple[float, float] = CROP_ASPECT_RANGE) -> Any:
    """[top, left, height, width] of a random-resized crop, torchvision's centre-crop fallback."""
    shape = tf.cast(shape, tf.int32)
    begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
        shape, bounding_boxes=tf.constant([0.0, 0.0, 1.0, 1.0], tf.float32, [1, 1, 4]),
        seed=seed, min_object_covered=0.0, aspect_ratio_range=aspect_range,
        area_range=area_range, max_attempts=CROP_ATTEMPTS,
        use_image_if_no_bounding_boxes=True)
    height, width = shape[0], shape[1]
    # After CROP_ATTEMPTS failures TF returns the whole image; torchvision then centre-crops the
    # image to the nearest allowed aspect ratio instead.
    failed = tf.logical_and(tf.equal(size[0], height), tf.equal(size[1], width))
    ratio = tf.cast(width, tf.float32) / tf.cast(height, tf.float32)
    low, high = aspect_range
    fallback_h = tf.where(ratio < low, tf.cast(tf.round(tf.cast(width, tf.float32) / low),
                                               tf.int32), height)
    fallback_w = tf.where(ratio > high, tf.cast(tf.round(tf.cast(height, tf.float32) * high),
                                                tf.int32), width)
    fallback_h, fallback_w = tf.minimum(fallback_h, height), tf.minimum(fallback_w, width)
    fallback = tf.stack([(height - fallback_h) // 2, (width - fallback_w) // 2,
                         fallback_h, fallback_w])
    sampled = tf.stack([begin[0], begin[1], size[0], size[1]])
    return tf.where(failed, fallback, sampled)


def _train_preprocess(tf: Any, image_bytes: Any, crop_seed: Any, flip_seed: Any,
                      image_size: int, area_range: tuple[float, float] = CROP_AREA_RANGE,
                      aspect_range: tuple[float, float] = CROP_ASPECT_RANGE) -> Any:
    """Random-resized crop to image_size x image_size (bilinear), random flip, uint8."""
    crop = _decode_window(tf, image_bytes, lambda shape: _random_crop_window(
        tf, shape, crop_seed, area_range, aspect_range))
    image = tf.image.resize(crop, [image_size, image_size], method="bilinear")
    image = tf.image.stateless_random_flip_left_right(image, seed=flip_seed)
    return _to_uint8(tf, image)


def _eval_preprocess(tf: Any, image_bytes: Any, image_size: int) -> Any:
    """Resize the shorter side to round(image_size * 256 / 224), central image_size crop, uint8."""
    image = tf.io.decode_image(image_bytes, channels=3, expand_animations=False)
    image = tf.ensure_shape(image, [None, None, 3])
    resize = round(image_size * EVAL_RESIZE_RATIO)
    shape = tf.cast(tf.shape(image)[:2], tf.float32)
    short = tf.reduce_min(shape)
    # torchvision's Resize(int): the shorter side becomes `resize`, the longer one is truncated.
    new_shape = tf.where(shape == short, float(resize),
                         tf.floor(shape * (resize / short)))
    new_shape = tf.maximum(tf.cast(new_shape, tf.int32), image_size)
    image = tf.image.resize(image, new_shape, method="bilinear")
    top = tf.cast(tf.round(tf.cast(new_shape[0] - image_size, tf.float32) / 2), tf.int32)
    left = tf.cast(tf.round(tf.cast(new_shape[1] - image_size, tf.float32) / 2), tf.int32)
    image = tf.slice(image, tf.stack([top, left, 0]), [image_size, image_size, 3])
    return _to_uint8(tf, image)


class ImageNetTrainInput:
    """Training batches streamed by tf.data from tfds.

    The batch at global step s is a pure function of (seed, s), so a resumed run sees the batches
    of an uninterrupted one. `shuffle_buffer` examples (encoded) are held for the shuffle.
    """

    def __init__(self, *, name: str = "imagenet2012", data_dir: str | None = None,
                 manual_dir: str | None = None, split: str = "train", seed: int = 0,
                 image_size: int = 224, process_index: int = 0, process_count: int = 1,
                 download: bool = False, shuffle_buffer: int = DEFAULT_SHUFFLE_BUFFER,
                 crop_scale: tuple[float, float] = CROP_AREA_RANGE,
                 crop_ratio: tuple[float, float] = CROP_ASPECT_RANGE):
        _check_process(process_index, process_count)
        if image_size <= 0 or shuffle_buffer <= 0:
            raise ValueError(f"image_size and shuffle_buffer must be positive, got "
                             f"{image_size} and {shuffle_buffer}")
        _tf()
        import tensorflow_datasets as tfds

        self._builder = _prepared_builder(name, data_dir, manual_dir, split, download)
        # An equal share per process (the remainder is dropped): every process has at least
        # num_examples // process_count examples, enough for steps_per_epoch local batches.
        self._share = tfds.even_splits(split, n=process_count, drop_remainder=True)[process_index]
        self.num_examples: int = int(self._builder.info.splits[split].num_examples)
        self.num_classes: int = int(self._builder.info.features["label"].num_classes)
        self.image_shape: tuple[int, int, int] = (image_size, image_size, 3)
        self.seed = seed
        self.image_size = image_size
        self.process_index = process_index
        self.process_count = process_count
        self.shuffle_buffer = shuffle_buffer
        self.crop_scale, self.crop_ratio = tuple(crop_scale), tuple(crop_ratio)
        # The open stream: (epoch, global batch size, next step it yields, numpy iterator).
        self._stream: tuple[int, int, int, Iterator[Any]] | None = None

    def steps_per_epoch(self, batch_size: int) -> int:
        """Global steps per epoch (the last partial global batch is dropped)."""
        steps = self.num_examples // batch_size
        if steps == 0:
            raise DataError(f"train.batch_size={batch_size} is larger than the training split "
                             f"({self.num_examples} examples)")
        return steps

    def batch(self, step: int, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
        """This process's share of the global batch at `step`.

        uint8 images [batch_size // process_count, S, S, 3] and int32 labels. The next step after
        the last one continues the open stream; any other step rebuilds its epoch and skips ahead.
        """
        if step < 0:
            raise ValueError(f"step must be >= 0, got {step}")
        local_batch = _local_batch_size(batch_size, self.process_count, "train.batch_size")
        steps_per_epoch = self.steps_per_epoch(batch_size)
        epoch, position = divmod(int(step), steps_per_epoch)
        stream = self._stream
        if stream is None or stream[:3] != (epoch, batch_size, step):
            iterator = self._epoch_dataset(epoch, position, local_batch,
                                           steps_per_epoch).as_numpy_iterator()
            stream = (epoch, batch_size, step, iterator)
        images, labels = next(stream[3])
        self._stream = (epoch, batch_size, step + 1, stream[3])
        return images, labels

    def _epoch_dataset(self, epoch: int, position: int, local_batch: int,
                       steps_per_epoch: int) -> Any:
        """Batches `position`..steps_per_epoch-1 of epoch `epoch` for this process."""
        tf = _tf()
        import tensorflow_datasets as tfds

        read_config = tfds.ReadConfig(
            shuffle_seed=_derived_seed(self.seed, epoch, _FILE_ORDER),
            try_autocache=False, options=_options(tf))
        ds = self._builder.as_dataset(
            split=self._share, shuffle_files=True, read_config=read_config,
            decoders={"image": tfds.decode.SkipDecoding()})
        ds = ds.shuffle(self.shuffle_buffer, seed=_derived_seed(self.seed, epoch, _SHUFFLE),
                        reshuffle_each_iteration=False)
        ds = ds.enumerate()
        # Skipping before the (stateless, index-keyed) augmentation gives the same batches as
        # skipping whole batches, without decoding the skipped images.
        ds = ds.skip(position * local_batch).take((steps_per_epoch - position) * local_batch)
        crop_key = _derived_seed(self.seed, epoch, self.process_index, _CROP)
        flip_key = _derived_seed(self.seed, epoch, self.process_index, _FLIP)
        image_size, crop_scale, crop_ratio = self.image_size, self.crop_scale, self.crop_ratio

        def preprocess(index: Any, example: Any) -> tuple[Any, Any]:
            crop_seed = tf.stack([tf.constant(crop_key, tf.int64), index])
            flip_seed = tf.stack([tf.constant(flip_key, tf.int64), index])
            image = _train_preprocess(tf, example["image"], crop_seed, flip_seed, image_size,
                                      crop_scale, crop_ratio)
            return image, tf.cast(example["label"], tf.int32)

        ds = ds.map(preprocess, num_parallel_calls=tf.data.AUTOTUNE)
        ds = ds.batch(local_batch, drop_remainder=True).prefetch(tf.data.AUTOTUNE)
        return ds.with_options(_options(tf))


class ImageNetEvalInput:
    """Evaluation batches of a fixed shape covering the split once, the last one padded.

    Images: shorter side resized to image_size * 256 / 224, central image_size crop. `batch_size`
    is global (like train.batch_size): each process yields batch_size // process_count rows.
    """

    def __init__(self, *, name: str = "imagenet2012", data_dir: str | None = None,
                 manual_dir: str | None = None, split: str = "validation",
                 image_size: int = 224, batch_size: int = 250, process_index: int = 0,
                 process_count: int = 1, download: bool = False):
        _check_process(process_index, process_count)
        if image_size <= 0:
            raise ValueError(f"image_size must be positive, got {image_size}")
        _tf()
        import tensorflow_datasets as tfds

        self._builder = _prepared_builder(name, data_dir, manual_dir, split, download)
        self.batch_size = batch_size  # global rows per batch
        self.local_batch_size = _local_batch_size(batch_size, process_count,
                                                  "data.eval_batch_size")
        # Shares differ by at most one example; every process yields the same number of batches.
        self._share = tfds.even_splits(split, n=process_count, drop_remainder=False)[process_index]
        self.num_examples: int = int(self._builder.info.splits[split].num_examples)
        self.num_local_examples = int(self._builder.info.splits[self._share].num_examples)
        self.num_classes: int = int(self._builder.info.features["label"].num_classes)
        self.image_shape: tuple[int, int, int] = (image_size, image_size, 3)
        self.num_batches = math.ceil(math.ceil(self.num_examples / process_count)
                                     / self.local_batch_size)
        self.image_size = image_size

    def batches(self) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """(uint8 images [b, S, S, 3], int32 labels [b], bool valid [b]) with b fixed.

        Padding rows have valid=False; every process yields the same number of batches.
        """
        yield from self._dataset().as_numpy_iterator()

    def _dataset(self) -> Any:
        tf = _tf()
        import tensorflow_datasets as tfds

        ds = self._builder.as_dataset(
            split=self._share, shuffle_files=False,
            read_config=tfds.ReadConfig(try_autocache=False, options=_options(tf)),
            decoders={"image": tfds.decode.SkipDecoding()})
        image_size = self.image_size

        def preprocess(example: Any) -> tuple[Any, Any, Any]:
            return (_eval_preprocess(tf, example["image"], image_size),
                    tf.cast(example["label"], tf.int32), tf.constant(True))

        ds = ds.map(preprocess, num_parallel_calls=tf.data.AUTOTUNE)
        padding = self.num_batches * self.local_batch_size - self.num_local_examples
        pad = tf.data.Dataset.from_tensors(
            (tf.zeros(self.image_shape, tf.uint8), tf.constant(0, tf.int32), tf.constant(False)))
        ds = ds.concatenate(pad.repeat(padding))
        ds = ds.batch(self.local_batch_size, drop_remainder=True).prefetch(tf.data.AUTOTUNE)
        return ds.with_options(_options(tf))
