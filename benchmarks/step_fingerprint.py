"""A fingerprint of the training arithmetic: the hash of the full train state after a few steps.

    python -m benchmarks.step_fingerprint --model resnet20 --norm-impl flax
    python -m benchmarks.step_fingerprint --normalization per_image   # the renda protocol's step

Run it at two commits (same machine, same libraries): equal hashes mean a change kept every
float of training bit for bit, so a study may resume across it without mixing arithmetic.
The masks are 80% sparse unless `--sparsity` says otherwise: the sparse path picks its kernels
by density, so check a dense run with `--sparsity 0` (a crossover change moves the 80%
fingerprint of `--conv-impl sparse` but not a density-1 run's arithmetic).
That is how the kernel speed-ups that landed while the CPU reproduction was running
(docs/results.md) were checked. The steps alternate masked cross-entropy and masked KD steps
(80% sparse global magnitude masks by default, the teacher being the initial network) on fixed
random batches.
"""

from __future__ import annotations

import argparse
import hashlib

from benchmarks.common import environment, parse_checked, resnet_steps, write_json


def fingerprint(model_name: str, conv_impl: str, norm_impl: str, steps: int,
                batch_size: int, normalization: str = "channel", sparsity: float = 0.8) -> str:
    import jax
    import jax.numpy as jnp
    import numpy as np

    from lottery_kd.sparsity import masks as masks_lib

    from lottery_kd.training.steps import TrainState

    setup = resnet_steps(model_name, conv_impl, norm_impl, sparsity, normalization=normalization)
    params, batch_stats, optimizer, masks = (setup.params, setup.batch_stats, setup.optimizer,
                                             setup.masks)
    ce, kd = jax.jit(setup.ce), jax.jit(setup.kd)
    teacher = {"params": params, "batch_stats": batch_stats}
    state = TrainState(jnp.asarray(0), masks_lib.apply(params, masks), batch_stats,
                             optimizer.init(params))
    rng = np.random.default_rng(0)
    for step in range(steps):
        images = jnp.asarray(rng.integers(0, 256, (batch_size, 32, 32, 3), dtype=np.uint8))
        labels = jnp.asarray(rng.integers(0, 10, batch_size).astype(np.int32))
        if step % 2:
            state, _ = kd(state, masks, images, labels, jnp.float32(0.1), teacher)
        else:
            state, _ = ce(state, masks, images, labels, jnp.float32(0.1), {})
    digest = hashlib.sha256()
    for leaf in jax.tree.leaves((state.params, state.batch_stats, state.opt_state)):
        digest.update(np.asarray(leaf).tobytes())
    return digest.hexdigest()[:16]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.step_fingerprint",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="resnet20")
    parser.add_argument("--conv-impl", default="auto")
    parser.add_argument("--norm-impl", default="fused")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--normalization", default="channel", choices=("channel", "per_image"),
                        help="per_image: the step of the renda protocol's studies")
    parser.add_argument("--sparsity", type=float, default=0.8,
                        help="of the global magnitude masks (0: all weights, a dense run)")
    parser.add_argument("--out", default="")
    args = parse_checked(parser, argv)
    record = {"model": args.model, "conv_impl": args.conv_impl, "norm_impl": args.norm_impl,
              "steps": args.steps, "batch": args.batch_size,
              "normalization": args.normalization, "sparsity": args.sparsity,
              "fingerprint": fingerprint(args.model, args.conv_impl, args.norm_impl, args.steps,
                                         args.batch_size, args.normalization, args.sparsity)}
    write_json({"benchmark": "step_fingerprint", **environment(), "records": [record]}, args.out,
               args)


if __name__ == "__main__":
    main()
