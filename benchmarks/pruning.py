"""Time of one pruning level on a ResNet-50-sized tree (25.6M parameters, 23.5M in conv kernels).

    python -m benchmarks.pruning --out benchmarks/results/pruning_cpu.json

magnitude_global (one ranking over every conv weight), magnitude_layerwise and random, each on
ResNet-50's real parameter shapes with Gaussian weights, after one warm-up call; medians over
--repeats. Also SynFlow (--synflow-rounds rounds, default 10 here to keep the run short) on
ResNet-20, where its cost is the rounds of forward/backward passes.
"""

from __future__ import annotations

import argparse

from benchmarks.common import environment, median, parse_checked, timed, write_json
from lottery_kd.runtime.malloc_tuning import reexec_with_malloc_tuning


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.pruning",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--fraction", type=float, default=0.2)
    parser.add_argument("--synflow-rounds", type=int, default=10)
    parser.add_argument("--out", default="")
    args = parse_checked(parser, argv)

    import jax
    import numpy as np

    from lottery_kd.sparsity import criteria, masks as masks_lib, pruning  # noqa: F401 (registers)
    from lottery_kd.models import get_model
    from lottery_kd.training.steps import init_variables

    shapes = jax.eval_shape(lambda key: init_variables(get_model("resnet50", 1000), key,
                                                       (224, 224, 3))[0], jax.random.key(0))
    rng = np.random.default_rng(0)
    params = jax.tree.map(lambda s: rng.standard_normal(s.shape).astype(np.float32), shapes)
    masks = masks_lib.create(params)
    remaining, total = masks_lib.count(masks)
    records = []
    for method in ("magnitude_global", "magnitude_layerwise", "random"):
        fn = pruning.get(method)
        call = lambda: fn(params, masks, args.fraction, rng=jax.random.key(1))  # noqa: E731
        new = call()
        seconds = [timed(call, jax.block_until_ready) for _ in range(args.repeats)]
        records.append({"model": "resnet50", "method": method, "prunable_weights": total,
                        "removed": remaining - masks_lib.count(new)[0],
                        "seconds": round(median(seconds), 3),
                        "seconds_runs": [round(s, 3) for s in seconds]})
    model = get_model("resnet20", 10)
    small, stats = init_variables(model, jax.random.key(0), (32, 32, 3))
    small_masks = masks_lib.create(small)
    call = lambda: pruning.get("synflow")(small, small_masks, 0.9, model=model,  # noqa: E731
                                         batch_stats=stats, input_shape=(32, 32, 3),
                                         synflow_rounds=args.synflow_rounds)
    seconds = [timed(call, jax.block_until_ready) for _ in range(args.repeats)]
    records.append({"model": "resnet20", "method": "synflow", "rounds": args.synflow_rounds,
                    "seconds": round(median(seconds), 3),
                    "seconds_runs": [round(s, 3) for s in seconds]})
    write_json({"benchmark": "pruning", **environment(), "records": records}, args.out, args)


if __name__ == "__main__":
    reexec_with_malloc_tuning()  # as the training entry points run (runtime.malloc_tuning)
    main()
