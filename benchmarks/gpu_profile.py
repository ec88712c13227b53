"""Where a GPU train step's time goes: the library's JAX step and PyTorch eager, kernel by kernel.

    python -m benchmarks.gpu_profile --model resnet56 --batch 128 --norm-impls fused,flax \
        --torch --out FILE

Why: two gpu_check runs on an H200 (2026-12-04) put ResNet-20 2x ahead of PyTorch eager at batch
128 and ResNet-56 20 % behind. Whether the convolutions, the BatchNorm fusions, the optimizer's
tail or idle gaps between kernels make such a difference is read here, both frameworks side by
side in one run. (There, the GPU's kernels took the same 6.4 ms a ResNet-56 step in both; JAX
stepped in 8.2 ms, PyTorch in 18.6, its GPU idle 65 % of the step: docs/benchmarks.md.)

Each variant (one per --norm-impls value, then PyTorch with --torch) is timed as gpu_check times
a row (median of blocks after a warm-up), then `--profile-steps` more steps run under the
framework's profiler (jax.profiler, torch.profiler) and its device kernels are summed per step:
kernel time, kernel count, the share of the step the GPU was busy, the time by category
(CATEGORIES: convolution, batch norm, layout conversion, ...) and every kernel by name, slowest
first. On a CPU the JAX trace holds no device kernels and the kernel fields stay empty (a smoke
run).
"""

from __future__ import annotations

import argparse
import glob
import importlib.util
import json
import os
import tempfile
from typing import Callable, Iterable, Optional

from benchmarks.common import environment, parse_checked, write_json

# kernel-name fragments (lower case) of each category, the first category that matches wins
CATEGORIES = (("copy", ("memcpy", "memset")),
              ("layout conversion", ("converttensor", "transpose")),
              ("batch norm", ("batchnorm", "batch_norm", "bn_fw", "bn_bw")),
              ("convolution", ("conv", "cudnn", "fprop", "dgrad", "wgrad", "implicit",
                               "winograd")),
              ("matrix product", ("gemm", "cublas", "cutlass", "matmul")),
              ("reduction", ("reduce", "reduction")))
# lines of a device plane that restate the stream's kernels rather than add to them
DERIVED_LINES = ("XLA Modules", "XLA Ops", "Steps", "Framework Ops", "Framework Name Scope",
                 "Source code", "XLA TraceMe")


def category(kernel: str) -> str:
    """The category of a kernel name (CATEGORIES), "other" (elementwise fusions) when none."""
    lowered = kernel.lower()
    return next((name for name, parts in CATEGORIES if any(p in lowered for p in parts)),
                "other")


def summarize(kernels: Iterable[tuple[str, float]], steps: int, step_ms: float) -> dict:
    """Per-step totals of (name, microseconds) kernel records from `steps` profiled steps; every
    kernel name with its time, slowest first (so that categories can be drawn again later)."""
    kernels = list(kernels)
    if not kernels:
        return {"kernels_found": 0}
    by_name: dict[str, list] = {}
    for name, micros in kernels:
        entry = by_name.setdefault(name, [0.0, 0])
        entry[0] += micros
        entry[1] += 1
    total_ms = sum(m for _, m in kernels) / 1000 / steps
    by_category: dict[str, float] = {}
    for name, (micros, _) in by_name.items():
        by_category[category(name)] = by_category.get(category(name), 0.0) + micros
    ranked = sorted(by_name.items(), key=lambda item: -item[1][0])
    return {"kernels_found": len(kernels),
            "kernel_ms_per_step": round(total_ms, 3),
            "kernels_per_step": round(len(kernels) / steps, 1),
            "gpu_busy_share": round(total_ms / step_ms, 3) if step_ms else None,
            "ms_per_step_by_category": {k: round(v / 1000 / steps, 3)
                                        for k, v in sorted(by_category.items())},
            "kernels": [{"name": name[:160], "ms_per_step": round(micros / 1000 / steps, 3),
                             "calls_per_step": round(calls / steps, 2), "category": category(name)}
                            for name, (micros, calls) in ranked]}


def xplane_kernels(trace_dir: str) -> tuple[list[tuple[str, float]], dict]:
    """(name, microseconds) of every event on a GPU plane's stream lines in the jax.profiler
    trace under `trace_dir`, and each device line's event count and milliseconds (to check what
    was counted)."""
    from jax.profiler import ProfileData
    kernels, lines = [], {}
    for path in glob.glob(os.path.join(trace_dir, "**", "*.xplane.pb"), recursive=True):
        for plane in ProfileData.from_file(path).planes:
            if not plane.name.startswith("/device:GPU"):
                continue
            for line in plane.lines:
                events = [(e.name, e.duration_ns / 1000) for e in line.events]
                lines[f"{plane.name} {line.name}"] = {
                    "events": len(events), "ms": round(sum(m for _, m in events) / 1000, 3)}
                if line.name not in DERIVED_LINES:
                    kernels += events
    return kernels, lines


def chrome_trace_kernels(path: str) -> list[tuple[str, float]]:
    """(name, microseconds) of the device events in torch.profiler's chrome trace."""
    with open(path) as trace:
        events = json.load(trace).get("traceEvents", [])
    return [(e["name"], float(e.get("dur", 0))) for e in events
            if e.get("cat") in ("kernel", "gpu_memcpy", "gpu_memset")]


def time_steps(run: Callable, wait: Callable, args: argparse.Namespace) -> float:
    """Milliseconds per step, timed as gpu_check times a row (its block_seconds, throughput)."""
    from benchmarks.gpu_check_workers import block_seconds, throughput
    spec = {"warmup": args.warmup, "steps": args.steps, "blocks": args.blocks}
    return throughput(args.batch, block_seconds(run, wait, spec), spec)["step_ms"]


def profile_jax(args: argparse.Namespace, norm_impl: str) -> dict:
    """The library's masked cross-entropy step (gpu_check's train_step row), timed and traced."""
    import jax

    from benchmarks.common import resnet_steps
    from benchmarks.gpu_check_workers import jax_step
    setup = resnet_steps(args.model, args.conv_impl, norm_impl, args.sparsity,
                         precision=args.precision)
    step = jax_step(setup, args.batch)
    step_ms = time_steps(step.run, step.wait, args)
    with tempfile.TemporaryDirectory() as trace_dir:
        with jax.profiler.trace(trace_dir):
            step.wait(step.run(args.profile_steps))
        kernels, lines = xplane_kernels(trace_dir)
    return {"framework": "jax", "norm_impl": norm_impl, "conv_impl": args.conv_impl,
            "backend": jax.default_backend(), "compile_s": round(step.compile_s, 2),
            "step_ms": round(step_ms, 3), "images_per_sec": round(args.batch / step_ms * 1000, 1),
            **summarize(kernels, args.profile_steps, step_ms), "device_lines": lines}


def profile_torch(args: argparse.Namespace) -> dict:
    """gpu_check's PyTorch eager row, timed and traced."""
    import torch

    from benchmarks.gpu_check_workers import torch_step
    step = torch_step(args.model, args.batch, args.precision)
    step_ms = time_steps(step.run, step.wait, args)
    activities = [torch.profiler.ProfilerActivity.CPU]
    if step.device.type == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    with tempfile.TemporaryDirectory() as trace_dir:
        with torch.profiler.profile(activities=activities) as profiler:
            step.wait(step.run(args.profile_steps))
        path = os.path.join(trace_dir, "trace.json")
        profiler.export_chrome_trace(path)
        kernels = chrome_trace_kernels(path)
    return {"framework": "torch", "torch": torch.__version__, "device": str(step.device),
            "step_ms": round(step_ms, 3), "images_per_sec": round(args.batch / step_ms * 1000, 1),
            **summarize(kernels, args.profile_steps, step_ms)}


def table(variants: list[dict]) -> str:
    """One line per variant: step and kernel milliseconds, busy share, kernels and categories."""
    lines = ["variant         step ms  kernel ms  busy  kernels/step  by category (ms/step)"]
    for v in variants:
        name = v["framework"] + (f" {v['norm_impl']}" if "norm_impl" in v else "")
        categories = ", ".join(f"{k} {ms}" for k, ms in v.get("ms_per_step_by_category",
                                                             {}).items())
        lines.append(f"{name:14s} {v['step_ms']:8.3f} {v.get('kernel_ms_per_step', 0):10.3f} "
                     f"{v.get('gpu_busy_share') or 0:5.2f} {v.get('kernels_per_step', 0):13.1f}"
                     f"  {categories or '(no device kernels)'}")
    return "\n".join(lines)


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.gpu_profile",
                                     description=__doc__.split("\n\n")[0])
    add = parser.add_argument
    add("--model", default="resnet56")
    add("--batch", type=int, default=128)
    add("--precision", default="float32", choices=("float32", "bfloat16"))
    add("--norm-impls", default="fused,flax", help="comma-separated model.norm_impl values")
    add("--conv-impl", default="auto", choices=("auto", "xla", "native"))
    add("--sparsity", type=float, default=0.8, help="of the magnitude masks (gpu_check's)")
    add("--torch", action="store_true", help="profile PyTorch eager too (where installed)")
    add("--warmup", type=int, default=5)
    add("--steps", type=int, default=30)
    add("--blocks", type=int, default=3)
    add("--profile-steps", type=int, default=10)
    add("--out", help="write the JSON report here too")
    args = parse_checked(parser, argv)
    norm_impls = [n for n in args.norm_impls.split(",") if n]
    bad = [n for n in norm_impls if n not in ("fused", "flax")]
    if bad or not norm_impls:
        parser.error(f"--norm-impls: {bad or args.norm_impls!r} not allowed; choose from fused, "
                     "flax")
    for name in ("warmup", "blocks", "profile_steps"):  # --batch, --steps: parse_checked
        if getattr(args, name) < (0 if name == "warmup" else 1):
            parser.error(f"--{name.replace('_', '-')} must be positive")
    if args.torch and importlib.util.find_spec("torch") is None:
        parser.error("--torch: PyTorch is not installed in this Python; leave --torch out")
    args.norm_impls = norm_impls
    return args


def main(argv: Optional[list[str]] = None) -> None:
    args = parse_args(argv)
    variants = [profile_jax(args, norm_impl) for norm_impl in args.norm_impls]
    if args.torch:
        variants.append(profile_torch(args))
    write_json({"benchmark": "gpu_profile", "model": args.model, "batch": args.batch,
                "precision": args.precision, "sparsity": args.sparsity,
                "environment": environment(), "variants": variants}, args.out, args)
    print(table(variants))


if __name__ == "__main__":
    main()
