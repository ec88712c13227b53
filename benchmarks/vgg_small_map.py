"""VGG-16's gradient step with the last stage's 2x2-map convolutions on XLA's CPU convolution
against `models.vgg.small_map_conv`'s matmul path, side by side in one run (JSON on stdout).

    python -m benchmarks.vgg_small_map [--batch 128 --repeats 2] [--out FILE]
"""

from __future__ import annotations

import argparse
import time
from typing import Optional, Sequence
from unittest import mock

import jax
import jax.numpy as jnp

from benchmarks.common import environment, parse_checked, write_json
from lottery_kd.models import get_model, vgg


def step_seconds(small_map: int, batch: int, repeats: int) -> float:
    """Mean seconds of one jitted VGG-16 gradient step, SMALL_MAP set to `small_map` while
    the step is traced (0: every convolution on XLA's)."""
    with mock.patch.object(vgg, "SMALL_MAP", small_map):
        model = get_model("vgg16", 10)
        variables = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
        images = jax.random.normal(jax.random.key(1), (batch, 32, 32, 3))
        step = jax.jit(jax.grad(lambda p: model.apply(
            {**variables, "params": p}, images, train=True, mutable=["batch_stats"])[0].sum()))
        jax.block_until_ready(step(variables["params"]))  # compiles while patched
    start = time.perf_counter()
    for _ in range(repeats):
        jax.block_until_ready(step(variables["params"]))
    return (time.perf_counter() - start) / repeats


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.vgg_small_map",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--note", default="", help="recorded as is, e.g. what else ran")
    parser.add_argument("--out", default="", help="also write the JSON here")
    args = parse_checked(parser, argv)  # --batch and --repeats >= 1
    xla = step_seconds(0, args.batch, args.repeats)
    matmul = step_seconds(vgg.SMALL_MAP, args.batch, args.repeats)
    write_json({"benchmark": "vgg_small_map", "note": args.note, **environment(),
                "batch": args.batch, "repeats": args.repeats, "xla_step_s": round(xla, 3),
                "small_map_step_s": round(matmul, 3), "speedup": round(xla / matmul, 2)},
               args.out, args)


if __name__ == "__main__":
    main()
