"""How fast do two float32 summation orders of the same training drift apart? (issue 20)

Trains one study's starting point for a few steps on the same real CIFAR-10 batches on three
convolution paths (XLA's, the dense native kernels, the sparse kernels) and prints, per step, the
relative distance of the weights and of the BatchNorm statistics between XLA and native and
between native and sparse. The paths compute the same function (their gradients agree to ~1e-6),
so any accuracy difference after training comes from chaos, not bias, if sparse drifts from native
no faster than native drifts from XLA.

    python docs/results/sparse_kernels_divergence.py WORKDIR [--masks SNAPSHOT] [--steps 12]

WORKDIR: a finished shrunk study (its `init` snapshot is the start); --masks takes the masks of
another snapshot (a ticket, e.g. level_10_lt) to train the ticket from init instead of the dense
network; needs ../shared/data/cifar10 or --data.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from lottery_kd.data.cifar import load_local  # noqa: E402
from lottery_kd.models import get_model  # noqa: E402
from lottery_kd.study.checkpoints import read_snapshot  # noqa: E402
from lottery_kd.training import optim  # noqa: E402
from lottery_kd.training.steps import TrainState, make_train_step  # noqa: E402

PATHS = ("xla", "native", "sparse")


def trajectory(impl: str, snapshot: dict, masks: dict, images: np.ndarray, labels: np.ndarray,
               steps: int, batch: int = 128) -> list[tuple[dict, dict]]:
    """(params, batch_stats) after each of `steps` SGD steps (lr 0.1, momentum 0.9, wd 2e-4: the
    renda protocol's first phase) on path `impl`, batches taken in record order."""
    model = get_model("resnet20", 10, conv_impl=impl)
    optimizer = optim.sgd_direction(0.9, 2e-4)
    step = make_train_step(model, optimizer, None, normalization=(None, None))
    params = jax.tree.map(jnp.asarray, snapshot["params"])
    state = TrainState(jnp.asarray(0), params, jax.tree.map(jnp.asarray, snapshot["batch_stats"]),
                       optimizer.init(params))
    masks = jax.tree.map(jnp.asarray, masks)
    out = []
    for i in range(steps):
        state, _ = step(state, masks, jnp.asarray(images[i * batch:(i + 1) * batch]),
                        jnp.asarray(labels[i * batch:(i + 1) * batch]), jnp.float32(0.1), {})
        out.append((jax.tree.map(np.asarray, state.params),
                    jax.tree.map(np.asarray, state.batch_stats)))
    return out


def relative_distance(a: dict, b: dict) -> float:
    """||a - b|| / ||a|| over all leaves, in float64."""
    pairs = list(zip(jax.tree.leaves(a), jax.tree.leaves(b)))
    num = sum(np.sum((x.astype(np.float64) - y) ** 2) for x, y in pairs)
    return float(np.sqrt(num / sum(np.sum(x.astype(np.float64) ** 2) for x, _ in pairs)))


def main() -> None:
    parser = argparse.ArgumentParser(prog="python docs/results/sparse_kernels_divergence.py",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("workdir", type=Path)
    parser.add_argument("--masks", default=None, help="snapshot whose masks to train under")
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--data", default="../shared/data/cifar10")
    args = parser.parse_args()
    snapshots = args.workdir / "checkpoints" / "snapshots"
    for name in ["init"] + ([args.masks] if args.masks else []):
        if not (snapshots / name).is_dir():
            parser.error(f"{args.workdir}: no snapshot {name!r} in {snapshots}; pass a study's "
                         "workdir (and --masks one of its snapshots)")
    if args.steps < 1:
        parser.error(f"--steps {args.steps}: at least 1")
    start = read_snapshot(snapshots / "init")
    masks = read_snapshot(snapshots / args.masks)["masks"] if args.masks else start["masks"]
    images, labels = load_local(args.data, "train")
    runs = {impl: trajectory(impl, start, masks, images, labels, args.steps) for impl in PATHS}
    print("| step | weights: native vs xla | weights: sparse vs native "
          "| BN stats: native vs xla | BN stats: sparse vs native |")
    print("| --- | --- | --- | --- | --- |")
    for i in range(args.steps):
        cells = [relative_distance(runs[a][i][k], runs[b][i][k])
                 for k in (0, 1) for a, b in (("native", "xla"), ("sparse", "native"))]
        print(f"| {i + 1} | " + " | ".join(f"{c:.1e}" for c in cells) + " |")


if __name__ == "__main__":
    main()
