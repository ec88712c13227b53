"""The measuring half of benchmarks.gpu_check: each section runs here, in its own process.

    python -m benchmarks.gpu_check_workers SECTION SPEC_JSON ROWS_FILE

SECTION is train_step (the library's masked train step, JAX), pytorch (the same network in
PyTorch eager) or study (a shrunk ResNet-20 lottery study). Throughput rows are appended to
ROWS_FILE as JSON lines as soon as each is measured, so a section killed at its time cap keeps
what it finished; the study writes its own results.jsonl in the workdir SPEC names. Each row
stops before starting what would not end by SPEC's `seconds` (the pace of the rows done so far,
scaled by the square root of depth, estimates it: Pace) and records that as a skipped row instead.

A separate process per section: each has the accelerator to itself (JAX preallocates most of a
GPU's memory), and a hung compile is killed without losing the other sections.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable, Optional

def emit(rows_file: str, row: dict) -> None:
    """Append one row to ROWS_FILE and echo it (the parent reads the file, the log the echo)."""
    with open(rows_file, "a") as out:
        out.write(json.dumps(row) + "\n")
    print(json.dumps(row), flush=True)


def flops_per_image(model_name: str) -> float:
    """Dense training FLOPs of one image (3x the forward multiply-adds x 2), as a study counts."""
    from benchmarks.common import cifar_layer_flops
    from lottery_kd.models import flops
    return flops.train_flops(cifar_layer_flops(model_name), {}, steps=1, batch_size=1)["dense"]


def depth(model_name: str) -> int:
    """The depth in a model name (resnet110: 110), 1 where it has none."""
    digits = "".join(c for c in model_name if c.isdigit())
    return int(digits) if digits else 1


class Pace:
    """Whether the next row fits before the deadline: the slowest row so far, scaled by the
    square root of the depth ratio. Compiles dominate a row, and on a GPU they grow far slower
    than depth: XLA autotunes each distinct convolution shape once, and a deeper CIFAR ResNet
    repeats the same few shapes (H200, 2026-12-04: ResNet-56 compiled in 38.6 s against
    ResNet-20's 29.2, 1.3x for 2.8x the depth). Scaling by depth itself skipped every ResNet-56
    and -110 row there that would have fit; a square root still errs on the long side."""

    def __init__(self, seconds: float) -> None:
        self.deadline = time.monotonic() + seconds
        self.per_root_depth = 0.0

    def estimate(self, model_name: str) -> float:
        """Seconds a row of `model_name` is expected to take."""
        return self.per_root_depth * math.sqrt(depth(model_name))

    def fits(self, model_name: str) -> bool:
        """Whether a row of `model_name` should end before the deadline."""
        return time.monotonic() + self.estimate(model_name) < self.deadline

    def record(self, model_name: str, seconds: float) -> None:
        """Take in the seconds a finished row of `model_name` took."""
        self.per_root_depth = max(self.per_root_depth, seconds / math.sqrt(depth(model_name)))


def run_rows(spec: dict, rows_file: str, measure: Callable[[str, int, str], dict],
             framework: str) -> None:
    """measure(model, batch, precision) for each planned row in order, skipping what will not
    fit; every row (measured, failed or skipped) goes to ROWS_FILE."""
    pace = Pace(spec["seconds"])
    flops = {}
    for model_name, batch, precision in spec["rows"]:
        row = {"framework": framework, "model": model_name, "batch": batch,
               "precision": precision}
        if not pace.fits(model_name):
            emit(rows_file, {**row, "skipped": "would not finish within the section's time "
                                               "budget (--budget)"})
            continue
        began = time.monotonic()
        try:
            if model_name not in flops:
                flops[model_name] = flops_per_image(model_name)
            row.update(measure(model_name, batch, precision), flops_per_image=flops[model_name])
        except Exception as error:  # one failing row (e.g. out of memory) must not end the rest
            row["error"] = f"{type(error).__name__}: {str(error)[:500]}"
        row["seconds"] = round(time.monotonic() - began, 2)
        pace.record(model_name, row["seconds"])
        emit(rows_file, row)


def block_seconds(run: Callable[[int], Any], wait: Callable[[Any], Any], spec: dict) -> list:
    """Seconds of each timed block of steps, after one untimed warm-up block."""
    from benchmarks.common import timed
    wait(run(spec["warmup"]))
    per_block = max(1, spec["steps"] // spec["blocks"])
    return [timed(lambda: run(per_block), wait) for _ in range(spec["blocks"])]


def throughput(batch: int, seconds: list, spec: dict) -> dict:
    """images/s and ms per step from the median block."""
    from benchmarks.common import median
    per_block = max(1, spec["steps"] // spec["blocks"])
    step_s = median(seconds) / per_block
    return {"images_per_sec": round(batch / step_s, 1), "step_ms": round(1000 * step_s, 3),
            "timed_steps": per_block * len(seconds), "warmup_steps": spec["warmup"]}


def jax_step(setup: SimpleNamespace, batch: int) -> SimpleNamespace:
    """The cross-entropy train step of `setup` (benchmarks.common.resnet_steps) compiled ahead of
    time (compile_s: trace + lower + XLA compile, no execution) on one synthetic uint8 batch.
    run(steps) trains `steps` steps from a private copy of the setup's state and returns (state,
    metrics); wait is jax.block_until_ready."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from lottery_kd.sparsity import masks as masks_lib
    from lottery_kd.training.steps import TrainState
    s = setup
    rng = np.random.default_rng(0)
    images = jnp.asarray(rng.integers(0, 256, (batch, 32, 32, 3), dtype=np.uint8))
    labels = jnp.asarray(rng.integers(0, 10, batch).astype(np.int32))
    lr = jnp.float32(0.1)
    state = [TrainState(jnp.asarray(0), masks_lib.apply(s.params, s.masks),
                        jax.tree.map(lambda x: jnp.array(x, copy=True), s.batch_stats),
                        s.optimizer.init(s.params))]
    began = time.perf_counter()
    compiled = s.ce.lower(state[0], s.masks, images, labels, lr, {}).compile()
    compile_s = time.perf_counter() - began

    def run(steps: int):
        metrics = None
        for _ in range(steps):  # the step donates its state: keep only the newest
            state[0], metrics = compiled(state[0], s.masks, images, labels, lr, {})
        return state[0], metrics
    return SimpleNamespace(run=run, wait=jax.block_until_ready, compile_s=compile_s)


def jax_measure(spec: dict, setups: dict) -> Callable[[str, int, str], dict]:
    """measure(model, batch, precision) for the library's masked train step (benchmarks.common
    resnet_steps: SGD momentum + weight decay, magnitude masks at spec's sparsity, CIFAR
    normalisation inside the step), compiled ahead of time (jax_step)."""
    import numpy as np

    from benchmarks.common import resnet_steps
    from lottery_kd.kernels.conv3x3 import native_enabled
    from lottery_kd.sparsity import masks as masks_lib
    from lottery_kd.training import precision as precision_lib

    def measure(model_name: str, batch: int, precision: str) -> dict:
        if (model_name, precision) not in setups:  # the same initial weights in each precision
            same = next((s for (m, _), s in setups.items() if m == model_name), None)
            setups[model_name, precision] = resnet_steps(
                model_name, spec["conv_impl"], spec["norm_impl"], spec["sparsity"],
                precision=precision, variables=same and (same.params, same.batch_stats))
        s = setups[model_name, precision]
        step = jax_step(s, batch)
        seconds = block_seconds(step.run, step.wait, spec)
        loss = float(step.run(1)[1]["loss"])
        conv_impl = precision_lib.conv_impl_for(spec["conv_impl"], precision)
        return {**throughput(batch, seconds, spec), "compile_s": round(step.compile_s, 2),
                "conv_impl": "native" if native_enabled(conv_impl) else "xla",
                "norm_impl": spec["norm_impl"], "sparsity": round(masks_lib.sparsity(s.masks), 4),
                "loss": loss, "loss_finite": bool(np.isfinite(loss))}
    return measure


def torch_step(model_name: str, batch: int, precision: str) -> SimpleNamespace:
    """benchmarks.compare_pytorch's network on CUDA when there is one (else the CPU):
    channels_last, SGD momentum 0.9 + weight decay, cross-entropy, cudnn.benchmark on; bfloat16
    under torch.autocast (float32 weights, as train.precision). run(steps) trains `steps` steps
    on one synthetic batch (losses keeps each call's last loss); wait(_) waits for the device."""
    import torch

    from benchmarks.compare_pytorch import torch_resnet
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.backends.cudnn.benchmark = True
    torch.manual_seed(0)
    net = torch_resnet(depth(model_name)).to(device, memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9, weight_decay=2e-4)
    images = torch.randn(batch, 3, 32, 32, device=device).to(memory_format=torch.channels_last)
    labels = torch.randint(0, 10, (batch,), device=device)
    loss_fn = torch.nn.CrossEntropyLoss()
    net.train()
    losses = []

    def run(steps: int):
        for _ in range(steps):
            optimizer.zero_grad(set_to_none=True)
            with torch.autocast(device.type, dtype=torch.bfloat16,
                                enabled=precision == "bfloat16"):
                loss = loss_fn(net(images), labels)
            loss.backward()
            optimizer.step()
        losses.append(loss)

    def wait(_):
        if device.type == "cuda":
            torch.cuda.synchronize()
    return SimpleNamespace(run=run, wait=wait, losses=losses, device=device)


def torch_measure(spec: dict) -> Callable[[str, int, str], dict]:
    """measure(model, batch, precision) for torch_step's PyTorch train step."""
    import torch

    def measure(model_name: str, batch: int, precision: str) -> dict:
        step = torch_step(model_name, batch, precision)
        seconds = block_seconds(step.run, step.wait, spec)
        loss = float(step.losses[-1].detach().float().cpu())
        return {**throughput(batch, seconds, spec), "device": str(step.device),
                "torch": torch.__version__, "cudnn_benchmark": True,
                "cudnn_allow_tf32": bool(torch.backends.cudnn.allow_tf32),
                "matmul_allow_tf32": bool(torch.backends.cuda.matmul.allow_tf32),
                "loss": loss, "loss_finite": math.isfinite(loss)}
    return measure


def fake_cifar(*args: Any, **kwargs: Any) -> tuple:
    """64 random 32x32 training and 32 test images, in place of CIFAR-10 (smoke mode)."""
    import numpy as np
    rng = np.random.default_rng(0)
    return (rng.integers(0, 256, (64, 32, 32, 3), dtype=np.uint8),
            rng.integers(0, 10, 64).astype(np.int32),
            rng.integers(0, 256, (32, 32, 32, 3), dtype=np.uint8),
            rng.integers(0, 10, 32).astype(np.int32))


# The part of CIFAR-10 the study reads when the whole set cannot travel (the device tool carries
# 64 MiB): the first 10,000 training images and the test set, official files unchanged.
SUBSET_FILES = ("data_batch_1.bin", "test_batch.bin")


def subset_reader(directory: str) -> Callable[..., tuple]:
    """A stand-in for lottery_kd.data._read_cifar that reads SUBSET_FILES from `directory`
    (sizes and official SHA-256 checked): 10,000 training and 10,000 test images."""
    def read(*args, **kwargs) -> tuple:
        import numpy as np

        from lottery_kd.data import cifar
        fmt = cifar.get_format("cifar10")
        cifar._check_files(directory, SUBSET_FILES, fmt, verify_checksums=True)
        arrays = []
        for name in SUBSET_FILES:
            images = np.empty((fmt.records[name], 32, 32, 3), np.uint8)
            labels = np.empty((fmt.records[name],), np.int32)
            cifar._read_file(Path(directory) / name, fmt, images, labels)
            arrays += [images, labels]
        return tuple(arrays)
    return read


def set_key(config: Any, key: str, value: Any) -> None:
    """config[a][b]... = value for a dotted key such as 'data.train_subset'."""
    *sections, name = key.split(".")
    for section in sections:
        config = config[section]
    config[name] = value


def study_overrides(train_subset: int, precision: str, smoke: bool, cifar: Optional[str]
                    ) -> dict:
    """The config overrides of the shrunk study (experiments.cifar10_resnet20, protocol renda):
    `train_subset` images, 2 epochs, one IMP level, lt and kd, rewinding to epoch 1."""
    overrides = {"data.train_subset": train_subset, "train.epochs": 2, "train.milestones": "1",
                 "prune.levels": 1, "lottery.variants": "lt,kd", "lottery.rewind": "1ep",
                 "train.precision": precision, "log.progress": "lines",
                 "log.tensorboard": False}
    if smoke:  # 64 random training images (fake_cifar), batch 16: 4 steps an epoch
        overrides.update({"data.source": "tfds", "data.dir": "", "train.batch_size": 16,
                          "data.eval_batch_size": 32})
    else:
        overrides.update({"data.source": "local", "data.dir": os.path.abspath(cifar or "")})
    return overrides


def read_jsonl(path: str) -> list[dict]:
    """The rows of a JSON-lines file (none if it is absent; a line torn by a kill skipped)."""
    rows = []
    if os.path.exists(path):
        for line in Path(path).read_text().splitlines():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:  # a line torn by the kill
                continue
    return rows


def run_study(spec: dict) -> None:
    """experiments.cifar10_resnet20's config (protocol renda) with spec's overrides, through
    lottery_kd.study.lottery.run in spec's workdir (results.jsonl there, row by row). With
    spec['synthetic'], random images stand in for CIFAR-10, with spec['subset'] SUBSET_FILES
    (both replace lottery_kd.data._read_cifar, the one function that reads the files)."""
    from experiments import cifar10_resnet20
    from lottery_kd.study import lottery
    from lottery_kd.study.checkpoints import quiet_failed_restores

    config = cifar10_resnet20.get_config()
    for key, value in spec["overrides"].items():
        set_key(config, key, value)
    import lottery_kd.data as data_module
    if spec["synthetic"]:
        data_module._read_cifar = fake_cifar
    elif spec["subset"]:
        data_module._read_cifar = subset_reader(spec["overrides"]["data.dir"])
    quiet_failed_restores()
    lottery.run(config, spec["workdir"], log=lambda *parts: print(*parts, flush=True))


def main(argv: Optional[list[str]] = None) -> None:
    """SECTION SPEC_JSON ROWS_FILE (the parent, benchmarks.gpu_check, builds them)."""
    section, spec_text, rows_file = argv if argv is not None else sys.argv[1:]
    spec = json.loads(spec_text)
    Path(rows_file).touch()
    if section == "train_step":
        run_rows(spec, rows_file, jax_measure(spec, {}), "jax")
    elif section == "pytorch":
        run_rows(spec, rows_file, torch_measure(spec), "pytorch")
    elif section == "study":
        run_study(spec)
    else:
        raise SystemExit(f"unknown section {section!r}")


if __name__ == "__main__":
    main()
