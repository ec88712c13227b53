"""Shared pieces of the benchmarks: the environment record, timed blocks, JSON output."""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Callable, Optional

from lottery_kd.runtime import malloc_tuning
from lottery_kd.runtime.out_paths import check_out_file
from lottery_kd.study.jsonlines import write_atomic
from lottery_kd.runtime.environment import environment  # noqa: F401  (re-exported for the benchmarks)

# The malloc a benchmark's child processes run under (--mallocs): "tuned", what the entry points
# use (runtime.malloc_tuning); "huge_pages", only glibc.malloc.hugetlb=1 (the setting before
# the step buffers were kept mapped); "glibc", glibc's defaults.
MALLOC_SETTINGS = ("tuned", "huge_pages", "glibc")


# Options every benchmark spells alike, and what they must be (checked by parse_checked).
COUNTS = ("steps", "repeats", "rounds", "reps", "batch", "batch_size", "imagenet_batches",
          "imagenet_batch_size", "synflow_rounds")


def parse_checked(parser: argparse.ArgumentParser, argv: Optional[list[str]]
                  ) -> argparse.Namespace:
    """parser.parse_args(argv), then the options the benchmarks share checked before any
    compute, each failure one line and exit 2 (parser.error): counts at least 1, --sparsity in
    [0, 1), --fraction and --density in (0, 1) and (0, 1], --model/--models known, and --out a
    file that can be written (not found out only when the results are)."""
    from lottery_kd.models import MODEL_NAMES
    args = parser.parse_args(argv)
    flag = lambda name: "--" + name.replace("_", "-")  # noqa: E731
    for name in COUNTS:
        if isinstance(getattr(args, name, None), int) and getattr(args, name) < 1:
            parser.error(f"{flag(name)} {getattr(args, name)}: at least 1")
    bounds = {"sparsity": (0.0, 1.0, True, False), "fraction": (0.0, 1.0, False, False),
              "density": (0.0, 1.0, False, True)}
    for name, (low, high, low_in, high_in) in bounds.items():
        value = getattr(args, name, None)
        if isinstance(value, float) and not ((low <= value if low_in else low < value) and
                                             (value <= high if high_in else value < high)):
            interval = f"{'[' if low_in else '('}{low:g}, {high:g}{']' if high_in else ')'}"
            parser.error(f"{flag(name)} {value}: a number in {interval}")
    names = [getattr(args, "model", None)] + str(getattr(args, "models", "") or "").split(",")
    unknown = [n for n in names if n and n not in MODEL_NAMES]
    if unknown:
        parser.error(f"--model(s) {', '.join(unknown)}: unknown; choose from "
                     f"{', '.join(MODEL_NAMES)}")
    if getattr(args, "out", ""):
        try:
            check_out_file(args.out)
        except ValueError as error:
            parser.error(str(error))
    return args


def timed(run_block: Callable[[], object], wait: Callable[[object], None]) -> float:
    """Seconds one block takes, waiting for its last result (JAX dispatch is asynchronous)."""
    began = time.perf_counter()
    wait(run_block())
    return time.perf_counter() - began


def median(values: list[float]) -> float:
    return statistics.median(values)


def malloc_settings(names: str) -> list[str]:
    """The comma-separated --mallocs value as a list, refusing unknown names by name."""
    chosen = [name for name in names.split(",") if name]
    unknown = [name for name in chosen if name not in MALLOC_SETTINGS]
    if unknown or not chosen:
        raise SystemExit(f"--mallocs: {unknown or names!r} not allowed; choose from "
                         f"{', '.join(MALLOC_SETTINGS)}")
    return chosen


def malloc_environment(setting: str) -> dict[str, str]:
    """os.environ for a child process whose malloc runs under `setting` (MALLOC_SETTINGS): its
    malloc tunables replaced by the setting's, and no restart to change them again."""
    tunables = {"tuned": malloc_tuning.tunables(),
                "huge_pages": tuple(t for t in malloc_tuning.tunables()
                                    if t == malloc_tuning.HUGE_PAGES),
                "glibc": ()}[setting]
    kept = ":".join(t for t in os.environ.get("GLIBC_TUNABLES", "").split(":")
                    if t and not t.startswith("glibc.malloc."))
    environ = {key: value for key, value in os.environ.items() if key != "GLIBC_TUNABLES"}
    if kept:
        environ["GLIBC_TUNABLES"] = kept
    if tunables:
        environ = malloc_tuning.with_tunables(environ, tunables)
    return {**environ, malloc_tuning.OPT_OUT: "0"}


def _with_options(report: dict, args: Optional[argparse.Namespace]) -> dict:
    if args is None:
        return report
    return {**report, "options": {k: v for k, v in vars(args).items()
                                  if isinstance(v, (str, int, float, bool, type(None)))}}


def partial_path(out: str) -> str:
    """Where a benchmark keeps what it has measured so far: OUT.partial, beside OUT."""
    return out + ".partial"


def write_partial(report: dict, out: Optional[str],
                  args: Optional[argparse.Namespace] = None) -> None:
    """Write the records measured so far to OUT.partial (atomically, marked "complete": false),
    so that a benchmark killed or failing midway keeps them; OUT itself, a previous run's file,
    stays whole until write_json replaces it. Without `out`, nothing is written (each record
    also goes to stderr as it is measured)."""
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        text = json.dumps({**_with_options(report, args), "complete": False}, indent=2)
        write_atomic(partial_path(out), text + "\n")


def write_json(report: dict, out: Optional[str],
               args: Optional[argparse.Namespace] = None) -> None:
    """Print the report as JSON and, with `out`, write it there too (atomically: a kill leaves
    the previous file whole) and remove the OUT.partial write_partial kept. With `args` the
    report records the command's options, defaults included, so a figure can be traced to the
    settings that measured it."""
    text = json.dumps(_with_options(report, args), indent=2)
    print(text)
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        write_atomic(out, text + "\n")
        Path(partial_path(out)).unlink(missing_ok=True)


def cifar_layer_flops(model_name: str) -> dict[str, int]:
    """Forward multiply-add FLOPs of each kernel of a CIFAR network (32x32x3 images, 10
    classes; lottery_kd.models.flops.layer_flops)."""
    from lottery_kd.models import flops, get_model
    return flops.layer_flops(get_model(model_name, 10, conv_impl="xla", norm_impl="flax"),
                             (32, 32, 3))


# CIFAR-10's channel means and standard deviations on the 0-255 scale
CIFAR_NORMALIZATION = ((125.3, 123.0, 113.9), (63.0, 62.1, 66.7))


def resnet_steps(model_name: str, conv_impl: str, norm_impl: str, sparsity: float, *,
                 normalization: str = "channel", precision: str = "float32",
                 variables: Optional[tuple] = None) -> SimpleNamespace:
    """What the step benchmarks share: the model, its initial params and batch_stats, the SGD
    optimizer, all-true masks, magnitude masks at `sparsity` (all-true at 0), the jitted
    cross-entropy and KD train steps with the recipe's settings, and the two halves of the KD
    step a run with cached teacher logits uses (teacher_forward, kd_logits). `normalization`:
    "channel" (CIFAR-10's channel statistics) or "per_image" (per-image standardisation, the
    renda protocol's). `precision`: train.precision of both steps (float32 or bfloat16; the
    model is built on precision.conv_impl_for(conv_impl, precision), as a study builds it).
    `variables`: (params, batch_stats) to start from instead of initialising (one init compile
    per architecture, whatever the precision)."""
    import jax

    from lottery_kd.sparsity import masks as masks_lib, pruning

    from lottery_kd.training import optim, precision as precision_lib
    from lottery_kd.training.steps import (Distillation, init_variables, make_teacher_forward,
                                           make_train_step)
    from lottery_kd.models import get_model

    model = get_model(model_name, 10, conv_impl=precision_lib.conv_impl_for(conv_impl, precision),
                      norm_impl=norm_impl)
    params, batch_stats = variables or init_variables(model, jax.random.key(0), (32, 32, 3))
    optimizer = optim.sgd_direction(0.9, 2e-4)
    dense_masks = masks_lib.create(params)
    normalize = CIFAR_NORMALIZATION if normalization == "channel" else (None, None)
    masks = (pruning.get("magnitude_global")(params, dense_masks, sparsity) if sparsity
             else dense_masks)
    return SimpleNamespace(
        model=model, params=params, batch_stats=batch_stats, optimizer=optimizer,
        dense_masks=dense_masks, masks=masks,
        ce=make_train_step(model, optimizer, None, normalization=normalize, precision=precision),
        kd=make_train_step(model, optimizer, Distillation(5.0, 0.9, "mean"),
                           normalization=normalize, precision=precision),
        kd_logits=make_train_step(model, optimizer, Distillation(5.0, 0.9, "mean"),
                                  normalization=normalize, precision=precision,
                                  teacher_input="logits"),
        teacher_forward=make_teacher_forward(model, normalization=normalize,
                                             precision=precision))
