"""The sparse kernels' inner loop alone, GFLOP/s on one core: the ceiling of their multiply-adds.

    python -m benchmarks.tile_loop [--reps N] [--out FILE]

Compiles benchmarks/tile_loop.cc (the AVX2 form of kernels/sparse_rows.h's RowTile: a
broadcast weight times 12 unaligned loads of a shifted input, into 12 accumulators) with the
system compiler for this CPU and runs it on L1-resident data with three sets of offsets: the
kernel's own (row pitch 34, column shifts 0-2), all aligned, all misaligned by 3 floats. Against
the dense kernels' rate it says how much faster the sparse loops could get without changing
what they load (one vector per multiply-add).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from benchmarks.common import environment, parse_checked, write_json

SOURCE = Path(__file__).with_name("tile_loop.cc")


def measure(reps: int) -> dict[str, float]:
    """{offsets: GFLOP/s} of one run of the compiled loop."""
    cxx = os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++")
    if cxx is None:
        raise SystemExit("error: no C++ compiler (set $CXX or install g++)")
    with tempfile.TemporaryDirectory() as tmp:
        binary = Path(tmp) / "tile_loop"
        build = subprocess.run([cxx, "-O3", "-march=native", "-mavx2", "-mfma", str(SOURCE),
                                "-o", str(binary)], capture_output=True, text=True)
        if build.returncode != 0:
            raise SystemExit(f"error: compiling {SOURCE.name} failed:\n{build.stderr[-2000:]}")
        run = subprocess.run([str(binary), str(reps)], capture_output=True, text=True)
        if run.returncode != 0:
            raise SystemExit(f"error: {SOURCE.name} computed a wrong sum (exit {run.returncode})")
    return json.loads(run.stdout)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.tile_loop",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--reps", type=int, default=2_000_000, help="tile calls per offset set")
    parser.add_argument("--note", default="", help="recorded as is, e.g. what else ran")
    parser.add_argument("--out", default="")
    args = parse_checked(parser, argv)  # --reps >= 1
    write_json({"benchmark": "tile_loop", "note": args.note, **environment(),
                "gflops_one_core": measure(args.reps)}, args.out, args)


if __name__ == "__main__":
    sys.exit(main())
