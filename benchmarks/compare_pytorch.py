"""The same CIFAR ResNet in PyTorch eager (channels_last) and in lottery_kd, alternating.

    python -m benchmarks.compare_pytorch --models resnet20,resnet56 --rounds 3 \
        --out benchmarks/results/compare_pytorch_cpu.json

Only where PyTorch happens to be installed (it is never a dependency). Each measurement runs in
its own process, frameworks alternating (jax, torch, jax, torch, ...) so that both see the same
machine state; medians over rounds. PyTorch: the architecture of lottery_kd.models.cifar_resnet
(basic blocks, option-B shortcuts, BatchNorm), SGD momentum 0.9 + weight decay, cross-entropy,
channels_last, torch.set_num_threads(os.cpu_count()). JAX: the library's masked train step
(masks at 80% sparsity, as a ticket trains), and its eval forward. Same batch size, synthetic
images. Both frameworks run under the same malloc setting (--mallocs; default "tuned", what
lottery_kd's entry points use: PyTorch speeds up under it too), each setting compared on its own.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import subprocess
import sys
import time
from typing import TYPE_CHECKING

from benchmarks.common import (environment, malloc_environment, malloc_settings, median,
                               parse_checked, write_json, write_partial)
from lottery_kd.runtime.malloc_tuning import reexec_with_malloc_tuning

if TYPE_CHECKING:  # torch is imported in the worker only: a JAX-only install runs the rest
    import torch


def torch_resnet(depth: int, num_classes: int = 10) -> "torch.nn.Module":
    """He et al. CIFAR ResNet-depth in PyTorch, as lottery_kd builds it (option-B shortcuts)."""
    import torch.nn as nn

    class Block(nn.Module):
        def __init__(self, cin, cout, stride):
            super().__init__()
            self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(cout)
            self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(cout)
            self.shortcut = (nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                           nn.BatchNorm2d(cout))
                             if stride != 1 or cin != cout else nn.Identity())

        def forward(self, x):
            y = self.bn2(self.conv2(self.bn1(self.conv1(x)).relu()))
            return (y + self.shortcut(x)).relu()

    blocks = (depth - 2) // 6
    layers = [nn.Conv2d(3, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU()]
    cin = 16
    for stage, width in enumerate((16, 32, 64)):
        for block in range(blocks):
            layers.append(Block(cin, width, 2 if stage > 0 and block == 0 else 1))
            cin = width
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, num_classes)]
    return nn.Sequential(*layers)


def measure_torch(model_name: str, batch_size: int, steps: int) -> dict:
    import torch
    torch.set_num_threads(os.cpu_count() or 1)
    depth = int(model_name.replace("resnet", ""))
    model = torch_resnet(depth).to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=2e-4)
    images = torch.randn(batch_size, 3, 32, 32).to(memory_format=torch.channels_last)
    labels = torch.randint(0, 10, (batch_size,))
    loss_fn = torch.nn.CrossEntropyLoss()

    def step():
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn(model(images), labels)
        loss.backward()
        optimizer.step()

    model.train()
    for _ in range(2):
        step()
    began = time.perf_counter()
    for _ in range(steps):
        step()
    train = steps * batch_size / (time.perf_counter() - began)
    model.eval()
    with torch.no_grad():
        model(images)
        began = time.perf_counter()
        for _ in range(steps):
            model(images)
        evaluate = steps * batch_size / (time.perf_counter() - began)
    return {"train_images_per_sec": train, "eval_images_per_sec": evaluate}


def measure_jax(model_name: str, batch_size: int, steps: int, conv_impl: str,
                norm_impl: str) -> dict:
    from benchmarks.train_step import measure
    records = measure(model_name, batch_size, steps, 1, 0.8, "select", conv_impl, norm_impl)
    by_variant = {r["variant"]: r for r in records}
    return {"train_images_per_sec": by_variant["masked"]["images_per_sec"],
            "eval_images_per_sec": by_variant["eval"]["images_per_sec"]}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.compare_pytorch",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--models", default="resnet20,resnet56,resnet110")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--conv-impl", default="auto", help="model.conv_impl for the JAX side")
    parser.add_argument("--norm-impl", default="fused", help="model.norm_impl for the JAX side")
    parser.add_argument("--mallocs", default="tuned",
                        help="comma-separated malloc settings both frameworks run under, each "
                             "compared on its own: tuned (the entry points' default), "
                             "huge_pages, glibc")
    parser.add_argument("--out", default="")
    parser.add_argument("--child", nargs=2, default=None, help=argparse.SUPPRESS)
    args = parse_checked(parser, argv)
    mallocs = malloc_settings(args.mallocs)
    if args.child:
        framework, model = args.child
        if framework == "torch":
            print(json.dumps(measure_torch(model, args.batch_size, args.steps)))
        else:
            print(json.dumps(measure_jax(model, args.batch_size, args.steps, args.conv_impl,
                                         args.norm_impl)))
        return
    try:
        import torch  # noqa: F401
    except ImportError:
        raise SystemExit("PyTorch is not installed here; this comparison needs it "
                         "(pip install torch), the package itself never does") from None
    records, header = [], {"benchmark": "compare_pytorch", **environment()}
    for malloc, model in itertools.product(mallocs, args.models.split(",")):
        environ = malloc_environment(malloc)
        runs = {"jax": [], "torch": []}
        for _ in range(args.rounds):
            for framework in ("jax", "torch"):
                done = subprocess.run(
                    [sys.executable, "-m", "benchmarks.compare_pytorch", "--child", framework,
                     model, "--batch-size", str(args.batch_size), "--steps", str(args.steps),
                     "--conv-impl", args.conv_impl, "--norm-impl", args.norm_impl],
                    capture_output=True, text=True, env=environ)
                if done.returncode != 0:
                    raise SystemExit(f"{framework} {model} failed:\n{done.stderr[-3000:]}")
                runs[framework].append(json.loads(done.stdout.strip().splitlines()[-1]))
        record = {"model": model, "batch": args.batch_size, "conv_impl": args.conv_impl,
                  "norm_impl": args.norm_impl, "malloc": malloc,
                  "malloc_tunables": environ.get("GLIBC_TUNABLES", "")}
        for framework, values in runs.items():
            for key in ("train_images_per_sec", "eval_images_per_sec"):
                record[f"{framework}_{key}"] = round(median([v[key] for v in values]), 1)
        record["train_ratio_jax_over_torch"] = round(
            record["jax_train_images_per_sec"] / record["torch_train_images_per_sec"], 3)
        record["eval_ratio_jax_over_torch"] = round(
            record["jax_eval_images_per_sec"] / record["torch_eval_images_per_sec"], 3)
        print(json.dumps(record), file=sys.stderr, flush=True)
        records.append(record)
        write_partial({**header, "records": records}, args.out, args)
    write_json({**header, "records": records}, args.out, args)


if __name__ == "__main__":
    reexec_with_malloc_tuning()  # as the training entry points run (runtime.malloc_tuning)
    main()
