"""Train-step and inference images/s against density: the dense native path and the sparse path.

    python -m benchmarks.sparse --models resnet20 --densities 1,0.5,0.2,0.1074,0.05,0.02 \
        --out benchmarks/results/sparse_cpu.json [--structures unstructured,block:16]

For each model (batch 128, CIFAR shapes): global magnitude masks at each density (conv weights,
shortcuts included; --scope conv_no_shortcut: the renda protocol's, shortcuts dense) on the
model's initial weights; one compiled cross-entropy train step and one
inference function per conv_impl ("native": the dense kernels, "sparse": the masked kernels that
skip pruned weights, each layer dense above its crossover), the masks an argument, so every
density runs the same compiled code. Timed in alternating blocks (native, sparse, native, ...)
after an untimed block each; medians. Records: model, density, structure (--structures: block:B
and unstructured at each density below 1, N:M at N/M), pass (train | infer), impl,
images_per_sec, default (whether it is the path a study uses by default, model.conv_impl
'auto'), the speed-up over the same impl at density 1, and flops_kept (the share of the
multiply-adds the masks keep: global magnitude masks keep 21 % of ResNet-20's at density
0.1074). Where torch is installed, PyTorch eager's dense train step and inference
(benchmarks.compare_pytorch's network) are recorded beside them at density 1 (impl
"pytorch_eager"). The inference pass also times the deployable
ticket (impl "export"): the masked network written by lottery_kd.export (BatchNorm folded into
the convolutions) and run by export.load's predict function, on the masked kernels.
"""

from __future__ import annotations

import argparse
import sys
from typing import Callable

from benchmarks.common import (environment, median, parse_checked, timed, write_json,
                               write_partial)
from lottery_kd.runtime.malloc_tuning import reexec_with_malloc_tuning

IMPLS = ("native", "sparse")
DEFAULT_IMPL = "native"  # what model.conv_impl='auto' runs on one CPU device


def _compiled(model_name: str, impl: str, batch: int) -> dict:
    """The train step and the inference function of `model_name` under `impl`, compiled."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from benchmarks.common import resnet_steps
    from lottery_kd.sparsity import masks as masks_lib
    from lottery_kd.training.steps import TrainState

    setup = resnet_steps(model_name, impl, "fused", 0.0)
    rng = np.random.default_rng(0)
    images = jnp.asarray(rng.integers(0, 256, (batch, 32, 32, 3), dtype=np.uint8))
    labels = jnp.asarray(rng.integers(0, 10, batch).astype(np.int32))
    lr = jnp.float32(0.1)
    step = jax.jit(lambda state, masks: setup.ce(state, masks, images, labels, lr, {}),
                   donate_argnums=(0,))
    infer = jax.jit(lambda params, stats, masks: setup.model.apply(
        {"params": masks_lib.apply(params, masks), "batch_stats": stats},
        images.astype(jnp.float32) / 64.0 - 2.0, train=False))

    def state_for(masks):
        return TrainState(jnp.asarray(0), masks_lib.apply(setup.params, masks),
                          jax.tree.map(lambda x: jnp.array(x, copy=True), setup.batch_stats),
                          setup.optimizer.init(setup.params))
    return {"setup": setup, "step": step, "infer": infer, "state_for": state_for,
            "images": images}


def _masks(setup, density: float, structure: str = "unstructured", scope: str = "conv"):
    from lottery_kd.sparsity import pruning
    if density >= 1.0:
        return setup.dense_masks
    return pruning.get("magnitude_global")(setup.params, setup.dense_masks, 1.0 - density,
                                           structure=structure, scope=scope)


def _exported(model_name: str, setup, masks, images) -> Callable[[], object]:
    """The deployable ticket's inference (lottery_kd.export: BatchNorm folded into the kernels,
    written to an .npz and loaded back, on the masked kernels): a call on `images`."""
    import tempfile

    import jax

    from benchmarks.common import CIFAR_NORMALIZATION
    from lottery_kd import export
    snapshot = jax.device_get({"params": setup.params, "batch_stats": setup.batch_stats,
                               "masks": masks})
    mean, std = CIFAR_NORMALIZATION
    with tempfile.TemporaryDirectory(prefix="sparse_bench_") as folder:
        path = f"{folder}/ticket.npz"
        export.write_ticket(path, snapshot, {
            "model": model_name, "classes": 10, "input_shape": [32, 32, 3],
            "norm_impl": "fused", "normalization": {"mean": list(mean), "std": list(std)}})
        ticket = export.load(path)
    return lambda: ticket.predict(images)


def cells(densities: list[float], structures: list[str]) -> list[tuple[float, str]]:
    """The (density, structure) pairs measured: density 1 once (unstructured), N:M only at its
    own density N/M, block:B and unstructured at every density below 1."""
    from lottery_kd.sparsity import structure as structure_lib
    out = []
    for density in densities:
        for text in structures:
            fixed = structure_lib.parse(text).fixed_sparsity
            if density >= 1.0:
                keep = text == "unstructured"
            else:
                keep = fixed is None or abs(1.0 - fixed - density) < 1e-9
            if keep:
                out.append((density, text))
    return out


def measure(model_name: str, densities: list[float], batch: int, steps: int,
            repeats: int, structures: tuple[str, ...] = ("unstructured",),
            scope: str = "conv") -> list[dict]:
    """Every (density, structure, pass, impl) of one model, the impls alternating in each cell."""
    import jax

    from benchmarks.common import cifar_layer_flops
    built = {impl: _compiled(model_name, impl, batch) for impl in IMPLS}
    layer_flops = cifar_layer_flops(model_name)  # once per model, not per density
    records = []
    for density, structure in cells(densities, list(structures)):
        masks = _masks(built[IMPLS[0]]["setup"], density, structure, scope)
        kept = flops_kept(layer_flops, masks)
        for pass_name in ("train", "infer"):
            calls = {}
            for impl, parts in built.items():
                if pass_name == "train":
                    holder = {"state": parts["state_for"](masks)}

                    def call(parts=parts, holder=holder):
                        holder["state"], out = parts["step"](holder["state"], masks)
                        return out
                else:
                    params, stats = parts["setup"].params, parts["setup"].batch_stats

                    def call(parts=parts, params=params, stats=stats):
                        return parts["infer"](params, stats, masks)
                calls[impl] = call
            if pass_name == "infer":
                setup = built["native"]["setup"]
                calls["export"] = _exported(model_name, setup, masks, built["native"]["images"])
            seconds = {impl: [] for impl in calls}
            for repeat in range(-1, repeats):
                for impl, call in calls.items():
                    took = timed(lambda call=call: [call() for _ in range(steps)][-1],
                                 jax.block_until_ready)
                    if repeat >= 0:
                        seconds[impl].append(took)
            for impl in calls:
                records.append({"model": model_name, "density": density, "scope": scope,
                                "structure": structure, "pass": pass_name, "impl": impl,
                                "default": impl == DEFAULT_IMPL, "batch": batch,
                                "flops_kept": kept,
                                "images_per_sec": round(steps * batch / median(seconds[impl]),
                                                        1)})
    records += _pytorch_records(model_name, batch, steps)
    for record in records:
        base = next((r for r in records if r["density"] == max(densities)
                     and r["pass"] == record["pass"] and r["impl"] == record["impl"]),
                    record)  # PyTorch: dense only, its one record its own base
        record["speedup_over_densest"] = round(record["images_per_sec"]
                                               / base["images_per_sec"], 3)
    return records


def flops_kept(layer_flops: dict[str, int], masks: dict) -> float:
    """The share of the network's multiply-adds that the masks keep (lottery_kd.models.flops:
    every kernel, convolutions and fc). Global magnitude masks keep more of the early, costly
    layers, so this exceeds the density, and 1 / flops_kept bounds what skipping the pruned
    weights can gain on the convolutions."""
    from lottery_kd.models import flops
    from lottery_kd.sparsity import masks as masks_lib
    counted = flops.train_flops(layer_flops, masks_lib.layer_counts(masks, "conv"), steps=1,
                                batch_size=1)
    return round(counted["sparse"] / counted["dense"], 4)


def _pytorch_records(model_name: str, batch: int, steps: int) -> list[dict]:
    """PyTorch eager's dense train step and inference (benchmarks.compare_pytorch), where torch
    is installed and has the model (bottleneck networks are not built there); else none."""
    try:
        import torch  # noqa: F401
    except ImportError:
        return []
    if "bottleneck" in model_name:
        return []
    from benchmarks.compare_pytorch import measure_torch
    measured = measure_torch(model_name, batch, max(steps, 5))
    return [{"model": model_name, "density": 1.0, "pass": name, "impl": "pytorch_eager",
             "default": False, "batch": batch,
             "images_per_sec": round(measured[f"{key}_images_per_sec"], 1)}
            for name, key in (("train", "train"), ("infer", "eval"))]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.sparse",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--models", default="resnet20")
    parser.add_argument("--densities", default="1,0.5,0.2,0.1074,0.05,0.02")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=3, help="steps per timed block")
    parser.add_argument("--repeats", type=int, default=5, help="timed blocks per impl")
    parser.add_argument("--structures", default="unstructured",
                        help="prune.structure values, e.g. unstructured,block:16,2:4")
    parser.add_argument("--scope", default="conv", choices=("conv", "conv_no_shortcut"),
                        help="what is pruned: conv (shortcuts too) or conv_no_shortcut (renda)")
    parser.add_argument("--out", default="")
    args = parse_checked(parser, argv)
    structures = tuple(args.structures.split(","))
    try:
        from lottery_kd.sparsity import structure as structure_lib
        [structure_lib.parse(text) for text in structures]
    except ValueError as error:
        raise SystemExit(f"--structures: {error}") from None
    try:
        densities = sorted({float(d) for d in args.densities.split(",")}, reverse=True)
    except ValueError:
        raise SystemExit(f"--densities {args.densities!r}: give numbers in (0, 1]") from None
    if not densities or not all(0 < d <= 1 for d in densities):
        raise SystemExit(f"--densities {args.densities!r}: give numbers in (0, 1]")
    reexec_with_malloc_tuning()
    records, header = [], {"benchmark": "sparse", "environment": environment()}
    for model_name in args.models.split(","):
        records += measure(model_name, densities, args.batch, args.steps, args.repeats,
                           structures, args.scope)
        for r in records:
            if r["model"] == model_name:
                print(f"{model_name} density {r['density']:<7g} {r.get('structure', ''):<12} "
                      f"{r['pass']:<5} {r['impl']:<6} "
                      f"{r['images_per_sec']:8.1f} img/s  x{r['speedup_over_densest']:.2f}",
                      file=sys.stderr)
        write_partial({**header, "records": records}, args.out, args)
    write_json({**header, "records": records}, args.out, args)


if __name__ == "__main__":
    main()
