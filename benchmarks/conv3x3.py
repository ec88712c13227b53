"""Every 3x3 convolution shape of the CIFAR ResNets: XLA vs the native kernel, per pass.

    python -m benchmarks.conv3x3 --out benchmarks/results/conv3x3_cpu.json

For each layer shape (batch 128): forward, input gradient and filter gradient, each jitted on
its own, timed in alternating blocks (XLA, native, XLA, ...) after a warm-up; medians. Records:
shape, pass, milliseconds for each implementation, GFLOP/s, the speed-up and the largest relative
difference between the two results (float32 summation order only).
"""

from __future__ import annotations

import argparse
import json
import sys

from benchmarks.common import environment, median, parse_checked, timed, write_json
from lottery_kd.runtime.malloc_tuning import reexec_with_malloc_tuning

# (height = width, in channels, out channels, stride) of ResNet-20/56/110's 3x3 convolutions
SHAPES = [(32, 3, 16, 1), (32, 16, 16, 1), (32, 16, 32, 2), (16, 32, 32, 1), (16, 32, 64, 2),
          (8, 64, 64, 1)]


def measure(batch: int, steps: int, repeats: int) -> list[dict]:
    import jax
    import numpy as np
    from jax import lax

    from lottery_kd.kernels import conv3x3 as conv_lib

    if not conv_lib.native_available():
        raise SystemExit("the native kernel is unavailable here: " + conv_lib._load()[1])

    def xla(x, kernel, stride):
        return lax.conv_general_dilated(x, kernel, (stride, stride), ((1, 1), (1, 1)),
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"))

    records = []
    for size, cin, cout, stride in SHAPES:
        keys = jax.random.split(jax.random.key(size * cin + cout), 3)
        x = jax.random.normal(keys[0], (batch, size, size, cin))
        kernel = jax.random.normal(keys[1], (3, 3, cin, cout)) * 0.1
        out = (size - 1) // stride + 1
        dy = jax.random.normal(keys[2], (batch, out, out, cout))
        flops = 2 * batch * out * out * 9 * cin * cout
        passes = {}
        for name, conv in (("xla", xla), ("native", conv_lib.conv3x3)):
            passes.setdefault("forward", {})[name] = jax.jit(
                lambda x, k, dy, conv=conv: conv(x, k, stride))
            passes.setdefault("input_grad", {})[name] = jax.jit(
                lambda x, k, dy, conv=conv: jax.vjp(lambda x_: conv(x_, k, stride), x)[1](dy)[0])
            passes.setdefault("filter_grad", {})[name] = jax.jit(
                lambda x, k, dy, conv=conv: jax.vjp(lambda k_: conv(x, k_, stride), k)[1](dy)[0])
        if cin % 16:  # the stem: nothing needs its input gradient
            del passes["input_grad"]
        for pass_name, impls in passes.items():
            outputs = {name: jax.block_until_ready(fn(x, kernel, dy)) for name, fn in impls.items()}
            seconds = {name: [] for name in impls}
            for _ in range(repeats):
                for name, fn in impls.items():
                    seconds[name].append(timed(
                        lambda fn=fn: [fn(x, kernel, dy) for _ in range(steps)][-1],
                        jax.block_until_ready) / steps)
            ms = {name: 1e3 * median(values) for name, values in seconds.items()}
            a, b = (np.asarray(outputs[n], np.float64) for n in ("xla", "native"))
            records.append({
                "shape": f"{batch}x{size}x{size}x{cin}->{cout}/s{stride}", "pass": pass_name,
                "xla_ms": round(ms["xla"], 3), "native_ms": round(ms["native"], 3),
                "xla_gflops": round(flops / ms["xla"] / 1e6, 1),
                "native_gflops": round(flops / ms["native"] / 1e6, 1),
                "speedup": round(ms["xla"] / ms["native"], 2),
                "max_relative_difference": float(np.max(np.abs(a - b)) / np.max(np.abs(a)))})
            print(json.dumps(records[-1]), file=sys.stderr, flush=True)
    return records


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.conv3x3",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=10, help="calls per timed block")
    parser.add_argument("--repeats", type=int, default=5, help="timed blocks per implementation")
    parser.add_argument("--out", default="")
    args = parse_checked(parser, argv)
    records = measure(args.batch_size, args.steps, args.repeats)
    write_json({"benchmark": "conv3x3", **environment(), "records": records}, args.out, args)


if __name__ == "__main__":
    reexec_with_malloc_tuning()  # as the training entry points run (runtime.malloc_tuning)
    main()
