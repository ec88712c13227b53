"""Masked convolutions of the CIFAR ResNets: dense kernel vs sparse kernel, per pass and density.

    python -m benchmarks.sparse_conv --out benchmarks/results/sparse_conv_cpu.json

For each layer shape (batch 128) and each density (random unstructured masks, as global
magnitude pruning leaves them): forward, input gradient, filter gradient (at the mask's
positions) and both gradients ("backward": sparse_conv's one call, as masked_conv's VJP runs
them), each jitted on its own, timed in alternating blocks (dense, sparse, sparse_nchw, dense,
...) after a warm-up; medians. "dense" is conv3x3's native kernel where it applies (3x3,
padding 1; the filter gradient then masked) and XLA's convolution elsewhere (1x1 kernels, the
stride-2 input gradient), as a dense network would run; "sparse" is sparse_conv with its path
forced to the sparse loops (masked_conv's "auto" path sends the 1x1 stride-2 input gradient to
XLA instead); "sparse_nchw" the same loops on channel-major (NCHW) activations, which they read
without transposing (the operands are transposed once, untimed).
Records: shape, pass, density, the dense implementation, milliseconds of each, the speed-ups
over dense and the largest relative difference between the dense and sparse (NHWC) results.
"""

from __future__ import annotations

import argparse
import json
import sys

from benchmarks.common import environment, median, timed, write_json
from lottery_kd.runtime.malloc_tuning import reexec_with_malloc_tuning

# (height = width, in channels, out channels, stride, kernel size) of ResNet-20/56/110's pruned
# convolutions: the 3x3 layers after the stem and the 1x1 projection shortcuts
SHAPES = [(32, 16, 16, 1, 3), (32, 16, 32, 2, 3), (16, 32, 32, 1, 3), (16, 32, 64, 2, 3),
          (8, 64, 64, 1, 3), (32, 16, 32, 2, 1), (16, 32, 64, 2, 1)]
DENSITIES = (1.0, 0.5, 0.2, 0.1074, 0.05, 0.02)


def _passes(stride: int, size: int):
    """{pass: {"dense": fn, "sparse": fn}} of jitted fn(x, w, mask, dy), and the dense impl."""
    import jax
    from jax import lax

    from lottery_kd.kernels import conv3x3, sparse_conv as sc

    padding = (size - 1) // 2
    native = size == 3

    def xla(x, w):
        return lax.conv_general_dilated(x, w, (stride, stride), [(padding, padding)] * 2,
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"))

    dense_conv = (lambda x, w: conv3x3.conv3x3(x, w, stride)) if native else xla
    dense = {
        "forward": lambda x, w, m, dy: dense_conv(x, w),
        "input_grad": lambda x, w, m, dy: jax.vjp(lambda x_: dense_conv(x_, w), x)[1](dy)[0],
        "filter_grad": lambda x, w, m, dy: m * jax.vjp(lambda w_: dense_conv(x, w_), w)[1](dy)[0],
    }
    dense["backward"] = lambda x, w, m, dy: (dense["input_grad"](x, w, m, dy),
                                             dense["filter_grad"](x, w, m, dy))
    sparse = {
        "forward": lambda x, w, m, dy: sc.forward(x, w, stride, padding, "sparse"),
        "input_grad": lambda x, w, m, dy: sc.input_grad(dy, w, stride, padding, x.shape,
                                                        "sparse"),
        "filter_grad": lambda x, w, m, dy: sc.filter_grad(x, dy, m, stride, padding, "sparse"),
        "backward": lambda x, w, m, dy: sc.backward(x, dy, w, m, stride, padding, "sparse"),
    }
    cm = {
        "forward": lambda x, w, m, dy: sc.forward(x, w, stride, padding, "sparse", "NCHW"),
        "input_grad": lambda x, w, m, dy: sc.input_grad(dy, w, stride, padding, x.shape,
                                                        "sparse", "NCHW"),
        "filter_grad": lambda x, w, m, dy: sc.filter_grad(x, dy, m, stride, padding, "sparse",
                                                          "NCHW"),
        "backward": lambda x, w, m, dy: sc.backward(x, dy, w, m, stride, padding, "sparse",
                                                    "NCHW"),
    }
    impl = {name: "native" if native and not (name == "input_grad" and stride == 2) else "xla"
            for name in dense}
    impl["backward"] = "native" if native and stride == 1 else "xla+native" if native else "xla"
    return {name: {"dense": jax.jit(dense[name]), "sparse": jax.jit(sparse[name]),
                   "sparse_nchw": jax.jit(cm[name])} for name in dense}, impl


def _time_pair(impls: dict, args: dict, steps: int, repeats: int) -> tuple[dict, dict]:
    """Outputs and median ms per call of each implementation (called with args[name]), timed in
    alternating blocks."""
    import jax

    outputs = {name: jax.block_until_ready(fn(*args[name])) for name, fn in impls.items()}
    seconds = {name: [] for name in impls}
    for _ in range(repeats):
        for name, fn in impls.items():
            seconds[name].append(timed(lambda fn=fn, a=args[name]: [fn(*a) for _ in range(steps)]
                                       [-1], jax.block_until_ready) / steps)
    return outputs, {name: 1e3 * median(values) for name, values in seconds.items()}


def measure(batch: int, steps: int, repeats: int, densities: tuple[float, ...]) -> list[dict]:
    import jax
    import numpy as np

    from lottery_kd.kernels import sparse_conv as sc

    if not sc.native_available():
        raise SystemExit("the native kernel is unavailable here: " + sc._load()[1])
    records = []
    for hw, cin, cout, stride, size in SHAPES:
        keys = jax.random.split(jax.random.key(hw * cin + cout + size), 4)
        x = jax.random.normal(keys[0], (batch, hw, hw, cin))
        kernel = jax.random.normal(keys[1], (size, size, cin, cout)) * 0.1
        out = sc.out_size(hw, size, stride, (size - 1) // 2)
        dy = jax.random.normal(keys[2], (batch, out, out, cout))
        passes, impl = _passes(stride, size)
        for density in densities:
            mask = (jax.random.uniform(keys[3], kernel.shape) < density).astype(np.float32)
            nhwc = (x, kernel * mask, mask, dy)
            nchw = (x.transpose(0, 3, 1, 2), kernel * mask, mask, dy.transpose(0, 3, 1, 2))
            args = {"dense": nhwc, "sparse": nhwc, "sparse_nchw": nchw}
            for pass_name, impls in passes.items():
                outputs, ms = _time_pair(impls, args, steps, repeats)
                a, b = (np.concatenate([np.ravel(np.asarray(v, np.float64))
                                        for v in jax.tree.leaves(outputs[n])])
                        for n in ("dense", "sparse"))
                records.append({
                    "shape": f"{batch}x{hw}x{hw}x{cin}->{cout}/{size}x{size}/s{stride}",
                    "pass": pass_name, "density": density, "dense_impl": impl[pass_name],
                    "dense_ms": round(ms["dense"], 3), "sparse_ms": round(ms["sparse"], 3),
                    "speedup": round(ms["dense"] / ms["sparse"], 2),
                    "sparse_nchw_ms": round(ms["sparse_nchw"], 3),
                    "speedup_nchw": round(ms["dense"] / ms["sparse_nchw"], 2),
                    "max_relative_difference": float(np.max(np.abs(a - b))
                                                     / max(np.max(np.abs(a)), 1e-30))})
                print(json.dumps(records[-1]), file=sys.stderr, flush=True)
    return records


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=5, help="calls per timed block")
    parser.add_argument("--repeats", type=int, default=3, help="timed blocks per implementation")
    parser.add_argument("--densities", default=",".join(map(str, DENSITIES)))
    parser.add_argument("--note", default="", help="recorded as is, e.g. what else ran")
    parser.add_argument("--out", default="")
    args = parser.parse_args(argv)
    densities = tuple(float(d) for d in args.densities.split(",") if d)
    records = measure(args.batch_size, args.steps, args.repeats, densities)
    write_json({"benchmark": "sparse_conv", "note": args.note, **environment(),
                "records": records}, args.out)


if __name__ == "__main__":
    reexec_with_malloc_tuning()  # as the training entry points run (runtime.malloc_tuning)
    main()
