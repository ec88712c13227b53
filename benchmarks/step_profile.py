"""Where a train step's time goes: milliseconds per step of each kernel, from a profiler trace.

    python -m benchmarks.step_profile --model resnet20 --conv-impl sparse --density 0.1074
    python -m benchmarks.step_profile --conv-impl native --out FILE

Traces `--steps` cross-entropy steps of the renda protocol's step (per-image normalisation, batch
128, global magnitude masks of the initial network at `--density`) with jax.profiler, maps each
traced XLA op to its native kernel (the ffi call's target: the sparse or dense convolutions, the
fused BatchNorm) or its fusion kind, and reports milliseconds per step and the share of each.
`--infer` profiles the masked network's eval forward pass (inference) the same way.
Run it on an otherwise idle machine: a kernel's share is only as good as the machine is quiet.
"""

from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import re
import tempfile
import time

from benchmarks.common import environment, parse_checked, resnet_steps, write_json
from lottery_kd.runtime.malloc_tuning import reexec_with_malloc_tuning

# Steps run before timing: the sparse step settles after ~10 (245 ms for steps 2-9, then 165 ms,
# ResNet-20 at density 0.1074 on the idle AMD EPYC), the first compiles.
WARM_UP_STEPS = 12
SKIPPED = ("ThunkExecutor", "Threadpool", "PjitFunction", "end: ")


def op_kinds(hlo_text: str) -> dict[str, str]:
    """HLO op name -> what it runs: the custom-call target of an ffi call, else its kind (the
    name without its number, e.g. transpose_copy_fusion)."""
    return {m.group(1): m.group(2) for m in
            re.finditer(r"%?([\w.-]+) = [^\n]*?custom_call_target=\"(\w+)\"", hlo_text)}


def kind_of(name: str, kinds: dict[str, str]) -> str:
    return kinds.get(name, re.sub(r"[._]\d+$", "", name))


def aggregate(events: list[dict], kinds: dict[str, str], steps: int) -> list[dict]:
    """Per kind: ms per step, calls per step and share of the traced op time, largest first."""
    total, calls = collections.Counter(), collections.Counter()
    for event in events:
        name = event.get("name", "")
        if (event.get("ph") != "X" or "dur" not in event or name.startswith("$")
                or any(part in name for part in SKIPPED)):
            continue
        total[kind_of(name, kinds)] += event["dur"]
        calls[kind_of(name, kinds)] += 1
    whole = sum(total.values()) or 1.0
    return [{"kind": kind, "ms_per_step": round(us / steps / 1000, 3),
             "calls_per_step": round(calls[kind] / steps, 2), "share": round(us / whole, 4)}
            for kind, us in total.most_common()]


def _step(setup, images, labels, infer: bool):
    """(jitted step(state, masks) -> (state, output), its first state): the cross-entropy train
    step, or with `infer` the eval forward pass of the masked network (state passed through)."""
    import jax
    import jax.numpy as jnp

    from lottery_kd.sparsity import masks as masks_lib
    from lottery_kd.training.steps import TrainState
    if infer:  # the inference pass a KD step runs for its teacher, here on the masked network
        def forward(state, masks):
            variables = {"params": masks_lib.apply(state[0], masks), "batch_stats": state[1]}
            return state, setup.teacher_forward(variables, images)
        return jax.jit(forward), (setup.params, setup.batch_stats)
    step = jax.jit(lambda s, m: setup.ce(s, m, images, labels, jnp.float32(0.1), {}),
                   donate_argnums=(0,))
    return step, TrainState(jnp.asarray(0), masks_lib.apply(setup.params, setup.masks),
                            setup.batch_stats, setup.optimizer.init(setup.params))


def overlapped_share(events: list[dict], kinds: dict[str, str]) -> float:
    """The share of the native kernels' traced time during which another native kernel runs too
    (XLA:CPU runs independent ops at once: two gradient calls of a layer may overlap, one
    combined call cannot)."""
    spans = sorted((e["ts"], e["ts"] + e["dur"]) for e in events
                   if e.get("ph") == "X" and "dur" in e
                   and kind_of(e.get("name", ""), kinds).startswith("lottery_kd_"))
    total = sum(end - start for start, end in spans) or 1.0
    shared = 0.0
    for i, (start, end) in enumerate(spans):
        reach = start  # the union of the other kernels' time inside this one (spans sorted)
        for j, (s, e) in enumerate(spans):
            if s >= end:
                break
            if j != i and e > reach:
                shared += min(end, e) - max(s, reach)
                reach = min(end, e)
    return round(shared / total, 4)


def profile(model_name: str, conv_impl: str, density: float, batch: int, steps: int,
            infer: bool = False) -> dict:
    import jax
    import jax.numpy as jnp
    import numpy as np

    setup = resnet_steps(model_name, conv_impl, "fused", 1.0 - density if density < 1 else 0.0,
                         normalization="per_image")
    rng = np.random.default_rng(0)
    images = jnp.asarray(rng.integers(0, 256, (batch, 32, 32, 3), dtype=np.uint8))
    labels = jnp.asarray(rng.integers(0, 10, batch).astype(np.int32))
    step, state = _step(setup, images, labels, infer)
    kinds = op_kinds(step.lower(state, setup.masks).compile().as_text())
    for _ in range(WARM_UP_STEPS):
        state, metrics = step(state, setup.masks)
    jax.block_until_ready(metrics)
    began = time.perf_counter()
    for _ in range(steps):
        state, metrics = step(state, setup.masks)
    jax.block_until_ready(metrics)
    untraced_ms = (time.perf_counter() - began) / steps * 1000
    with tempfile.TemporaryDirectory() as trace_dir:
        with jax.profiler.trace(trace_dir):
            for _ in range(steps):
                state, metrics = step(state, setup.masks)
            jax.block_until_ready(metrics)
        trace = glob.glob(f"{trace_dir}/**/*.trace.json.gz", recursive=True)[0]
        with gzip.open(trace) as f:
            events = json.load(f)["traceEvents"]
    rows = aggregate(events, kinds, steps)
    overlapped = overlapped_share(events, kinds)
    return {"model": model_name, "pass": "infer" if infer else "train",
            "conv_impl": conv_impl, "density": density, "batch": batch,
            "steps": steps, "step_ms_untraced": round(untraced_ms, 2),
            "op_ms_per_step": round(sum(r["ms_per_step"] for r in rows), 2),
            "kernel_time_overlapped": overlapped, "ops": rows}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.step_profile",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="resnet20")
    parser.add_argument("--conv-impl", default="sparse",
                        help="model.conv_impl: sparse, native, auto or xla")
    parser.add_argument("--density", type=float, default=0.1074,
                        help="fraction of conv weights kept, in (0, 1] (1: dense masks)")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--infer", action="store_true",
                        help="profile the eval forward pass (inference) instead of a train step")
    parser.add_argument("--out", default="")
    args = parse_checked(parser, argv)  # --density in (0, 1], --steps and --batch-size >= 1
    reexec_with_malloc_tuning()  # as the training entry points run (runtime.malloc_tuning)
    record = profile(args.model, args.conv_impl, args.density, args.batch_size, args.steps,
                     args.infer)
    write_json({"benchmark": "step_profile", **environment(), "records": [record]}, args.out, args)


if __name__ == "__main__":
    main()
