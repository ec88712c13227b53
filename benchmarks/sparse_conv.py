"""Masked convolutions of the CIFAR ResNets: dense kernel vs sparse kernel, per pass and density.

    python -m benchmarks.sparse_conv --out benchmarks/results/sparse_conv_cpu.json
    python -m benchmarks.sparse_conv --ticket 0.1074   # each layer at a ResNet-20 ticket's density

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

from benchmarks.common import environment, median, parse_checked, timed, write_json
from lottery_kd.runtime.malloc_tuning import reexec_with_malloc_tuning

# (height = width, in channels, out channels, stride, kernel size) of ResNet-20/56/110's pruned
# convolutions: the 3x3 layers after the stem and the 1x1 projection shortcuts
SHAPES = [(32, 16, 16, 1, 3), (32, 16, 32, 2, 3), (16, 32, 32, 1, 3), (16, 32, 64, 2, 3),
          (8, 64, 64, 1, 3), (32, 16, 32, 2, 1), (16, 32, 64, 2, 1)]
DENSITIES = (1.0, 0.5, 0.2, 0.1074, 0.05, 0.02)


def _passes(stride: int, size: int, with_auto: bool = False):
    """{pass: {"dense": fn, "sparse": fn, "sparse_nchw": fn[, "auto": fn]}} of jitted fn(x, w,
    mask, dy), and the dense impl. "auto" is masked_conv's own choice per call (the sparse loops
    below the crossover density, the dense kernels above), what a training step runs."""
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
    auto = {
        "forward": lambda x, w, m, dy: sc.forward(x, w, stride, padding, "auto"),
        "input_grad": lambda x, w, m, dy: sc.input_grad(dy, w, stride, padding, x.shape, "auto"),
        "filter_grad": lambda x, w, m, dy: sc.filter_grad(x, dy, m, stride, padding, "auto"),
        "backward": lambda x, w, m, dy: sc.backward(x, dy, w, m, stride, padding, "auto"),
    }
    return {name: {"dense": jax.jit(dense[name]), "sparse": jax.jit(sparse[name]),
                   "sparse_nchw": jax.jit(cm[name]),
                   **({"auto": jax.jit(auto[name])} if with_auto else {})}
            for name in dense}, impl


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


def ticket_layers(model_name: str, density: float) -> dict[tuple, tuple[float, int]]:
    """{SHAPES entry: (mean density, layer count)} of `model_name`'s pruned convolutions (the
    stem's 3 input channels are left out: it is not in SHAPES) in a global-magnitude ticket at
    `density` overall, pruned from the initial weights as benchmarks.sparse prunes them."""
    import jax

    from benchmarks.common import resnet_steps

    setup = resnet_steps(model_name, "native", "fused", 1.0 - density)
    by_kernel = {(size, cin, cout): (hw, cin, cout, stride, size)
                 for hw, cin, cout, stride, size in SHAPES}
    found: dict[tuple, list[float]] = {}
    for kernel, mask in zip(jax.tree.leaves(setup.params), jax.tree.leaves(setup.masks)):
        if kernel.ndim == 4 and (kernel.shape[0], *kernel.shape[2:]) in by_kernel:
            shape = by_kernel[(kernel.shape[0], *kernel.shape[2:])]
            found.setdefault(shape, []).append(float(mask.mean()))
    return {shape: (sum(d) / len(d), len(d)) for shape, d in found.items()}


def measure(batch: int, steps: int, repeats: int, densities: tuple[float, ...],
            ticket: dict[tuple, tuple[float, int]] | None = None) -> list[dict]:
    """Records of every shape at every density, or with `ticket` (ticket_layers) each shape at
    its own density only, with its layer count and the auto path (dense above the crossover)."""
    import jax
    import numpy as np

    from lottery_kd.kernels import sparse_conv as sc

    if not sc.native_available():
        raise SystemExit("the native kernel is unavailable here: " + sc._load()[1])
    records = []
    for hw, cin, cout, stride, size in SHAPES:
        if ticket is not None and (hw, cin, cout, stride, size) not in ticket:
            continue
        keys = jax.random.split(jax.random.key(hw * cin + cout + size), 4)
        x = jax.random.normal(keys[0], (batch, hw, hw, cin))
        kernel = jax.random.normal(keys[1], (size, size, cin, cout)) * 0.1
        out = sc.out_size(hw, size, stride, (size - 1) // 2)
        dy = jax.random.normal(keys[2], (batch, out, out, cout))
        passes, impl = _passes(stride, size, with_auto=ticket is not None)
        layer = ticket.get((hw, cin, cout, stride, size)) if ticket is not None else None
        for density in (layer[0],) if layer else densities:
            mask = (jax.random.uniform(keys[3], kernel.shape) < density).astype(np.float32)
            nhwc = (x, kernel * mask, mask, dy)
            nchw = (x.transpose(0, 3, 1, 2), kernel * mask, mask, dy.transpose(0, 3, 1, 2))
            args = {"dense": nhwc, "sparse": nhwc, "sparse_nchw": nchw, "auto": nhwc}
            for pass_name, impls in passes.items():
                outputs, ms = _time_pair(impls, args, steps, repeats)
                extra = ({"layers": layer[1], "auto_ms": round(ms["auto"], 3),
                          "speedup_auto": round(ms["dense"] / ms["auto"], 2)} if layer else {})
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
                                                     / max(np.max(np.abs(a)), 1e-30)), **extra})
                print(json.dumps(records[-1]), file=sys.stderr, flush=True)
    return records


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.sparse_conv",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=5, help="calls per timed block")
    parser.add_argument("--repeats", type=int, default=3, help="timed blocks per implementation")
    parser.add_argument("--densities", default=",".join(map(str, DENSITIES)))
    parser.add_argument("--ticket", type=float, default=0.0,
                        help="instead of --densities: each layer shape at the density a "
                        "global-magnitude ticket of --model at this overall density gives it, "
                        "with its layer count and the auto path; totals per pass")
    parser.add_argument("--model", default="resnet20", help="with --ticket")
    parser.add_argument("--note", default="", help="recorded as is, e.g. what else ran")
    parser.add_argument("--out", default="")
    args = parse_checked(parser, argv)
    if not 0.0 <= args.ticket < 1.0:
        parser.error(f"--ticket {args.ticket}: an overall density in (0, 1), e.g. 0.1074")
    densities = tuple(float(d) for d in args.densities.split(",") if d)
    ticket = ticket_layers(args.model, args.ticket) if args.ticket else None
    records = measure(args.batch_size, args.steps, args.repeats, densities, ticket)
    report = {"benchmark": "sparse_conv", "note": args.note, **environment(), "records": records}
    if ticket:
        report["ticket"] = {"model": args.model, "density": args.ticket,
                            "totals_ms": ticket_totals(records)}
    write_json(report, args.out, args)


def ticket_totals(records: list[dict]) -> dict[str, dict[str, float]]:
    """{pass: {impl: ms}}: each implementation's time summed over the ticket's layers (a
    shape's record times its layer count), the stem left out."""
    totals: dict[str, dict[str, float]] = {}
    for record in records:
        into = totals.setdefault(record["pass"], {"dense": 0.0, "sparse": 0.0, "auto": 0.0})
        for impl in into:
            into[impl] = round(into[impl] + record[f"{impl}_ms"] * record["layers"], 3)
    return totals


if __name__ == "__main__":
    reexec_with_malloc_tuning()  # as the training entry points run (runtime.malloc_tuning)
    main()
