"""A GPU machine's check of lottery_kd in one command, in under 9 minutes on one H200.

    python -m benchmarks.gpu_check --cifar .gpu_data/cifar10 \
        --out benchmarks/results/gpu_check_h200_DATE.json

Sections (--sections picks; each runs in its own process, see benchmarks.gpu_check_workers):

- tests: the pytest files that exercise the jitted masked train step, KD, bfloat16, masks and
  pruning (GPU_TESTS; not the CPU-kernel files), not `slow`: pass/fail counts, failed ids, time.
- train_step: images/s of the library's masked train step (magnitude masks at 80 % sparsity,
  SGD momentum + weight decay, uint8 images normalised inside the step; XLA's convolutions on
  GPU, where model.conv_impl=auto resolves to them) for ResNet-20/56/110 at batch 128 and 1024,
  float32 and bfloat16 (train.precision), compile time apart; rows batch-major, so a short
  budget drops the big batches first (resnet110 at 1024 in float32 is left out by --skip).
- pytorch: the same network (benchmarks.compare_pytorch) in PyTorch eager on the same GPU, where
  torch is installed; bfloat16 under autocast.
- mfu: model FLOP utilisation of every throughput row: dense training FLOPs per image
  (lottery_kd.models.flops) x images/s over the device's dense peak for the dtype
  (benchmarks.mfu: bfloat16 against the bf16 tensor-core peak, float32 against TF32's).
- study: experiments.cifar10_resnet20 shrunk (--study-train-subset images, 2 epochs, one IMP
  level, lt and kd) on the CIFAR-10 files in --cifar, through lottery_kd.study.lottery.run in a
  temporary workdir: test accuracy and seconds of each run. --cifar holds all six official
  files, or only data_batch_1.bin and test_batch.bin (the 10,000 images the study trains on
  and the test set: what fits through the device tool). Without --cifar (or with a folder that
  does not exist) it is skipped, saying so.

Time: --budget seconds for everything (default 520). Each section may run for its share
(DEFAULTS' "caps") plus what the sections before it left unused; a section that overruns is
killed, keeping the rows it finished. Smoke mode (--smoke, and automatic where JAX runs on the
CPU) runs every section tiny: ResNet-20 only, batch 8, two timed steps, three config-only tests,
the study on 64 random 32x32 images in place of CIFAR-10; it checks the plumbing, not speed.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

from benchmarks.gpu_check_workers import SUBSET_FILES, read_jsonl, study_overrides
from benchmarks.mfu import mfu_section

REPO = Path(__file__).resolve().parents[1]
SECTIONS = ("tests", "train_step", "pytorch", "study")  # run in this order; mfu is derived
MODELS = ("resnet20", "resnet32", "resnet44", "resnet56", "resnet110")  # basic-block ResNets
PRECISIONS = ("float32", "bfloat16")
CIFAR10_FILES = tuple(f"data_batch_{i}.bin" for i in range(1, 6)) + ("test_batch.bin",)
GPU_TESTS = ("tests/test_train_step.py tests/test_precision.py tests/test_losses_optim.py "
             "tests/test_masks.py tests/test_pruning_methods.py tests/test_pruning_contract.py "
             "tests/test_structure.py")
SMOKE_TESTS = 'tests/test_precision.py -k "auto_conv_is_xla or refuses_the_float32_only"'
# setup.cfg's addopts without pytest-xdist's two workers: on a GPU every worker process would
# claim most of the device's memory, and the GPU image need not have xdist installed
ONE_PROCESS = ["-o", 'addopts=-ra --strict-markers -m "not slow"', "-p", "no:xdist"]
# Per-mode defaults of the options left unset; "caps": each section's share of --budget, seconds.
DEFAULTS = {
    "gpu": {"models": "resnet20,resnet56,resnet110", "batches": "128,1024",
            "precisions": "float32,bfloat16", "skip": "resnet110:1024:float32", "warmup": 5,
            "steps": 20, "blocks": 4, "budget": 520.0, "tests": GPU_TESTS,
            "study_train_subset": 10000,
            "caps": {"tests": 205, "train_step": 165, "pytorch": 40, "study": 100}},
    "smoke": {"models": "resnet20", "batches": "8", "precisions": "float32,bfloat16", "skip": "",
              "warmup": 1, "steps": 2, "blocks": 1, "budget": 900.0, "tests": SMOKE_TESTS,
              "study_train_subset": 0,
              "caps": {"tests": 120, "train_step": 300, "pytorch": 120, "study": 360}}}

CHILD_ENV = dict(os.environ)  # the children's environment: without the parent's own settings


def _csv(text: str) -> list[str]:
    """The non-empty items of a comma-separated option."""
    return [part.strip() for part in text.split(",") if part.strip()]


def cifar_files(cifar: str) -> Optional[str]:
    """'full' where `cifar` holds every CIFAR-10 binary file, 'subset' where it holds only
    data_batch_1.bin and test_batch.bin (what fits the device tool), None otherwise."""
    present = {name for name in CIFAR10_FILES if os.path.isfile(os.path.join(cifar, name))}
    return ("full" if present == set(CIFAR10_FILES) else
            "subset" if present >= set(SUBSET_FILES) else None)


def _check_cifar(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """--cifar: a missing folder is allowed (the study is skipped); a file, or a folder without
    the CIFAR-10 binary files, is refused by name."""
    cifar = args.cifar
    if not cifar or not os.path.exists(cifar):
        return
    if not os.path.isdir(cifar):
        parser.error(f"--cifar {cifar!r} is a file, not a folder: give the folder holding the "
                     "CIFAR-10 binary files (data_batch_1.bin ... test_batch.bin)")
    found = cifar_files(cifar)
    if found is None:
        parser.error(f"--cifar {cifar!r} lacks the CIFAR-10 binary files: it needs "
                     f"{', '.join(CIFAR10_FILES)}, or at least data_batch_1.bin and "
                     "test_batch.bin")
    if found == "subset" and (args.study_train_subset or 0) > 10000:
        parser.error(f"--study-train-subset {args.study_train_subset}: --cifar {cifar!r} holds "
                     "data_batch_1.bin alone, 10000 training images")


def _check_values(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Refuse bad option values by name, before any JAX work (exit 2, no traceback)."""
    for name, allowed in (("sections", SECTIONS + ("mfu",)), ("models", MODELS),
                          ("precisions", PRECISIONS)):
        value = getattr(args, name)
        if value is not None:
            bad = [v for v in _csv(value) if v not in allowed]
            if bad or not _csv(value):
                parser.error(f"--{name}: {', '.join(bad) or repr(value)} not allowed; choose "
                             f"from {', '.join(allowed)}")
    if args.batches is not None and not all(b.isdigit() and int(b) > 0
                                            for b in _csv(args.batches) or ["x"]):
        parser.error(f"--batches {args.batches!r}: comma-separated positive integers")
    for entry in _csv(args.skip or ""):
        parts = entry.split(":")
        if len(parts) != 3 or parts[0] not in MODELS or not parts[1].isdigit() \
                or parts[2] not in PRECISIONS:
            parser.error(f"--skip {entry!r}: MODEL:BATCH:PRECISION, e.g. resnet110:1024:float32")
    for name, least in (("warmup", 0), ("steps", 1), ("blocks", 1), ("budget", 1)):
        value = getattr(args, name)
        if value is not None and value < least:
            parser.error(f"--{name} {value}: at least {least}")
    _check_cifar(parser, args)
    if args.out:  # before the timed run, not when its results are written
        from lottery_kd.runtime.out_paths import check_out_file, check_out_folder
        try:  # a folder gets gpu_check_<device>_<date>.json (out_path), as gpu_check.sh gives
            (check_out_folder if os.path.isdir(args.out) else check_out_file)(args.out)
        except ValueError as error:
            parser.error(str(error))


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    """The command line, every value checked (parser.error: one line, exit 2)."""
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.gpu_check", description=__doc__.split("\n")[0],
        epilog="Options left unset take the GPU defaults, or the smoke ones in smoke mode.")
    add = parser.add_argument
    add("--out", default="", help="write the JSON report here too; an existing folder: to "
        "gpu_check_<device>_<date>.json in it")
    add("--cifar", default=None, help="folder with the CIFAR-10 binary files, for the study")
    add("--sections", default=None, help=f"comma-separated, from {', '.join(SECTIONS)}")
    add("--smoke", action="store_true", help="every section tiny (automatic on CPU)")
    add("--models", default=None, help="comma-separated CIFAR ResNets (resnet20,resnet56,...)")
    add("--batches", default=None, help="comma-separated batch sizes")
    add("--precisions", default=None, help="comma-separated train.precision values")
    add("--skip", default=None, help="comma-separated MODEL:BATCH:PRECISION rows to leave out")
    add("--warmup", type=int, default=None, help="untimed steps before timing")
    add("--steps", type=int, default=None, help="timed steps per row (median over blocks)")
    add("--blocks", type=int, default=None, help="timed blocks the steps are split into")
    add("--budget", type=float, default=None, help="seconds for the whole check")
    add("--tests", default=None, help="pytest arguments of the tests section ('' skips it)")
    add("--study-train-subset", type=int, default=None, help="data.train_subset of the study")
    add("--study-precision", default="float32", choices=PRECISIONS)
    add("--conv-impl", default="auto", choices=("auto", "xla", "native"),
        help="model.conv_impl of the JAX train steps (auto: XLA's convolutions on GPU)")
    add("--norm-impl", default="fused", choices=("fused", "flax"))
    args = parser.parse_args(argv)
    _check_values(parser, args)
    return args


def resolve(args: argparse.Namespace, smoke: bool) -> dict:
    """The settings of this run: each option given, else the mode's default."""
    defaults = DEFAULTS["smoke" if smoke else "gpu"]
    plan = {key: getattr(args, key) if getattr(args, key, None) is not None else default
            for key, default in defaults.items()}
    plan["sections"] = [s for s in SECTIONS if s in _csv(args.sections or ",".join(SECTIONS))]
    skip = set(_csv(plan["skip"]))
    plan["rows"] = [(model, int(batch), precision)
                    for batch in _csv(plan["batches"]) for model in _csv(plan["models"])
                    for precision in _csv(plan["precisions"])
                    if f"{model}:{batch}:{precision}" not in skip]
    plan.update(smoke=smoke, cifar=args.cifar, study_precision=args.study_precision,
                conv_impl=args.conv_impl, norm_impl=args.norm_impl)
    return plan


@dataclasses.dataclass
class Finished:
    """How a section's process ended, and everything it printed."""

    status: str  # ok | failed | timeout
    returncode: int
    seconds: float
    output: str


def run_process(command: list[str], timeout: float, env: dict) -> Finished:
    """Run `command` from the repository root, killing its whole process group at `timeout`."""
    with tempfile.TemporaryFile("w+") as log:
        began = time.monotonic()
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env,
                                   cwd=REPO, start_new_session=True)
        try:
            returncode = process.wait(timeout=max(1.0, timeout))
            status = "ok" if returncode == 0 else "failed"
        except subprocess.TimeoutExpired:
            status = "timeout"
        finally:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
            returncode = process.wait()
        seconds = time.monotonic() - began
        log.seek(0)
        return Finished(status, returncode, round(seconds, 2), log.read())


def _outcome(done: Finished, timeout: float) -> dict:
    """A section's status, return code and seconds; the end of its output unless it passed."""
    out = {"status": done.status, "returncode": done.returncode, "seconds": done.seconds,
           "timeout_s": round(timeout, 1)}
    if done.status != "ok":
        out["output_tail"] = done.output[-3000:]
    return out


RESULT_LINE = re.compile(r"^(\S+::.+?) (PASSED|FAILED|ERROR|SKIPPED|XFAIL|XPASS)\b")
# pytest's last line ("3 passed, 1 failed in 12.30s"); the collection line's "9 deselected"
# is not one: a kill before the summary must fall back to the per-test lines
SUMMARY_LINE = re.compile(r"\d+ (passed|failed|errors?|skipped|deselected).* in \d+(\.\d+)?s\b")
KINDS = {"PASSED": "passed", "FAILED": "failed", "ERROR": "errors", "SKIPPED": "skipped"}


def pytest_counts(output: str) -> dict:
    """passed/failed/errors/skipped/deselected from pytest's summary line (from the verbose
    per-test lines where a kill came before it), the failed ids, the slowest tests."""
    lines = output.strip().splitlines()
    summary = next((line for line in reversed(lines) if SUMMARY_LINE.search(line)), "")
    counts = {kind: 0 for kind in ("passed", "failed", "errors", "skipped", "deselected")}
    for number, kind in re.findall(r"(\d+) (passed|failed|errors?|skipped|deselected)", summary):
        counts["errors" if kind.startswith("error") else kind] += int(number)
    results = [match.groups() for match in map(RESULT_LINE.match, lines) if match]
    if not summary:
        for _, kind in results:
            if kind in KINDS:
                counts[KINDS[kind]] += 1
    failures = [line.split(" - ")[0].split(" ", 1)[1] for line in lines
                if line.startswith(("FAILED ", "ERROR "))]
    failures += [name for name, kind in results
                 if kind in ("FAILED", "ERROR") and name not in failures]
    slowest = [" ".join(line.split()) for line in lines
               if re.match(r"^\d+\.\d+s (call|setup|teardown) ", line)]
    return {**counts, "failures": failures, "slowest": slowest,
            "summary": summary.strip("= ") or "(no summary: pytest did not finish)"}


def section_tests(plan: dict, timeout: float) -> dict:
    """The pytest subset in a subprocess: its counts and failed ids (pytest_counts)."""
    if not plan["tests"].strip():
        return {"status": "skipped", "note": "--tests ''"}
    command = [sys.executable, "-m", "pytest", *ONE_PROCESS, "-v", "--durations=5", "-p",
               "no:cacheprovider", *shlex.split(plan["tests"])]
    done = run_process(command, timeout, CHILD_ENV)
    return {**_outcome(done, timeout), "command": shlex.join(["python", *command[1:]]),
            **pytest_counts(done.output)}


def section_rows(name: str, plan: dict, timeout: float, env: dict) -> dict:
    """train_step or pytorch: the planned rows in a worker process (rows kept at a kill)."""
    with tempfile.TemporaryDirectory(prefix="gpu_check_") as folder:
        rows_file = os.path.join(folder, "rows.jsonl")
        spec = {key: plan[key] for key in ("rows", "warmup", "steps", "blocks", "conv_impl",
                                           "norm_impl")}
        spec.update(sparsity=0.8, seconds=max(1.0, timeout - 15))
        done = run_process([sys.executable, "-m", "benchmarks.gpu_check_workers", name,
                            json.dumps(spec), rows_file], timeout, env)
        rows = read_jsonl(rows_file)
    return {**_outcome(done, timeout), "rows": rows}


STUDY_ROW_KEYS = ("level", "variant", "sparsity", "test_accuracy", "epochs", "seconds")


def section_study(plan: dict, timeout: float) -> dict:
    """The shrunk study in a worker process and a temporary workdir; rows from results.jsonl."""
    if not plan["smoke"] and not (plan["cifar"] and os.path.isdir(plan["cifar"])):
        where = f"--cifar {plan['cifar']!r} does not exist" if plan["cifar"] else "no --cifar"
        return {"status": "skipped", "note": f"{where}: the study needs the CIFAR-10 binary "
                                             "files (e.g. copied to .gpu_data/cifar10)"}
    overrides = study_overrides(plan["study_train_subset"], plan["study_precision"],
                                plan["smoke"], plan["cifar"])
    workdir = tempfile.mkdtemp(prefix="gpu_check_study_")
    try:
        study = os.path.join(workdir, "study")
        subset = not plan["smoke"] and cifar_files(plan["cifar"]) == "subset"
        spec = {"overrides": overrides, "synthetic": plan["smoke"], "subset": subset,
                "workdir": study}
        done = run_process([sys.executable, "-m", "benchmarks.gpu_check_workers", "study",
                            json.dumps(spec), os.path.join(workdir, "rows.jsonl")],
                           timeout, CHILD_ENV)
        rows = [{key: row.get(key) for key in STUDY_ROW_KEYS}
                for row in read_jsonl(os.path.join(study, "results.jsonl"))]
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    data = ("64 random 32x32 images in place of CIFAR-10 (smoke mode)" if plan["smoke"] else
            f"CIFAR-10 from {plan['cifar']}" + (": data_batch_1.bin (the first 10,000 training "
                                                "images) and test_batch.bin" if subset else ""))
    return {**_outcome(done, timeout), "data": data, "overrides": overrides, "rows": rows}


def run_sections(plan: dict, started: float) -> dict:
    """Every section in order, each given its cap plus what the earlier ones left unused."""
    deadline = started + plan["budget"]
    results = {name: {"status": "skipped", "note": "not in --sections"} for name in SECTIONS}
    chosen = plan["sections"]
    for index, name in enumerate(chosen):
        reserve = sum(plan["caps"][later] for later in chosen[index + 1:])
        timeout = deadline - time.monotonic() - reserve
        if timeout < 10:
            results[name] = {"status": "skipped", "note": "no time left in --budget"}
        elif name == "tests":
            results[name] = section_tests(plan, timeout)
        elif name == "train_step":
            results[name] = section_rows(name, plan, timeout, CHILD_ENV)
        elif name == "pytorch":
            if importlib.util.find_spec("torch") is None:
                results[name] = {"status": "skipped", "note": "PyTorch is not installed here "
                                 "(pip install torch to compare; never a dependency)"}
            else:  # the FLOP count in the worker runs JAX on the CPU: the GPU stays torch's
                results[name] = section_rows(name, plan, timeout,
                                             {**CHILD_ENV, "JAX_PLATFORMS": "cpu"})
        else:
            results[name] = section_study(plan, timeout)
        print(f"[gpu_check] {name}: {results[name]['status']} "
              f"({results[name].get('seconds', 0)} s)", file=sys.stderr, flush=True)
    return results


def main(argv: Optional[list[str]] = None) -> None:
    """Check the arguments, record the environment, run the sections, write the report."""
    started = time.monotonic()
    args = parse_args(argv)
    # The parent only records the environment: it must not take the GPU's memory from the
    # workers (CHILD_ENV, captured before this, keeps JAX's default preallocation for them).
    os.environ["XLA_PYTHON_CLIENT_PREALLOCATE"] = "false"
    import jax

    from benchmarks.common import environment, write_json
    smoke = args.smoke or jax.default_backend() == "cpu"
    if smoke and not args.smoke:
        print("[gpu_check] JAX runs on the CPU here: smoke mode (every section tiny)",
              file=sys.stderr, flush=True)
    plan = resolve(args, smoke)
    report = {"benchmark": "gpu_check", **environment(), "smoke": smoke,
              "settings": {key: plan[key] for key in plan if key != "rows"},
              "jax_compilation_cache": os.environ.get("JAX_COMPILATION_CACHE_DIR")}
    sections = run_sections(plan, started)
    rows = [row for name in ("train_step", "pytorch") for row in sections[name].get("rows", [])]
    sections["mfu"] = mfu_section(rows, report["device"])
    report["sections"] = sections
    report["total_s"] = round(time.monotonic() - started, 1)
    write_json(report, out_path(args.out, report["device"], report["date"]), args)


def out_path(out: str, device: str, date: str) -> str:
    """--out as given, or in an existing folder gpu_check_<device>_<date>.json (e.g.
    gpu_check_nvidia_h200_2026-12-03.json)."""
    if not out or not os.path.isdir(out):
        return out
    slug = re.sub("[^a-z0-9]+", "_", device.lower()).strip("_")
    return os.path.join(out, f"gpu_check_{slug}_{date}.json")


if __name__ == "__main__":
    from lottery_kd.runtime.malloc_tuning import reexec_with_malloc_tuning
    reexec_with_malloc_tuning()  # as the training entry points run (runtime.malloc_tuning)
    main()
