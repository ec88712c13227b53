"""Train-step and eval throughput of the CIFAR ResNets: dense, masked and masked + KD, side by side.

    python -m benchmarks.train_step --models resnet20,resnet56,resnet110 \
        --out benchmarks/results/train_step_cpu.json

Each model runs in its own process. In it, three jitted train steps are compiled (compile time
recorded) and then timed in alternating blocks, so the ratios are measured side by side:

- dense: the library's train step with all-true masks baked in as constants (XLA folds the mask
  selects away: the cost of the step without masking);
- masked: the library's step with the masks as an argument, at --sparsity (magnitude_global);
- masked_kd: the same plus the KD loss, the teacher (same architecture) run in inference mode;
- masked_kd_fill: the KD step of a run that fills the teacher-logit cache (training.
  teacher_cache): the teacher's forward on its own, then the step fed its logits;
- masked_kd_cached: the KD step of a run that reads the cache (the logits given).

Plus the eval forward (inference mode). Medians over --repeats blocks of --steps steps after a
warm-up; synthetic uint8 images (throughput does not depend on pixel values). Records: model,
variant, batch, images_per_sec, compile_s (trace + lower + XLA compile, ahead of time, no
execution), and the ratios masked/dense, masked_kd/masked and masked_kd_cached/masked_kd as
time ratios (step time over step time).
"""

from __future__ import annotations

import argparse
import itertools
import json
import subprocess
import sys
import time

from benchmarks.common import (CIFAR_NORMALIZATION, environment, malloc_environment,
                               malloc_settings, median, parse_checked, resnet_steps, timed,
                               write_json, write_partial)
from lottery_kd.runtime.malloc_tuning import reexec_with_malloc_tuning


def measure(model_name: str, batch_size: int, steps: int, repeats: int, sparsity: float,
            relu: str, conv_impl: str, norm_impl: str = "fused") -> list[dict]:
    """In a child process: every variant's step for one model."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from lottery_kd.models import cifar_resnet

    if relu == "plain":  # the XLA-default form, for comparison with the select ReLU
        cifar_resnet.relu_select = jax.nn.relu
    setup = resnet_steps(model_name, conv_impl, norm_impl, sparsity)
    rng = np.random.default_rng(0)
    images = jnp.asarray(rng.integers(0, 256, (batch_size, 32, 32, 3), dtype=np.uint8))
    labels = jnp.asarray(rng.integers(0, 10, batch_size).astype(np.int32))
    calls, states, compile_s = _compiled_steps(setup, images, labels)
    seconds = _timed_blocks(calls, states, steps, repeats)
    eval_compile, eval_seconds = _timed_eval(setup, states["masked"], images, labels, steps,
                                             repeats)
    per_step = {variant: median(values) / steps for variant, values in seconds.items()}
    def head(variant: str, relu_too: bool = True) -> dict:  # the records' leading fields
        return {"model": model_name, "variant": variant, "batch": batch_size,
                **({"relu": relu} if relu_too else {}), "conv_impl": conv_impl,
                "norm_impl": norm_impl}

    sparsity_of_masks = _sparsity(setup.masks)
    records = [{**head(variant), "sparsity": 0.0 if variant == "dense" else sparsity_of_masks,
                "images_per_sec": round(batch_size / per_step[variant], 1),
                "images_per_sec_blocks": [round(steps * batch_size / s, 1)
                                          for s in seconds[variant]],
                "compile_s": round(compile_s[variant], 2)} for variant in calls]
    records.append({**head("eval"), "sparsity": sparsity_of_masks,
                    "images_per_sec": round(steps * batch_size / median(eval_seconds), 1),
                    "compile_s": round(eval_compile, 2)})
    ratios = {"masked_over_dense": ("masked", "dense"),
              "masked_kd_over_masked": ("masked_kd", "masked"),
              "masked_kd_fill_over_masked_kd": ("masked_kd_fill", "masked_kd"),
              "masked_kd_cached_over_masked_kd": ("masked_kd_cached", "masked_kd")}
    records.append({**head("ratios", relu_too=False),
                    **{name: round(per_step[a] / per_step[b], 3)
                       for name, (a, b) in ratios.items()}})
    return records


def _sparsity(masks) -> float:
    from lottery_kd.sparsity import masks as masks_lib
    return masks_lib.sparsity(masks)


def _compiled_steps(setup, images, labels) -> tuple[dict, dict, dict]:
    """Each variant's compiled step as a call on its state, its own fresh state (the steps
    donate theirs) and its compile seconds (trace + lower + XLA compile, no execution)."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from lottery_kd.sparsity import masks as masks_lib
    from lottery_kd.training.steps import TrainState

    params, masks, lr = setup.params, setup.masks, jnp.float32(0.1)
    constant_true = jax.tree.map(lambda m: np.ones(m.shape, bool), setup.dense_masks)
    dense = jax.jit(lambda state, images, labels, lr: setup.ce(
        state, constant_true, images, labels, lr, {}), donate_argnums=(0,))
    teacher = {"params": params, "batch_stats": setup.batch_stats}

    def fresh_state(step_masks):  # own buffers: the steps donate their state
        return TrainState(jnp.asarray(0), masks_lib.apply(params, step_masks),
                          jax.tree.map(lambda x: jnp.array(x, copy=True), setup.batch_stats),
                          setup.optimizer.init(params))

    began = time.perf_counter()
    forward = setup.teacher_forward.lower(teacher, images).compile()
    forward_compile = time.perf_counter() - began
    logits = forward(teacher, images)

    def fill(state, *args):  # a cache-filling run's step: the teacher, then the student
        return compiled_steps["masked_kd_cached"](state, *args[:-1], forward(teacher, images))

    arguments = {"dense": (dense, lambda s: (s, images, labels, lr)),
                 "masked": (setup.ce, lambda s: (s, masks, images, labels, lr, {})),
                 "masked_kd": (setup.kd, lambda s: (s, masks, images, labels, lr, teacher)),
                 "masked_kd_cached": (setup.kd_logits,
                                      lambda s: (s, masks, images, labels, lr, logits)),
                 "masked_kd_fill": (fill, lambda s: (s, masks, images, labels, lr, logits))}
    calls, states, compile_s, compiled_steps = {}, {}, {}, {}
    for variant, (step, args) in arguments.items():
        state = fresh_state(setup.dense_masks if variant == "dense" else masks)
        began = time.perf_counter()
        if variant == "masked_kd_fill":  # both halves, compiled above
            compiled, compile_s[variant] = step, forward_compile + compile_s["masked_kd_cached"]
        else:
            compiled = step.lower(*args(state)).compile()
            compile_s[variant] = time.perf_counter() - began
        compiled_steps[variant] = compiled
        calls[variant] = lambda s, compiled=compiled, args=args: compiled(*args(s))
        states[variant] = state
    return calls, states, compile_s


def _timed_blocks(calls: dict, states: dict, steps: int, repeats: int) -> dict[str, list]:
    """Seconds of each of `repeats` blocks of `steps` steps per variant, the variants taking
    turns block by block. A whole untimed block of each first: the first steps after compiling
    run slowest (malloc growing its heap, caches), by up to 20% on the 2-core VM."""
    import jax

    seconds = {variant: [] for variant in calls}
    for repeat in range(-1, repeats):
        for variant, call in calls.items():
            def block(variant=variant, call=call):
                out = None
                for _ in range(steps):
                    states[variant], out = call(states[variant])
                return out
            took = timed(block, jax.block_until_ready)
            if repeat >= 0:
                seconds[variant].append(took)
    return seconds


def _timed_eval(setup, state, images, labels, steps: int, repeats: int
                ) -> tuple[float, list[float]]:
    """The eval forward's compile seconds and the seconds of `repeats` blocks of `steps`."""
    import jax
    import jax.numpy as jnp

    from lottery_kd.training.steps import make_eval_step

    evaluate = make_eval_step(setup.model, *CIFAR_NORMALIZATION)
    eval_args = (state.params, state.batch_stats, setup.masks, images, labels,
                 jnp.ones(images.shape[0], bool))
    began = time.perf_counter()
    evaluate = evaluate.lower(*eval_args).compile()
    eval_compile = time.perf_counter() - began
    jax.block_until_ready(evaluate(*eval_args))
    return eval_compile, [timed(lambda: [evaluate(*eval_args) for _ in range(steps)][-1],
                                jax.block_until_ready) for _ in range(repeats)]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.train_step",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--models", default="resnet20,resnet56,resnet110")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=5, help="steps per timed block")
    parser.add_argument("--repeats", type=int, default=3, help="timed blocks per variant")
    parser.add_argument("--sparsity", type=float, default=0.8)
    parser.add_argument("--relu", default="select", choices=("select", "plain"),
                        help="the block-closing ReLU under --norm-impls flax (plain: max(z, 0), "
                             "XLA's slow case on CPU); the fused BatchNorm applies its own")
    parser.add_argument("--conv-impls", default="auto",
                        help="comma-separated model.conv_impl values to run, each in its own "
                             "process (xla,auto gives XLA's convs and the native kernel)")
    parser.add_argument("--norm-impls", default="fused",
                        help="comma-separated model.norm_impl values to run, each with every "
                             "--conv-impls value in its own process (flax,fused)")
    parser.add_argument("--mallocs", default="tuned",
                        help="comma-separated malloc settings, each with every model and impl "
                             "in its own process: tuned (the entry points' default, "
                             "lottery_kd.runtime.malloc_tuning), huge_pages, glibc")
    parser.add_argument("--out", default="")
    parser.add_argument("--child", default="", help=argparse.SUPPRESS)
    args = parse_checked(parser, argv)
    if args.relu == "plain" and any(n.strip() != "flax" for n in args.norm_impls.split(",")):
        parser.error("--relu plain changes the ReLU of --norm-impls flax only (the fused "
                     "BatchNorm closes each block with its own ReLU): add --norm-impls flax")
    mallocs = malloc_settings(args.mallocs)
    if args.child:
        print(json.dumps(measure(args.child, args.batch_size, args.steps, args.repeats,
                                 args.sparsity, args.relu, args.conv_impls, args.norm_impls)))
        return
    records, header = [], {"benchmark": "train_step", **environment()}
    for model, conv_impl, norm_impl, malloc in itertools.product(
            args.models.split(","), args.conv_impls.split(","), args.norm_impls.split(","),
            mallocs):
        command = [sys.executable, "-m", "benchmarks.train_step", "--child", model,
                   "--batch-size", str(args.batch_size), "--steps", str(args.steps),
                   "--repeats", str(args.repeats), "--sparsity", str(args.sparsity),
                   "--relu", args.relu, "--conv-impls", conv_impl, "--norm-impls", norm_impl]
        environ = malloc_environment(malloc)
        done = subprocess.run(command, capture_output=True, text=True, env=environ)
        if done.returncode != 0:
            raise SystemExit(f"{model} failed:\n{done.stderr[-3000:]}")
        rows = json.loads(done.stdout.strip().splitlines()[-1])
        for row in rows:
            row.update(malloc=malloc, malloc_tunables=environ.get("GLIBC_TUNABLES", ""))
            print(json.dumps(row), file=sys.stderr, flush=True)
        records += rows
        write_partial({**header, "records": records}, args.out, args)
    write_json({**header, "records": records}, args.out, args)


if __name__ == "__main__":
    reexec_with_malloc_tuning()  # as the training entry points run (runtime.malloc_tuning)
    main()
