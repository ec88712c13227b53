"""Train-step and eval images/s of the CIFAR ResNets, each measurement in its own process.

    python -m benchmarks.train_step_throughput --models resnet20,resnet56,resnet110 \
        --out benchmarks/results/train_step_throughput.json
    python -m benchmarks.train_step_throughput --models resnet20,resnet56 --compare-relu

Measures the real jitted masked train step (params * masks, CE loss, masked SGD update) and the
eval forward on synthetic batches of 32x32x3 images, after a compile and warm-up, as the median of
`--repeats` timed blocks of `--steps` steps. With --compare-relu the block-closing ReLU is also
measured as plain max(z, 0), alternating the two in separate processes, and the ratio is reported.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time


def measure(model_name: str, batch_size: int, steps: int, repeats: int, relu: str) -> dict:
    """Run in a child process: images/s of the train step and the eval forward."""
    import jax
    import jax.numpy as jnp

    from lottery_kd import masks, optim, train
    from lottery_kd.models import cifar_resnet, get_model

    if relu == "plain":
        cifar_resnet.relu_select = jax.nn.relu
    model = get_model(model_name, 10)
    params, batch_stats = train.init_variables(model, jax.random.key(0), (32, 32, 3))
    optimizer = optim.sgd_direction(0.9, 2e-4)
    mask = masks.create(params)
    state = train.TrainState(jnp.asarray(0), params, batch_stats, optimizer.init(params))
    step = train.make_train_step(model, optimizer, None)
    images = jax.random.normal(jax.random.key(1), (batch_size, 32, 32, 3))
    labels = jax.random.randint(jax.random.key(2), (batch_size,), 0, 10)
    lr = jnp.float32(0.1)
    began = time.perf_counter()
    state, metrics = step(state, mask, images, labels, lr, {})
    jax.block_until_ready(metrics)
    compile_seconds = time.perf_counter() - began
    state, metrics = step(state, mask, images, labels, lr, {})
    jax.block_until_ready(metrics)
    train_rates = []
    for _ in range(repeats):
        began = time.perf_counter()
        for _ in range(steps):
            state, metrics = step(state, mask, images, labels, lr, {})
        jax.block_until_ready(metrics)
        train_rates.append(steps * batch_size / (time.perf_counter() - began))
    forward = jax.jit(lambda p, b, x: model.apply({"params": masks.apply(p, mask),
                                                   "batch_stats": b}, x, train=False))
    jax.block_until_ready(forward(state.params, state.batch_stats, images))
    eval_rates = []
    for _ in range(repeats):
        began = time.perf_counter()
        for _ in range(steps):
            logits = forward(state.params, state.batch_stats, images)
        jax.block_until_ready(logits)
        eval_rates.append(steps * batch_size / (time.perf_counter() - began))
    return {"model": model_name, "relu": relu, "batch_size": batch_size,
            "compile_seconds": round(compile_seconds, 2),
            "train_images_per_second": round(statistics.median(train_rates), 1),
            "train_images_per_second_runs": [round(r, 1) for r in train_rates],
            "eval_images_per_second": round(statistics.median(eval_rates), 1)}


def _child(args: argparse.Namespace, model: str, relu: str) -> dict:
    command = [sys.executable, "-m", "benchmarks.train_step_throughput", "--child", model,
               "--relu", relu, "--batch-size", str(args.batch_size), "--steps", str(args.steps),
               "--repeats", str(args.repeats)]
    out = subprocess.run(command, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default="resnet20,resnet56,resnet110")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=5, help="steps per timed block")
    parser.add_argument("--repeats", type=int, default=3, help="timed blocks (median reported)")
    parser.add_argument("--compare-relu", action="store_true",
                        help="also measure the plain max(z, 0) block ReLU, side by side")
    parser.add_argument("--out", default="", help="write the JSON here as well as to stdout")
    parser.add_argument("--child", default="", help=argparse.SUPPRESS)
    parser.add_argument("--relu", default="select", choices=("select", "plain"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(measure(args.child, args.batch_size, args.steps, args.repeats,
                                 args.relu)))
        return
    results = []
    for model in args.models.split(","):
        row = _child(args, model, "select")
        print(json.dumps(row), file=sys.stderr, flush=True)
        results.append(row)
        if args.compare_relu:
            plain = _child(args, model, "plain")
            print(json.dumps(plain), file=sys.stderr, flush=True)
            results.append(plain)
            row["speedup_vs_plain_relu"] = round(
                row["train_images_per_second"] / plain["train_images_per_second"], 2)
    report = {"benchmark": "train_step_throughput", "host": platform.node(),
              "cpu_count": os.cpu_count(), "python": platform.python_version(),
              "results": results}
    import jax
    report["jax"] = jax.__version__
    report["backend"] = jax.default_backend()
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as handle:
            handle.write(text + "\n")


if __name__ == "__main__":
    main()
