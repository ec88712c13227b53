"""Input pipelines next to the train step they feed, measured side by side in one run.

    python -m benchmarks.input_pipeline --out benchmarks/results/input_pipeline.json

- CIFAR-10 training input: the batch at a step (permutation gather + pad-4 crop + flip, on device)
  from the real 45k training split when ../shared/data/cifar10 (or --cifar-dir) exists, else from
  synthetic images of the same shape;
- the ResNet-20 masked train step on those batches (batch 128);
- ImageNet training input: the tf.data pipeline (JPEG decode, random-resized-crop 224, flip) on a
  mocked imagenet2012 with photo-sized JPEGs (lottery_kd.data.imagenet_mock).
Blocks of steps alternate between CIFAR input and train step; medians are reported, with the
ratio the CIFAR input must keep (>= 5x the train step).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.common import environment, parse_checked, write_json

DEFAULT_CIFAR = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "cifar10"


def _rate(fn, steps: int, batch_size: int) -> float:
    import jax
    began = time.perf_counter()
    out = None
    for step in range(steps):
        out = fn(step)
    jax.block_until_ready(out)
    return steps * batch_size / (time.perf_counter() - began)


def cifar_and_train_step(cifar_dir: str, batch_size: int, steps: int, repeats: int) -> dict:
    import jax
    import jax.numpy as jnp

    from lottery_kd.sparsity import masks

    from lottery_kd.training import optim
    from lottery_kd.training.steps import TrainState, init_variables, make_train_step
    from lottery_kd.data import load_dataset
    from lottery_kd.data.inputs import InMemoryTrainInput
    from lottery_kd.models import get_model

    if Path(cifar_dir).is_dir():
        dataset = load_dataset("cifar10", source="local", directory=cifar_dir, validation_size=5000)
        images, labels, mean, std, source = (dataset.train_images, dataset.train_labels,
                                             dataset.mean, dataset.std, "real CIFAR-10 45k split")
    else:
        rng = np.random.default_rng(0)
        images = rng.integers(0, 256, (45000, 32, 32, 3), dtype=np.uint8)
        labels = rng.integers(0, 10, 45000).astype(np.int32)
        mean, std, source = (125.0,) * 3, (63.0,) * 3, "synthetic 45k (CIFAR-10 not found)"
    data = InMemoryTrainInput(images, labels, seed=0, augment=True)
    model = get_model("resnet20", 10)
    params, batch_stats = init_variables(model, jax.random.key(0), (32, 32, 3))
    optimizer = optim.sgd_direction(0.9, 2e-4)
    mask = masks.create(params)
    step_fn = make_train_step(model, optimizer, None, normalization=(mean, std))
    state = TrainState(jnp.asarray(0), params, batch_stats, optimizer.init(params))
    lr = jnp.float32(0.1)
    fixed = data.batch(0, batch_size)

    def run_steps(step):
        nonlocal state
        state, metrics = step_fn(state, mask, fixed[0], fixed[1], lr, {})
        return metrics

    _rate(lambda s: data.batch(s, batch_size), 3, batch_size)   # compile, warm up
    _rate(run_steps, 2, batch_size)
    input_rates, step_rates = [], []
    for repeat in range(repeats):
        offset = 1000 * (repeat + 1)
        input_rates.append(_rate(lambda s: data.batch(offset + s, batch_size), steps * 10,
                                 batch_size))
        step_rates.append(_rate(run_steps, steps, batch_size))
    input_rate, step_rate = statistics.median(input_rates), statistics.median(step_rates)
    return {"cifar_source": source, "batch_size": batch_size,
            "cifar_input_images_per_second": round(input_rate, 1),
            "resnet20_train_step_images_per_second": round(step_rate, 1),
            "cifar_input_over_train_step": round(input_rate / step_rate, 1),
            "cifar_input_runs": [round(r, 1) for r in input_rates],
            "train_step_runs": [round(r, 1) for r in step_rates]}


def imagenet_mock_input(batch_size: int, batches: int, image_size: int, examples: int) -> dict:
    from lottery_kd.data import imagenet, imagenet_mock

    shards = {"train": (examples // 2, examples - examples // 2), "validation": (8,)}
    fake = {split: imagenet_mock.encoded_examples(split, sum(counts), sides=(200, 500))
            for split, counts in shards.items()}
    with tempfile.TemporaryDirectory() as data_dir, \
            imagenet_mock.mock_imagenet(data_dir, shards, fake):
        stream = imagenet.ImageNetTrainInput(data_dir=data_dir, image_size=image_size, seed=0)
        stream.batch(0, batch_size)  # build the pipeline, fill the prefetch buffer
        began = time.perf_counter()
        for step in range(1, batches + 1):  # within the first epoch: one open iterator
            stream.batch(step, batch_size)
        rate = batches * batch_size / (time.perf_counter() - began)
    return {"imagenet_mock_images": examples, "imagenet_image_size": image_size,
            "imagenet_batch_size": batch_size,
            "imagenet_input_images_per_second": round(rate, 1),
            "imagenet_note": "mock JPEGs of 200-500 px sides; tf.data decode + random-resized-crop"
                             " + flip on this machine's CPU"}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.input_pipeline",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--cifar-dir", default="", help="CIFAR-10's binary files (default: "
                        "../shared/data/cifar10 beside the repository, else synthetic images)")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=5, help="train steps per timed block")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--imagenet-batches", type=int, default=20)
    parser.add_argument("--imagenet-batch-size", type=int, default=32)
    parser.add_argument("--out", default="")
    args = parse_checked(parser, argv)
    report = {"benchmark": "input_pipeline", **environment()}
    if args.cifar_dir and not Path(args.cifar_dir).is_dir():  # asked for, so not replaced
        parser.error(f"--cifar-dir {args.cifar_dir}: no such folder; give the folder of "
                     "CIFAR-10's binary files, or leave the option out")
    report.update(cifar_and_train_step(args.cifar_dir or str(DEFAULT_CIFAR), args.batch_size,
                                       args.steps, args.repeats))
    examples = args.imagenet_batch_size * (args.imagenet_batches + 2)
    report.update(imagenet_mock_input(args.imagenet_batch_size, args.imagenet_batches, 224,
                                      examples))
    write_json(report, args.out, args)


if __name__ == "__main__":
    from lottery_kd.runtime.malloc_tuning import reexec_with_malloc_tuning
    reexec_with_malloc_tuning()  # as the training entry points run (runtime.malloc_tuning)
    main()
