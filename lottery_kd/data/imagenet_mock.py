"""A fake tfds imagenet2012 for tests and benchmarks, where the real one cannot be had.

`tfds.testing.mock_data` alone knows no split sizes and hands every split (and every slice of one)
the same examples. `mock_imagenet` writes imagenet2012's real DatasetInfo with small fake splits
into `data_dir` and mocks tfds to serve encoded images of random sizes (mostly JPEG, every 4th PNG)
that honour split slices and file shuffling: example i of a split has label i, which makes coverage
and disjointness checks direct. Nothing is downloaded.
"""

from __future__ import annotations

import contextlib
import functools
from typing import Iterator, Mapping

import numpy as np

NAME = "imagenet2012"


def encoded_examples(split: str, count: int, sides: tuple[int, int] = (12, 90)
                     ) -> dict[str, np.ndarray]:
    """`count` random images with sides in `sides` (every 4th PNG, else JPEG); label i."""
    import tensorflow as tf
    rng = np.random.default_rng(len(split))
    images = []
    for index in range(count):
        height, width = rng.integers(sides[0], sides[1], size=2)
        pixels = rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)
        encode = tf.io.encode_png if index % 4 == 3 else tf.io.encode_jpeg
        images.append(encode(pixels).numpy())
    return {"image": np.array(images, dtype=object), "label": np.arange(count, dtype=np.int64),
            "file_name": np.array([f"{split}_{i}.JPEG".encode() for i in range(count)], object)}


def write_metadata(data_dir: str, split_shards: Mapping[str, tuple[int, ...]]) -> None:
    """imagenet2012's DatasetInfo with splits of the given shard lengths, written to data_dir."""
    import tensorflow_datasets as tfds
    builder = tfds.builder(NAME, data_dir=str(data_dir))
    template = tfds.core.ShardedFileTemplate(data_dir=builder.data_dir, dataset_name=NAME,
                                             filetype_suffix="tfrecord")
    builder.info.set_splits(tfds.core.SplitDict([
        tfds.core.SplitInfo(name=split, shard_lengths=list(shards), num_bytes=0,
                            filename_template=template)
        for split, shards in split_shards.items()]))
    builder.data_path.mkdir(parents=True, exist_ok=True)
    builder.info.write_to_directory(builder.data_path)


@contextlib.contextmanager
def mock_imagenet(data_dir: str, split_shards: Mapping[str, tuple[int, ...]],
                  examples: Mapping[str, dict[str, np.ndarray]]) -> Iterator[str]:
    """Within the context, tfds serves `examples` as imagenet2012 from `data_dir`."""
    import tensorflow as tf
    import tensorflow_datasets as tfds
    write_metadata(data_dir, split_shards)

    def as_dataset(self, split, decoders=None, read_config=None, shuffle_files=False):
        base = getattr(split, "split", str(split)).split("[")[0]
        instructions = list(self.info.splits[split].file_instructions)
        if shuffle_files and read_config is not None and len(instructions) > 1:
            order = np.random.default_rng(read_config.shuffle_seed).permutation(len(instructions))
            instructions = [instructions[i] for i in order]
        shards = tuple(split_shards[base])
        offsets = np.cumsum((0,) + shards)
        shard_of = {f"{i:05d}-of-{len(shards):05d}": offsets[i] for i in range(len(shards))}
        index = np.concatenate([
            shard_of[f.filename[-14:]] + np.arange(f.skip, f.skip + f.take) for f in instructions])
        rows = {key: value[index] for key, value in examples[base].items()}
        ds = tf.data.Dataset.from_tensor_slices(
            {"image": tf.constant(list(rows["image"]), tf.string),
             "label": tf.constant(rows["label"], tf.int64),
             "file_name": tf.constant(list(rows["file_name"]), tf.string)})
        return ds.map(functools.partial(self.info.features.decode_example, decoders=decoders))

    with tfds.testing.mock_data(policy=tfds.testing.MockPolicy.USE_FILES, data_dir=str(data_dir),
                                as_dataset_fn=as_dataset):
        yield str(data_dir)
